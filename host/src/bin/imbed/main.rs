//! The `imbed` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imbed::{Config, Env, Error};

use embed::Output;

// Commands over the persistent cache.
mod collection;
// `imbed doctor` and `imbed config check`.
mod doctor;
// `imbed embed` and `imbed embed-text`.
mod embed;
// `imbed models ...`.
mod models;
// `imbed plugins` and `imbed plugins check`.
mod plugins;
// `imbed plugins new`.
mod plugins_new;
// `imbed enqueue`, `imbed worker`, `imbed queue ...`: the work queue.
mod queue;
// `imbed serve`.
mod serve;

/// Exit codes scripts can rely on (documented in the README).
/// How the command line was misused (the library's own misuse is [`imbed::UsageError`]); each
/// ends the command with [`exit::USAGE`].
#[derive(Debug, thiserror::Error)]
enum Usage {
    #[error("`-` (stdin) can be given only once")]
    StdinTwice,
    #[error("give at least one image: a path, a URL, `-` for stdin, or --base64")]
    NoImages,
    #[error("give the folders or files to index (or --upgrade alone to retry every degraded image in the cache)")]
    NothingToIndex,
    #[error("nothing to index: no path could be read")]
    NoReadablePath,
    #[error("this command needs the cache, which the config turns off: set [cache] database")]
    NeedsCache,
    #[error("the config turns the cache off ([cache] database = \"\")")]
    CacheOff,
    #[error(transparent)]
    Template(imbed::template::TemplateError),
}

mod exit {
    pub const OK: u8 = 0;
    /// No step of the chain answered for at least one input.
    pub const EXHAUSTED: u8 = 1;
    /// Bad usage or bad config: nothing was embedded.
    pub const USAGE: u8 = 2;
    /// At least one input could not be read or is not a usable image.
    pub const BAD_INPUT: u8 = 3;
    /// The engine could not start (the async runtime or the WebAssembly engine): nothing was
    /// tried, so this is not "no step answered".
    pub const ENGINE: u8 = 4;
    /// Stopped by Ctrl-C; what finished is kept (`imbed index`).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "imbed",
    version,
    about = "Turn images into embedding vectors through sandboxed WebAssembly plugins"
)]
struct Cli {
    /// Config file (default: $IMBED_CONFIG, ./imbed.toml, ~/.config/imbed/config.toml, else the built-in default).
    #[arg(long, global = true, env = "IMBED_CONFIG")]
    config: Option<PathBuf>,
    /// Log level for messages on stderr (error, warn, info, debug, trace); also $IMBED_LOG.
    #[arg(long, global = true, default_value = "warn", env = "IMBED_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed images: file paths, http(s) URLs, `data:` URIs, or `-` for stdin.
    Embed {
        /// The images.
        inputs: Vec<String>,
        /// An image given as base64 text (raw or `data:` URI); may repeat.
        #[arg(long = "base64", value_name = "BASE64")]
        base64: Vec<String>,
        /// Your own description of the image(s), used by `description` steps.
        #[arg(long)]
        description: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Jsonl)]
        output: Output,
        /// How many images to embed at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Embed texts (search queries) into the same space as the chain's image results.
    EmbedText {
        /// The texts.
        #[arg(required = true)]
        texts: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Jsonl)]
        output: Output,
    },
    /// List the configured plugins: loaded or not, what they export, what they are granted.
    Plugins {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<PluginsAction>,
    },
    /// Troubleshoot: is Ollama reachable and are its models pulled, do plugins load, are model
    /// files present, which chain steps can answer right now.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API (OpenAI- and Ollama-compatible embeddings, native endpoints,
    /// /health, /metrics) until Ctrl-C or SIGTERM; requests in flight are finished first.
    Serve {
        /// Address to listen on (default: [server] listen, else 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Config commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Model files for local plugins (CLIP, MiniLM): pull, list, remove, import.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Embed every image under folders (and files) into the cache, a few at a time, with
    /// progress. Interrupt it any time and run it again: finished images are not redone.
    Index {
        /// Folders and image files.
        paths: Vec<PathBuf>,
        /// Images in flight at once (default: the largest plugin instance count in the config).
        #[arg(long)]
        jobs: Option<usize>,
        /// Re-embed images whose only answers came from a fallback step (all such images in
        /// the cache when no path is given).
        #[arg(long)]
        upgrade: bool,
        /// Record jobs in the work queue instead (PostgreSQL cache): `imbed worker` processes,
        /// on any machines, do them. Same as `imbed enqueue`.
        #[arg(long)]
        queue: bool,
        /// Print one JSON line per file and a summary line.
        #[arg(long)]
        json: bool,
    },
    /// Record one job per image content in the work queue (needs a PostgreSQL cache): folders,
    /// image files (at the same path on every worker: a shared mount) and http(s) URLs.
    /// Enqueueing again changes nothing; images the cache already has are skipped.
    Enqueue {
        /// Folders, image files and URLs.
        inputs: Vec<String>,
        /// Images read at once while hashing them.
        #[arg(long)]
        jobs: Option<usize>,
        /// Also queue (again) images whose only answers came from a fallback step (every such
        /// file the cache knows when no input is given).
        #[arg(long)]
        upgrade: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Do the work queue's jobs (needs a PostgreSQL cache): claim as many as the chain's first
    /// step has free, embed them, write each answer and complete its job together. Run any
    /// number, on any machines. Ctrl-C or SIGTERM: claim nothing more, finish the jobs in hand,
    /// exit (a second time: give them back now).
    Worker {
        #[command(flatten)]
        args: queue::WorkerArgs,
    },
    /// The work queue: status, retrying failed jobs.
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Find indexed images closest to a text, in the space the chain embeds the text into.
    Search {
        /// What to look for.
        query: String,
        #[command(flatten)]
        how: collection::SearchArgs,
    },
    /// Find indexed images closest to an image (a path or URL), in the space the chain embeds it into.
    Similar {
        /// The image.
        image: String,
        #[command(flatten)]
        how: collection::SearchArgs,
    },
    /// The persistent cache: sizes, pruning.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// What the cache holds: images, paths, descriptions, vectors per space, size on disk.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget files that are gone or changed (and content no path refers to), optionally
    /// whole spaces, what one plugin or component wrote, and cached queries, then compact the
    /// file.
    Prune {
        /// Also drop everything stored in this embedding space (may repeat); with --plugin or
        /// --component, only what that writer stored there.
        #[arg(long = "space")]
        spaces: Vec<String>,
        /// Drop only what the plugin with this config key wrote (in the --space given, else in
        /// every space).
        #[arg(long, conflicts_with = "component")]
        plugin: Option<String>,
        /// Drop only what the component whose SHA-256 starts with this wrote (at least 6 hex
        /// digits; `imbed cache stats` lists each space's components).
        #[arg(long)]
        component: Option<String>,
        /// Also drop cached query vectors.
        #[arg(long)]
        queries: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy the configured SQLite cache into a PostgreSQL database (with pgvector): every
    /// description, vector and entry is kept, nothing is recomputed. Then point
    /// `[cache] database` (or IMBED_DATABASE_URL) at it.
    Migrate {
        /// The PostgreSQL database: postgres://user:password@host:5432/database.
        #[arg(long)]
        to: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PluginsAction {
    /// Check a component file against the contract: what it imports and exports, which contract
    /// version it targets, what it may need granted, and whether it loads and answers.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a new plugin crate: builds to a component with `cargo build --release`, with
    /// example logic, native unit tests and a README of the next steps.
    New {
        /// The plugin's name: lowercase letters, digits and dashes (e.g. `my-backend`).
        name: String,
        /// Its roles: embedder, image-embedder, describer, dual-embedder (text and images),
        /// describer-embedder, or backend (all three).
        #[arg(long, default_value = "embedder")]
        kind: String,
        /// The folder to create (default: ./NAME); it must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The guest SDK, plugins/sdk of an imbed checkout (default: the checkout this imbed
        /// was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the config and load every plugin it names.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imbed: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ENGINE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`imbed embed ... | head -1`): what it wanted was written, so
        // this is success, quietly, as ripgrep does.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("imbed: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code for an error that ended a command.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::Config(_)) | Some(Error::Usage(_)) => exit::USAGE,
        Some(Error::Input(_)) => exit::BAD_INPUT,
        Some(Error::Engine(_)) => exit::ENGINE,
        _ if e.downcast_ref::<imbed::ConfigError>().is_some() => exit::USAGE,
        _ if e.downcast_ref::<Usage>().is_some() => exit::USAGE,
        // A prune target that names no writer (or several) is the user's to fix.
        _ if matches!(
            e.downcast_ref::<imbed::store::StoreError>(),
            Some(imbed::store::StoreError::PruneTarget(_))
        ) =>
        {
            exit::USAGE
        }
        _ if matches!(
            e.downcast_ref::<imbed::queue::QueueError>(),
            Some(
                imbed::queue::QueueError::NeedsPostgres { .. } | imbed::queue::QueueError::NoCache
            )
        ) =>
        {
            exit::USAGE
        }
        _ => exit::EXHAUSTED,
    }
}

/// Whether writing to stdout failed because its reader closed the pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause
            .downcast_ref::<std::io::Error>()
            .map(|io| io.kind())
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(|j| j.io_error_kind())
            });
        io == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    // Each command reads the config when it needs one: checking or creating a plugin needs
    // none, and a broken config must not stop a plugin author.
    let env = Env::from_process();
    let config = || Config::discover(cli.config.as_deref(), &env).map_err(Error::from);
    match cli.command {
        Command::Embed {
            inputs,
            base64,
            description,
            output,
            concurrency,
        } => embed::embed(config()?, inputs, base64, description, output, concurrency).await,
        Command::EmbedText { texts, output } => embed::embed_text(config()?, texts, output).await,
        Command::Plugins {
            action: Some(PluginsAction::Check { file, json }),
            ..
        } => plugins::check(&file, json).await,
        Command::Plugins {
            action:
                Some(PluginsAction::New {
                    name,
                    kind,
                    dir,
                    sdk,
                }),
            ..
        } => plugins_new::run(&name, &kind, dir, sdk),
        Command::Plugins { json, action: None } => plugins::list(config()?, json).await,
        Command::Doctor { json } => doctor::doctor(config()?, json).await,
        Command::Serve { listen } => serve::serve(config()?, listen).await,
        Command::Config {
            command: ConfigCommand::Check { json },
        } => doctor::config_check(config()?, json).await,
        Command::Models { command } => models::run(&config()?, command).await,
        Command::Index {
            paths,
            jobs,
            upgrade,
            queue: true,
            json,
        } => {
            let inputs = paths.iter().map(|p| p.display().to_string()).collect();
            queue::enqueue(config()?, inputs, jobs, upgrade, json).await
        }
        Command::Index {
            paths,
            jobs,
            upgrade,
            queue: false,
            json,
        } => collection::index(config()?, paths, jobs, upgrade, json).await,
        Command::Enqueue {
            inputs,
            jobs,
            upgrade,
            json,
        } => queue::enqueue(config()?, inputs, jobs, upgrade, json).await,
        Command::Worker { args } => queue::worker(config()?, args).await,
        Command::Queue { command } => queue::queue(config()?, command).await,
        Command::Search { query, how } => collection::search(config()?, query, how).await,
        Command::Similar { image, how } => collection::similar(config()?, image, how).await,
        Command::Cache {
            command: CacheCommand::Stats { json },
        } => collection::cache_stats(config()?, json).await,
        Command::Cache {
            command:
                CacheCommand::Prune {
                    spaces,
                    plugin,
                    component,
                    queries,
                    json,
                },
        } => {
            let writer = match (plugin, component) {
                (Some(key), _) => Some(imbed::store::WriterFilter::Plugin(key)),
                (None, Some(prefix)) => Some(imbed::store::WriterFilter::Component(prefix)),
                (None, None) => None,
            };
            collection::cache_prune(config()?, spaces, writer, queries, json).await
        }
        Command::Cache {
            command: CacheCommand::Migrate { to, json },
        } => collection::cache_migrate(config()?, to, json).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_documented_exit_code() {
        let code = |e: Error| exit_code(&anyhow::Error::from(e));
        let no_threads = std::io::Error::other("no threads");
        assert_eq!(
            code(imbed::EngineError::EpochThread(no_threads).into()),
            exit::ENGINE
        );
        assert_eq!(code(imbed::UsageError::EmptyText.into()), exit::USAGE);
        assert_eq!(exit_code(&Usage::NoImages.into()), exit::USAGE);
        assert_eq!(code(Error::Exhausted { attempts: vec![] }), exit::EXHAUSTED);
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing a result");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
