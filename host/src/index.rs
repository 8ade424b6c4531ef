//! Embedding whole folders into the cache: find the images, skip what is already done, embed
//! the rest a few at a time, and report each file as it finishes.
//!
//! Every finished image is committed on its own (its answer, then its path), so a run that is
//! interrupted at any point — Ctrl-C, `kill -9`, a power cut — loses at most the images that
//! were in flight, and a re-run picks up exactly where it stopped.

use std::path::{Path, PathBuf};

use futures::stream::{self, BoxStream, StreamExt};
use serde::Serialize;

use crate::chain::Imbed;
use crate::input::ImageSource;
use crate::store::{self, Cache, ImageMeta};
use crate::types::SpaceId;

/// File extensions `find_images` picks up (the formats the host decodes).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "webp", "bmp"];

/// How to run an index.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IndexOptions {
    /// Images in flight at once.
    pub jobs: usize,
    /// Re-embed images whose only answers came from fallback steps.
    pub upgrade: bool,
}

impl IndexOptions {
    /// `jobs` images at once, no upgrade.
    pub fn new(jobs: usize) -> Self {
        IndexOptions {
            jobs: jobs.max(1),
            upgrade: false,
        }
    }

    /// Also re-embed degraded answers.
    pub fn upgrade(mut self, upgrade: bool) -> Self {
        self.upgrade = upgrade;
        self
    }
}

/// What happened to one file.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// Embedded now.
    Embedded {
        /// The answer's space.
        space: String,
        /// Whether a fallback step answered.
        degraded: bool,
        /// Whether the cache answered every plugin call (content seen before).
        cached: bool,
    },
    /// Already done: unchanged since it was indexed.
    Unchanged,
    /// Its content was already indexed under another path (or the file changed but not its
    /// content); only the path was recorded.
    KnownContent,
    /// Had only degraded answers; a better step answered now.
    Upgraded {
        /// The new answer's space.
        space: String,
    },
    /// Had only degraded answers and still got one (the better steps are still down).
    StillDegraded {
        /// The answer's space.
        space: String,
    },
    /// Could not be read or embedded; the rest of the run goes on.
    Failed {
        /// Why, and what to do.
        message: String,
    },
}

/// One file's result.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    /// The file.
    pub path: PathBuf,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Files looked at.
    pub total: u64,
    /// Embedded now.
    pub embedded: u64,
    /// Skipped: already done.
    pub unchanged: u64,
    /// Skipped: content already indexed.
    pub known_content: u64,
    /// Upgraded from a degraded answer.
    pub upgraded: u64,
    /// Still degraded after an upgrade attempt.
    pub still_degraded: u64,
    /// Embedded now, but by a fallback step.
    pub degraded: u64,
    /// Failed.
    pub failed: u64,
}

impl Summary {
    /// Count one report.
    pub fn add(&mut self, report: &ItemReport) {
        self.total += 1;
        match &report.outcome {
            Outcome::Embedded { degraded, .. } => {
                self.embedded += 1;
                self.degraded += u64::from(*degraded);
            }
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::KnownContent => self.known_content += 1,
            Outcome::Upgraded { .. } => self.upgraded += 1,
            Outcome::StillDegraded { .. } => self.still_degraded += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }
}

/// Every image file under `roots` (files given directly are taken as they are), absolute and
/// sorted, without duplicates. Unreadable directories are reported, not fatal.
pub fn find_images(roots: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for root in roots {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.clone());
        match std::fs::metadata(&root) {
            Ok(m) if m.is_file() => found.push(root),
            Ok(_) => walk(&root, &mut found, &mut problems),
            Err(e) => problems.push(format!("{}: {e}", root.display())),
        }
    }
    found.sort();
    found.dedup();
    (found, problems)
}

/// Record `roots` (the folders and files given to an index run) in the cache, canonical (links
/// resolved), so that `imbed serve`'s search page serves only files under one of them. Roots
/// that cannot be resolved (gone, unreadable) are skipped: they hold nothing to serve.
pub fn record_roots(store: &Cache, roots: &[PathBuf]) -> Result<Vec<PathBuf>, store::StoreError> {
    let mut recorded = Vec::new();
    for root in roots {
        if let Ok(canonical) = std::fs::canonicalize(root) {
            store.put_root(&canonical)?;
            recorded.push(canonical);
        }
    }
    Ok(recorded)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>, problems: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // file_type() does not follow symlinks: a link loop cannot make the walk endless.
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if !hidden {
                    walk(&path, found, problems);
                }
            }
            Ok(t) if t.is_file() || t.is_symlink() => {
                let is_image = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
                if is_image && path.is_file() {
                    found.push(path);
                }
            }
            _ => {}
        }
    }
}

/// Embed `files` into `imbed`'s cache, `options.jobs` at a time. Reports come as files finish
/// (not in input order); a file that fails does not stop the others. `imbed` must have a
/// store ([`crate::ImbedOptions::store`]).
pub fn index_files(
    imbed: &Imbed,
    files: Vec<PathBuf>,
    options: &IndexOptions,
) -> Result<BoxStream<'static, ItemReport>, crate::Error> {
    let store = imbed
        .store()
        .cloned()
        .ok_or(crate::error::UsageError::IndexWithoutCache)?;
    let (imbed, upgrade, jobs) = (imbed.clone(), options.upgrade, options.jobs.max(1));
    let targets = async move {
        let targets = Targets::of(&imbed).await;
        (imbed, targets)
    };
    Ok(stream::once(targets)
        .flat_map(move |(imbed, targets)| {
            let targets = std::sync::Arc::new(targets);
            let store = store.clone();
            stream::iter(files.clone()).map(move |path| {
                let (imbed, store, targets) = (imbed.clone(), store.clone(), targets.clone());
                async move {
                    let outcome = index_one(&imbed, &store, &path, upgrade, &targets).await;
                    ItemReport { path, outcome }
                }
            })
        })
        .buffer_unordered(jobs)
        .boxed())
}

/// The spaces this chain answers in: its first step's, and every step's it could learn.
pub(crate) struct Targets {
    first: Option<SpaceId>,
    all: Vec<SpaceId>,
}

impl Targets {
    /// What counts as done depends on the chain as configured now: after the embedding model
    /// is swapped, answers in the old space are not answers of this chain.
    pub(crate) async fn of(imbed: &Imbed) -> Targets {
        let spaces = imbed.step_spaces().await;
        for (i, s) in spaces.iter().enumerate() {
            if s.is_none() {
                tracing::info!("chain step {i} cannot tell its embedding space now (its plugin or backend is down); images done in that space are only recognised through the other steps");
            }
        }
        Targets {
            first: spaces.first().cloned().flatten(),
            all: spaces.into_iter().flatten().collect(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    store: &Cache,
    op: impl FnOnce(&Cache) -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, String> {
    store.run(op).await.map_err(|e| e.to_string())
}

/// Whether stored entries make the image done for this chain: an entry in one of its spaces,
/// or with `upgrade`, one in its first step's space.
pub(crate) fn done(entries: &[store::Entry], upgrade: bool, targets: &Targets) -> bool {
    entries.iter().any(|e| {
        if upgrade {
            targets.first.as_deref() == Some(e.space.as_str()) && !e.degraded
        } else {
            targets.all.iter().any(|s| *s == e.space)
        }
    })
}

/// Whether the image has answers of this chain that all came from fallback steps.
fn degraded_only(entries: &[store::Entry], targets: &Targets) -> bool {
    let ours: Vec<_> = entries
        .iter()
        .filter(|e| targets.all.iter().any(|s| *s == e.space))
        .collect();
    !ours.is_empty() && ours.iter().all(|e| e.degraded)
}

async fn index_one(
    imbed: &Imbed,
    store: &Cache,
    path: &Path,
    upgrade: bool,
    targets: &Targets,
) -> Outcome {
    match try_index_one(imbed, store, path, upgrade, targets).await {
        Ok(outcome) => outcome,
        Err(message) => Outcome::Failed { message },
    }
}

async fn try_index_one(
    imbed: &Imbed,
    store: &Cache,
    path: &Path,
    upgrade: bool,
    targets: &Targets,
) -> Result<Outcome, String> {
    let (size, mtime) = store::file_stamp(path)
        .ok_or_else(|| format!("{} is gone or unreadable", path.display()))?;
    let owned = path.to_path_buf();
    let known = blocking(store, move |s| {
        let Some(rec) = s.file(&owned)? else {
            return Ok(None);
        };
        if rec.size != size || rec.mtime_ns != mtime {
            return Ok(None);
        }
        Ok(Some(s.entries_of(&rec.sha256)?))
    })
    .await?;
    if known.as_deref().is_some_and(|e| done(e, upgrade, targets)) {
        return Ok(Outcome::Unchanged);
    }

    let image = imbed
        .load_image(&ImageSource::Path(path.to_path_buf()))
        .await
        .map_err(|e| e.to_string())?;
    let meta = ImageMeta::of(&image);
    let sha = image.sha256.clone();
    let before = blocking(store, move |s| s.entries_of(&sha)).await?;
    let owned = path.to_path_buf();
    let record_path = |meta: ImageMeta| {
        let owned = owned.clone();
        blocking(store, move |s| s.put_file(&owned, &meta, size, mtime))
    };
    if done(&before, upgrade, targets) {
        record_path(meta).await?;
        return Ok(Outcome::KnownContent);
    }
    let was_degraded = degraded_only(&before, targets);
    let embedding = imbed
        .embed_valid_image(&image, None)
        .await
        .map_err(|e| e.to_string())?;
    // The answer is already committed (the chain records it); the path comes second, so a kill
    // in between only means the next run reads the file once to find its content done.
    record_path(meta).await?;
    let p = embedding.provenance;
    Ok(match (was_degraded, p.degraded) {
        (true, false) => Outcome::Upgraded {
            space: p.space.into(),
        },
        (true, true) => Outcome::StillDegraded {
            space: p.space.into(),
        },
        (false, degraded) => Outcome::Embedded {
            space: p.space.into(),
            degraded,
            cached: p.cached,
        },
    })
}
