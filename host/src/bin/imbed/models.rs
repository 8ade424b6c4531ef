//! `imbed models ...`: a thin layer over `imbed::models`. Progress goes to stderr: a bar when
//! stderr is a terminal, one plain line per file otherwise (logs, CI).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use imbed::models::{
    human_size, FileOutcome, Formats, ModelError, ModelState, Models, Progress, ProgressEvent,
};
use imbed::{Config, Env};
use indicatif::{ProgressBar, ProgressStyle};

use super::exit;

#[derive(Subcommand)]
pub(crate) enum ModelsCommand {
    /// Download a known model's files, check their size and SHA-256, and put them where its
    /// plugin's model_dir grant points. An interrupted download resumes where it stopped.
    Pull {
        /// The model (`imbed models list` shows the known ones).
        name: String,
        /// Fetch the files from `<URL>/<file>` instead of the registry's source or a mirror.
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// Which files: `safetensors` (the default: what the plugins run in the sandbox),
        /// `onnx` (the graphs the host runs natively when the plugin is granted `nn`), or `all`.
        #[arg(long, value_enum, default_value = "safetensors")]
        format: FormatArg,
    },
    /// Which known models are present and complete, and their size.
    List {
        /// Hash every file instead of only checking sizes.
        #[arg(long)]
        verify: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a model's files.
    Remove {
        /// The model.
        name: String,
    },
    /// Take a model's files from a folder already on this machine (each checked against the
    /// registry's SHA-256; hard-linked when on the same file system, else copied).
    Import {
        /// The model.
        name: String,
        /// The folder holding its files.
        folder: PathBuf,
    },
}

/// `--format` of `imbed models pull`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum FormatArg {
    Safetensors,
    Onnx,
    All,
}

impl From<FormatArg> for Formats {
    fn from(f: FormatArg) -> Formats {
        match f {
            FormatArg::Safetensors => Formats::default(),
            FormatArg::Onnx => Formats::onnx(),
            FormatArg::All => Formats::all(),
        }
    }
}

pub(crate) async fn run(config: &Config, command: ModelsCommand) -> anyhow::Result<u8> {
    let models = match Models::from_config(config, &Env::from_process()) {
        Ok(m) => m,
        Err(e) => return Ok(fail(&e)),
    };
    let progress = CliProgress::new();
    let result = match command {
        ModelsCommand::Pull { name, from, format } => {
            let r = pull(&models, &name, from.as_deref(), format.into(), &progress).await;
            note_grant(config, &models, &name, &r);
            r
        }
        ModelsCommand::List { verify, json } => list(&models, verify, json, &progress).await,
        ModelsCommand::Remove { name } => remove(&models, &name).await,
        ModelsCommand::Import { name, folder } => {
            let r = import(&models, &name, &folder, &progress).await;
            note_grant(config, &models, &name, &r);
            r
        }
    };
    progress.clear();
    Ok(match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    })
}

/// After a pull or import: the files are only used if some plugin is granted their folder.
/// Moving `[models] dir` does not move the plugins' `model_dir` grants, so say which to change.
fn note_grant(config: &Config, models: &Models, name: &str, result: &Result<u8, ModelError>) {
    if !matches!(result, Ok(0)) {
        return;
    }
    let dir = models.model_dir(name);
    if !config.plugins_granted_model_dir(&dir).is_empty() {
        return;
    }
    let plugin = models
        .registry()
        .get(name)
        .map(|spec| spec.plugin.clone())
        .unwrap_or_else(|_| "<plugin>".into());
    eprintln!(
        "imbed: note: no plugin in {} is granted {}, so nothing will read these files; set \
         `model_dir = \"{}\"` under [plugins.{plugin}.grants]",
        config.source,
        dir.display(),
        dir.display()
    );
}

/// Print the error; scripts tell usage mistakes (2) and bad import folders (3) from failed
/// downloads and file problems (1).
fn fail(e: &ModelError) -> u8 {
    eprintln!("imbed: {e}");
    match e {
        _ if e.is_usage() => exit::USAGE,
        ModelError::ImportRejected { .. } => exit::BAD_INPUT,
        _ => exit::EXHAUSTED,
    }
}

async fn pull(
    models: &Models,
    name: &str,
    from: Option<&str>,
    formats: Formats,
    progress: &CliProgress,
) -> Result<u8, ModelError> {
    let report = models.pull_formats(name, from, formats, progress).await?;
    progress.clear();
    let total = report.downloaded.len() + report.already_present.len();
    if report.downloaded.is_empty() {
        println!(
            "{name}: already complete, {total} files verified in {}",
            report.dir.display()
        );
    } else {
        println!(
            "{name}: {} of {total} files downloaded ({}{}) from {} into {}",
            report.downloaded.len(),
            human_size(report.bytes_downloaded),
            if report.resumed.is_empty() {
                String::new()
            } else {
                format!(", resumed {}", report.resumed.join(", "))
            },
            report.source,
            report.dir.display()
        );
    }
    Ok(exit::OK)
}

async fn list(
    models: &Models,
    verify: bool,
    json: bool,
    progress: &CliProgress,
) -> Result<u8, ModelError> {
    let statuses = models.list(verify, progress).await?;
    progress.clear();
    // Only a verification that finds a damaged model is a failure; absent models are normal.
    let code = if verify && statuses.iter().any(|s| s.state == ModelState::Corrupt) {
        exit::EXHAUSTED
    } else {
        exit::OK
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&statuses).unwrap_or_default()
        );
        return Ok(code);
    }
    println!("models in {}:", models.dir().display());
    let width = statuses.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &statuses {
        let state = match s.state {
            ModelState::Complete if s.verified => "complete, verified",
            ModelState::Complete => "complete",
            ModelState::Incomplete => "INCOMPLETE",
            ModelState::Corrupt => "CORRUPT",
            _ => "absent",
        };
        let size = match s.state {
            ModelState::Complete => human_size(s.size),
            _ => format!("{} of {}", human_size(s.size_on_disk), human_size(s.size)),
        };
        let formats: Vec<&str> = s.formats.iter().map(|f| f.name()).collect();
        let formats = if formats.is_empty() {
            String::new()
        } else {
            format!(" ({})", formats.join(" + "))
        };
        println!(
            "  {:width$}  {state:<18}  {size:<22}  for plugin {}{formats}",
            s.name, s.plugin
        );
        if s.state == ModelState::Absent {
            println!("      run `imbed models pull {}`", s.name);
        }
        for p in &s.problems {
            println!("      {p}");
        }
    }
    Ok(code)
}

async fn remove(models: &Models, name: &str) -> Result<u8, ModelError> {
    let dir = models.model_dir(name);
    if models.remove(name).await? {
        println!("{name}: removed {}", dir.display());
    } else {
        println!("{name}: not present in {}", models.dir().display());
    }
    Ok(exit::OK)
}

async fn import(
    models: &Models,
    name: &str,
    folder: &std::path::Path,
    progress: &CliProgress,
) -> Result<u8, ModelError> {
    let report = models.import(name, folder, progress).await?;
    progress.clear();
    let count = |o: FileOutcome| report.files.iter().filter(|(_, x)| *x == o).count();
    println!(
        "{name}: imported from {} into {} ({} linked, {} copied, {} already there)",
        report.from.display(),
        report.dir.display(),
        count(FileOutcome::Linked),
        count(FileOutcome::Copied),
        count(FileOutcome::AlreadyPresent)
    );
    Ok(exit::OK)
}

/// A byte progress bar on a terminal, plain lines elsewhere.
struct CliProgress {
    bar: Option<ProgressBar>,
}

impl CliProgress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::hidden();
            let style = ProgressStyle::with_template(
                "{msg:32!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        CliProgress { bar }
    }

    fn start(&self, what: String, size: u64, position: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.reset();
                bar.set_length(size);
                bar.set_position(position);
                bar.set_message(what);
            }
            None => eprintln!("imbed: {what}"),
        }
    }

    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for CliProgress {
    fn event(&self, event: ProgressEvent<'_>) {
        match event {
            ProgressEvent::Downloading {
                file,
                url,
                size,
                offset,
            } => {
                let what = if self.bar.is_some() {
                    file.to_string()
                } else if offset > 0 {
                    format!(
                        "resuming {file} at {} of {} from {url}",
                        human_size(offset),
                        human_size(size)
                    )
                } else {
                    format!("downloading {file} ({}) from {url}", human_size(size))
                };
                self.start(what, size, offset);
            }
            ProgressEvent::Checking { file, size } => {
                let what = if self.bar.is_some() {
                    format!("checking {file}")
                } else {
                    format!("checking {file} ({})", human_size(size))
                };
                // Plain lines only for what takes a moment; small files would be noise.
                if self.bar.is_some() || size >= 1 << 20 {
                    self.start(what, size, 0);
                }
            }
            ProgressEvent::Importing { file, size } if self.bar.is_some() || size >= 1 << 20 => {
                self.start(format!("importing {file} ({})", human_size(size)), size, 0);
            }
            ProgressEvent::Advanced { done, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                }
            }
            ProgressEvent::Finished { file, outcome } => {
                let what = match outcome {
                    FileOutcome::Downloaded => "downloaded, SHA-256 verified",
                    FileOutcome::AlreadyPresent => "already present, SHA-256 verified",
                    FileOutcome::Linked => "hard-linked, SHA-256 verified",
                    FileOutcome::Copied => "copied, SHA-256 verified",
                    FileOutcome::Verified => "SHA-256 verified",
                    FileOutcome::Mismatch => "does NOT match the registry",
                    _ => "done",
                };
                let line = format!("imbed: {file}: {what}");
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            _ => {}
        }
    }
}
