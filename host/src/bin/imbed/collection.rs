//! `imbed index`, `search`, `similar` and `cache`: the commands over the persistent cache.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use imbed::config::Database;
use imbed::index::{IndexOptions, Outcome, Summary};
use imbed::search::Method;
use imbed::store::{Cache, Location, PgOptions, PruneOptions, WriterFilter};
use imbed::{Config, ImageSource, Imbed, ImbedOptions};
use serde_json::json;

use super::{exit, Usage};

/// Open the configured cache; `None` when the config turns it off.
pub fn open_store(config: &Config) -> anyhow::Result<Option<Cache>> {
    Ok(match store_location(config) {
        None => None,
        Some(location) => Some(Cache::open_location(&location)?),
    })
}

/// Where the configured cache lives, with the PostgreSQL settings; `None` when it is off.
pub fn store_location(config: &Config) -> Option<Location> {
    let settings = &config.cache;
    Some(match settings.database.as_ref()? {
        Database::Sqlite(path) => Location::Sqlite(path.clone()),
        Database::Postgres(url) => Location::Postgres {
            url: url.clone(),
            options: pg_options(config),
        },
    })
}

/// The `[cache]` settings of a PostgreSQL cache.
fn pg_options(config: &Config) -> PgOptions {
    let settings = &config.cache;
    let mut options = PgOptions::default();
    options.ef_search = settings.ef_search;
    options.halfvec = settings.halfvec;
    options.exact_rerank = settings.exact_rerank;
    options.pool_size = settings.pool_size;
    options.local_dir = settings.local_dir.clone();
    options
}

/// The runtime with the cache when there is one. For commands that only benefit from the
/// cache, a cache that cannot be opened is a warning, not a failure.
pub async fn imbed_with_cache(config: Config) -> anyhow::Result<Imbed> {
    let store = match open_store(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("imbed: going on without the cache: {e:#}");
            None
        }
    };
    let options = match store {
        Some(s) => ImbedOptions::default().store(s),
        None => ImbedOptions::default(),
    };
    Ok(Imbed::with_options(config, options).await?)
}

/// The runtime with the cache, which the command cannot do without.
async fn imbed_needing_cache(config: Config) -> anyhow::Result<(Imbed, Cache)> {
    let store = open_store(&config)?.ok_or(Usage::NeedsCache)?;
    let imbed = Imbed::with_options(config, ImbedOptions::default().store(store.clone())).await?;
    Ok((imbed, store))
}

/// Images in flight at once when `--jobs` is not given: as many as the busiest plugin of the
/// chain runs instances (CPU-bound plugins are already capped at the core count).
fn default_jobs(imbed: &Imbed) -> usize {
    imbed
        .config()
        .plugins
        .values()
        .map(|p| p.pool_size)
        .max()
        .unwrap_or(1)
        .clamp(1, 16)
}

pub async fn index(
    config: Config,
    paths: Vec<PathBuf>,
    jobs: Option<usize>,
    upgrade: bool,
    json_lines: bool,
) -> anyhow::Result<u8> {
    let (imbed, store) = imbed_needing_cache(config).await?;
    let files = if paths.is_empty() {
        if !upgrade {
            return Err(Usage::NothingToIndex.into());
        }
        store.run(|s| s.degraded_files(None)).await?
    } else {
        // The search page of `imbed serve` serves files from under these folders only.
        let (roots, for_roots) = (paths.clone(), store.clone());
        tokio::task::spawn_blocking(move || imbed::index::record_roots(&for_roots, &roots))
            .await
            .context("cache task failed")??;
        let (found, problems) =
            tokio::task::spawn_blocking(move || imbed::index::find_images(&paths))
                .await
                .context("the folder walk failed")?;
        for p in &problems {
            eprintln!("imbed: skipping {p}");
        }
        if found.is_empty() && !problems.is_empty() {
            return Err(Usage::NoReadablePath.into());
        }
        found
    };
    let jobs = jobs.unwrap_or_else(|| default_jobs(&imbed));
    let total = files.len() as u64;
    let mut progress = Progress::new(total);
    let mut summary = Summary::default();
    let mut stream =
        imbed::index::index_files(&imbed, files, &IndexOptions::new(jobs).upgrade(upgrade))?;
    let started = Instant::now();
    let interrupted = loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(report) => {
                    if let Outcome::Failed { message } = &report.outcome {
                        progress.println(&format!("imbed: {}: {message}", report.path.display()));
                    }
                    if json_lines {
                        println!("{}", serde_json::to_string(&report)?);
                    }
                    summary.add(&report);
                    progress.tick(&summary);
                }
                None => break false,
            },
            _ = tokio::signal::ctrl_c() => break true,
        }
    };
    // Dropping the stream abandons the images in flight; everything finished is committed.
    drop(stream);
    progress.finish();
    if !interrupted && summary.embedded + summary.upgraded > 0 {
        // Each space's search index over what is there now, so no search waits for it to be
        // built (PostgreSQL: later rows join it as they are written).
        let prepared = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || imbed::search::prepare(&store)).await
        };
        let failed = match prepared {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            eprintln!(
                "imbed: the search index could not be built now (the first search builds it): {e}"
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let line = format!(
        "{} {} of {total} files in {secs:.1} s: {} embedded ({} by a fallback step), {} unchanged, {} already known by content, {} upgraded, {} still degraded, {} failed",
        if interrupted { "interrupted after" } else { "indexed" },
        summary.total,
        summary.embedded,
        summary.degraded,
        summary.unchanged,
        summary.known_content,
        summary.upgraded,
        summary.still_degraded,
        summary.failed
    );
    if json_lines {
        println!(
            "{}",
            json!({ "summary": summary, "files": total, "seconds": secs, "interrupted": interrupted })
        );
    }
    eprintln!("imbed: {line}");
    if interrupted {
        eprintln!("imbed: run the same command again to continue; finished images are not redone");
        return Ok(exit::INTERRUPTED);
    }
    if summary.degraded + summary.still_degraded > 0 {
        eprintln!(
            "imbed: some images were embedded by a fallback step; `imbed index --upgrade` re-embeds them once the better steps answer again"
        );
    }
    Ok(if summary.failed > 0 {
        exit::EXHAUSTED
    } else {
        exit::OK
    })
}

/// A progress bar on a terminal; on anything else a line every few seconds.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn tick(&mut self, s: &Summary) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(s.total);
                bar.set_message(format!(
                    "{} new, {} skipped, {} failed",
                    s.embedded + s.upgraded,
                    s.unchanged + s.known_content,
                    s.failed
                ));
            }
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                let secs = self.started.elapsed().as_secs_f64();
                let rate = s.total as f64 / secs.max(1e-9);
                let eta = (self.total.saturating_sub(s.total)) as f64 / rate.max(1e-9);
                eprintln!(
                    "imbed: {}/{} images, {rate:.1}/s, ETA {eta:.0} s",
                    s.total, self.total
                );
            }
            None => {}
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// How `search` and `similar` search and print.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// How many results.
    #[arg(short = 'k', long, default_value_t = 10)]
    limit: usize,
    /// Compare with every vector (the default below 50,000 vectors).
    #[arg(long, conflicts_with = "approximate")]
    exact: bool,
    /// Use the approximate index (the default from 50,000 vectors).
    #[arg(long)]
    approximate: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl SearchArgs {
    fn method(&self) -> Method {
        match (self.exact, self.approximate) {
            (true, _) => Method::Exact,
            (_, true) => Method::Approximate,
            _ => Method::Auto,
        }
    }
}

fn print_results(result: &imbed::search::SearchResult, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(result)?);
        return Ok(());
    }
    println!(
        "space {} ({} search over {} images)",
        result.space,
        match result.method {
            Method::Exact => "exact",
            _ => "approximate",
        },
        result.searched
    );
    for hit in &result.hits {
        let place = match hit.paths.first() {
            Some(p) => {
                let more = hit.paths.len() - 1;
                if more > 0 {
                    format!("{} (+{more} more paths)", p.display())
                } else {
                    p.display().to_string()
                }
            }
            None => format!("sha256:{} (no known path)", hit.image),
        };
        println!("{:.4}  {place}", hit.score);
    }
    Ok(())
}

/// Search the cache with `query`, an embedding from the chain, in its own space only;
/// `exclude` leaves out the query image itself.
async fn search_with(
    store: Cache,
    label: &str,
    query: imbed::Embedding,
    exclude: Option<String>,
    how: &SearchArgs,
) -> anyhow::Result<u8> {
    if query.provenance.degraded {
        eprintln!(
            "imbed: the query {label} was embedded by a fallback step (step {}, {}); only images in that space {:?} are searched",
            query.provenance.step, query.provenance.step_kind, query.provenance.space
        );
    }
    let (space, vector, method, k) = (
        query.provenance.space,
        query.vector,
        how.method(),
        how.limit,
    );
    let result = tokio::task::spawn_blocking(move || {
        imbed::search::search(&store, &space, &vector, k, method, exclude.as_deref())
    })
    .await
    .context("the search task failed")??;
    print_results(&result, how.json)?;
    Ok(exit::OK)
}

pub async fn search(config: Config, query: String, how: SearchArgs) -> anyhow::Result<u8> {
    let (imbed, store) = imbed_needing_cache(config).await?;
    let e = imbed.embed_text(&query).await?;
    search_with(store, "text", e, None, &how).await
}

pub async fn similar(config: Config, image: String, how: SearchArgs) -> anyhow::Result<u8> {
    let (imbed, store) = imbed_needing_cache(config).await?;
    let source = if image.starts_with("http://") || image.starts_with("https://") {
        ImageSource::Url(image.clone())
    } else {
        ImageSource::Path(PathBuf::from(&image))
    };
    let valid = imbed.load_image(&source).await?;
    let e = imbed.embed_valid_image(&valid, None).await?;
    search_with(store, "image", e, Some(valid.sha256.clone()), &how).await
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub async fn cache_stats(config: Config, json_out: bool) -> anyhow::Result<u8> {
    let store = open_store(&config)?.ok_or(Usage::CacheOff)?;
    let stats = store.run(|s| s.stats()).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(exit::OK);
    }
    println!(
        "cache {} (schema {}), {} on disk",
        stats.path.display(),
        stats.schema_version,
        mib(stats.bytes_on_disk)
    );
    println!(
        "  {} images, {} file paths, {} descriptions, {} text vectors, {} image vectors",
        stats.images, stats.files, stats.descriptions, stats.text_vectors, stats.image_vectors
    );
    if stats.spaces.is_empty() {
        println!("  no indexed images yet: `imbed index <folder>`");
    }
    for s in &stats.spaces {
        if s.entries > 0 {
            println!(
                "  space {}: {} images, {} dims{}",
                s.space,
                s.entries,
                s.dims,
                if s.degraded > 0 {
                    format!(", {} from a fallback step", s.degraded)
                } else {
                    String::new()
                }
            );
        } else {
            println!("  space {}: no images (query vectors only)", s.space);
        }
        match &s.owner {
            Some(o) => println!("    owner: plugin {:?} ({})", o.key, o.name),
            None => println!("    owner: none yet (the next plugin to write into it owns it)"),
        }
        for w in &s.writers {
            let component = if w.component.is_empty() {
                "unknown component (written before ownership was recorded)".to_string()
            } else {
                format!("component {}", w.component)
            };
            println!("    written by {:?} ({}), {component}", w.key, w.name);
        }
    }
    Ok(exit::OK)
}

pub async fn cache_prune(
    config: Config,
    spaces: Vec<String>,
    writer: Option<WriterFilter>,
    queries: bool,
    json_out: bool,
) -> anyhow::Result<u8> {
    let store = open_store(&config)?.ok_or(Usage::CacheOff)?;
    let mut options = PruneOptions::default().missing_files().vacuum();
    for s in spaces {
        options = options.space(s);
    }
    if let Some(w) = writer {
        options = options.writer(w);
    }
    if queries {
        options = options.text_vectors();
    }
    let report = store.run(move |s| s.prune(&options)).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "pruned: {} vanished file paths, {} images no path refers to, {} entries, {} text vectors, {} image vectors; {} -> {}",
            report.files,
            report.images,
            report.entries,
            report.text_vectors,
            report.image_vectors,
            mib(report.bytes_before),
            mib(report.bytes_after)
        );
        for space in &report.unpinned {
            println!("space {space} has no owner now: the next plugin to write into it owns it");
        }
    }
    Ok(exit::OK)
}

/// `imbed cache migrate --to postgres://…`.
pub async fn cache_migrate(config: Config, to: String, json_out: bool) -> anyhow::Result<u8> {
    let from = open_store(&config)?.ok_or(Usage::NeedsCache)?;
    if !imbed::store::is_postgres_url(&to) {
        return Err(anyhow::anyhow!(
            "--to {to:?} is not a postgres:// URL: write it as postgres://user:password@host:5432/database"
        ));
    }
    let options = pg_options(&config);
    let (started, source) = (Instant::now(), from.location());
    let (report, target) = tokio::task::spawn_blocking(move || {
        let target = Cache::open_postgres(&to, options)?;
        let report = from.copy_to(&target)?;
        Ok::<_, imbed::store::StoreError>((report, target.location()))
    })
    .await
    .context("the copy task failed")??;
    if json_out {
        println!(
            "{}",
            serde_json::to_string(&json!({ "from": source, "to": target, "copied": report }))?
        );
    } else {
        println!(
            "copied {source} into {target} in {:.1} s: {} entries, {} files, {} descriptions, {} cached vectors; \
             now set [cache] database (or IMBED_DATABASE_URL) to it",
            started.elapsed().as_secs_f64(),
            report.entries,
            report.files,
            report.descriptions,
            report.vectors
        );
    }
    Ok(exit::OK)
}
