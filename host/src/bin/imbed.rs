//! The `imbed` command line: a thin layer over the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use imbed::{Config, Embedding, Env, Error, ImageRequest, ImageSource, Imbed, PluginHealth};
use serde_json::{json, Value};

// Commands over the persistent cache (a folder beside this file, so cargo does not take it
// for another binary).
#[path = "imbed/collection.rs"]
mod collection;
// `imbed models ...` (same arrangement).
#[path = "imbed/models.rs"]
mod models_cmd;
// `imbed plugins new` (same arrangement).
#[path = "imbed/plugins_new.rs"]
mod plugins_new;

/// Exit codes scripts can rely on (documented in the README).
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

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Output {
    /// One JSON object per line.
    Jsonl,
    /// One pretty-printed JSON array.
    Json,
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
        command: models_cmd::ModelsCommand,
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
        /// Print one JSON line per file and a summary line.
        #[arg(long)]
        json: bool,
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
    /// whole spaces and cached queries, then compact the file.
    Prune {
        /// Also drop everything stored in this embedding space (may repeat).
        #[arg(long = "space")]
        spaces: Vec<String>,
        /// Also drop cached query vectors.
        #[arg(long)]
        queries: bool,
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
        } => embed(config()?, inputs, base64, description, output, concurrency).await,
        Command::EmbedText { texts, output } => embed_text(config()?, texts, output).await,
        Command::Plugins {
            action: Some(PluginsAction::Check { file, json }),
            ..
        } => plugins_check(&file, json).await,
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
        Command::Plugins { json, action: None } => plugins(config()?, json).await,
        Command::Doctor { json } => doctor(config()?, json).await,
        Command::Serve { listen } => serve(config()?, listen).await,
        Command::Config {
            command: ConfigCommand::Check { json },
        } => config_check(config()?, json).await,
        Command::Models { command } => models_cmd::run(&config()?, command).await,
        Command::Index {
            paths,
            jobs,
            upgrade,
            json,
        } => collection::index(config()?, paths, jobs, upgrade, json).await,
        Command::Search { query, how } => collection::search(config()?, query, how).await,
        Command::Similar { image, how } => collection::similar(config()?, image, how).await,
        Command::Cache {
            command: CacheCommand::Stats { json },
        } => collection::cache_stats(config()?, json).await,
        Command::Cache {
            command:
                CacheCommand::Prune {
                    spaces,
                    queries,
                    json,
                },
        } => collection::cache_prune(config()?, spaces, queries, json).await,
    }
}

fn parse_input(arg: &str, stdin_used: &mut bool, max_bytes: u64) -> anyhow::Result<ImageSource> {
    if arg == "-" {
        if std::mem::replace(stdin_used, true) {
            return Err(Error::Usage("`-` (stdin) can be given only once".into()).into());
        }
        // Never more than the cap: `imbed embed - < /dev/zero` must end, and quickly.
        let bytes = imbed::input::read_capped(std::io::stdin().lock(), "<stdin>", max_bytes)
            .map_err(Error::from)?;
        return Ok(ImageSource::Bytes(bytes));
    }
    if arg.starts_with("http://") || arg.starts_with("https://") {
        return Ok(ImageSource::Url(arg.to_string()));
    }
    if arg.starts_with("data:") {
        return Ok(ImageSource::Base64(arg.to_string()));
    }
    Ok(ImageSource::Path(PathBuf::from(arg)))
}

struct Printer {
    output: Output,
    items: Vec<Value>,
}

impl Printer {
    fn new(output: Output) -> Self {
        Printer {
            output,
            items: Vec::new(),
        }
    }

    fn emit(&mut self, value: Value) -> anyhow::Result<()> {
        match self.output {
            Output::Jsonl => {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer(&mut out, &value)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
            Output::Json => self.items.push(value),
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.output == Output::Json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &self.items)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// One result line: the embedding, or the error with every attempt.
fn result_json(input: &str, result: &Result<Embedding, Error>) -> (Value, u8) {
    match result {
        Ok(e) => (
            json!({ "input": input, "vector": e.vector, "provenance": e.provenance }),
            exit::OK,
        ),
        Err(err) => {
            let (kind, attempts, code) = match err {
                Error::Exhausted { attempts } => ("exhausted", attempts.clone(), exit::EXHAUSTED),
                Error::Input(_) => ("bad-input", Vec::new(), exit::BAD_INPUT),
                Error::Usage(_) => ("bad-input", Vec::new(), exit::BAD_INPUT),
                _ => ("error", Vec::new(), exit::EXHAUSTED),
            };
            eprintln!("imbed: {input}: {err}");
            (
                json!({ "input": input, "error": { "kind": kind, "message": err.to_string(), "attempts": attempts } }),
                code,
            )
        }
    }
}

/// The worst of several exit codes: bad input beats an exhausted chain beats success.
fn worst(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        exit::BAD_INPUT => 2,
        exit::EXHAUSTED => 1,
        _ => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn warn_degraded(label: &str, e: &Embedding) {
    if e.provenance.degraded {
        let reasons: Vec<String> = e
            .provenance
            .attempts
            .iter()
            .map(|a| format!("  - {a}"))
            .collect();
        eprintln!(
            "imbed: {label}: answered by step {} ({}, space {:?}) after earlier steps failed:\n{}",
            e.provenance.step,
            e.provenance.step_kind,
            e.provenance.space,
            reasons.join("\n")
        );
    }
}

async fn embed(
    config: Config,
    inputs: Vec<String>,
    base64: Vec<String>,
    description: Option<String>,
    output: Output,
    concurrency: usize,
) -> anyhow::Result<u8> {
    if inputs.is_empty() && base64.is_empty() {
        return Err(Error::Usage(
            "give at least one image: a path, a URL, `-` for stdin, or --base64".into(),
        )
        .into());
    }
    let mut stdin_used = false;
    let mut labels = Vec::new();
    let mut requests = Vec::new();
    // A folder stands for every image under it.
    let mut expanded = Vec::new();
    for arg in inputs {
        if std::path::Path::new(&arg).is_dir() {
            let (found, problems) = imbed::index::find_images(&[PathBuf::from(&arg)]);
            for p in problems {
                eprintln!("imbed: skipping {p}");
            }
            if found.is_empty() {
                eprintln!("imbed: {arg}: no images in this folder");
            }
            expanded.extend(found.into_iter().map(|p| p.display().to_string()));
        } else {
            expanded.push(arg);
        }
    }
    let inputs = expanded;
    for arg in &inputs {
        let source = parse_input(arg, &mut stdin_used, config.input.max_bytes)?;
        labels.push(if arg == "-" {
            "<stdin>".to_string()
        } else {
            arg.clone()
        });
        requests.push(source);
    }
    for (i, b) in base64.into_iter().enumerate() {
        labels.push(format!("<base64 #{}>", i + 1));
        requests.push(ImageSource::Base64(b));
    }
    let requests: Vec<ImageRequest> = requests
        .into_iter()
        .map(|s| {
            let r = ImageRequest::new(s);
            match &description {
                Some(d) => r.with_description(d.clone()),
                None => r,
            }
        })
        .collect();

    let imbed = collection::imbed_with_cache(config).await?;
    let mut printer = Printer::new(output);
    let mut code = exit::OK;
    let mut results = imbed.embed_images(requests, concurrency).enumerate();
    while let Some((i, result)) = results.next().await {
        if let Ok(e) = &result {
            warn_degraded(&labels[i], e);
        }
        let (value, c) = result_json(&labels[i], &result);
        code = worst(code, c);
        printer.emit(value)?;
    }
    printer.finish()?;
    Ok(code)
}

async fn embed_text(config: Config, texts: Vec<String>, output: Output) -> anyhow::Result<u8> {
    let imbed = collection::imbed_with_cache(config).await?;
    let mut printer = Printer::new(output);
    let mut code = exit::OK;
    for text in &texts {
        let result = imbed.embed_text(text).await;
        if let Ok(e) = &result {
            warn_degraded(text, e);
        }
        let (value, c) = result_json(text, &result);
        code = worst(code, c);
        printer.emit(value)?;
    }
    printer.finish()?;
    Ok(code)
}

fn roles_text(roles: &imbed::Roles) -> String {
    let mut r = Vec::new();
    if roles.describer {
        r.push("describer");
    }
    if roles.text_embedder {
        r.push("text-embedder");
    }
    if roles.image_embedder {
        r.push("image-embedder");
    }
    r.join(", ")
}

async fn plugins(config: Config, json_out: bool) -> anyhow::Result<u8> {
    let imbed = Imbed::new(config).await?;
    imbed.verify_nn_graphs().await;
    let statuses = imbed.plugins();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(exit::OK);
    }
    for s in &statuses {
        match &s.health {
            PluginHealth::Ready {
                name,
                version,
                roles,
                from_cache,
                load_ms,
            } => println!(
                "{}: ready — {name} {version}, {} ({load_ms:.1} ms{})",
                s.key,
                roles_text(roles),
                if *from_cache {
                    ", compiled copy from cache"
                } else {
                    ", compiled now"
                }
            ),
            PluginHealth::Failed { kind, message } => {
                println!("{}: not available ({kind}) — {message}", s.key)
            }
        }
        println!("    file:    {}", s.path.display());
        let http = if s.http.is_empty() {
            "none".to_string()
        } else {
            s.http.join(", ")
        };
        let env = if s.env.is_empty() {
            "none".to_string()
        } else {
            s.env.join(", ")
        };
        let dir = s
            .model_dir
            .as_ref()
            .map(|d| format!("{} (read-only, at /model)", d.display()));
        println!(
            "    grants:  http {http}; env {env}; files {}",
            dir.unwrap_or_else(|| "none".into())
        );
        match &s.model_name {
            Some(m) if m.from == "manifest" => {
                println!(
                    "    model:   {} (from the folder's imbed-model.json)",
                    m.name
                )
            }
            Some(m) => println!(
                "    model:   {} (named after its folder: it has no imbed-model.json)",
                m.name
            ),
            None => {}
        }
        println!(
            "    limits:  {} MiB memory, {} ms per call, {} instance{}",
            s.memory_mb,
            s.timeout_ms,
            s.instances,
            if s.instances == 1 { "" } else { "s" }
        );
        if let Some(nn) = &s.nn {
            print_nn(nn);
        }
    }
    Ok(exit::OK)
}

/// The wasi-nn lines of `imbed plugins`.
fn print_nn(nn: &imbed::NnStatus) {
    let mib = |b: u64| b.div_ceil(1 << 20);
    let lib = &nn.library;
    let library = match (&lib.path, &lib.version, &lib.problem) {
        (_, _, Some(problem)) => format!("not usable — {problem}"),
        (Some(path), Some(version), None) => format!(
            "ONNX Runtime {version} at {}{}",
            path.display(),
            if lib.loaded { " (loaded)" } else { "" }
        ),
        _ => "unknown".into(),
    };
    println!(
        "    nn:      {} MiB of {} MiB native memory in use, {} thread{} per graph; library: {library}",
        mib(nn.memory_used_bytes),
        mib(nn.memory_budget_bytes),
        nn.threads,
        if nn.threads == 1 { "" } else { "s" }
    );
    for g in &nn.graphs {
        let memory = g
            .memory_bytes
            .map(|b| format!(", {} MiB", mib(b)))
            .unwrap_or_default();
        let problem = g
            .problem
            .as_ref()
            .map(|p| format!(" — {p}"))
            .unwrap_or_default();
        println!(
            "      graph {:?}: {}{memory} ({}){problem}",
            g.name,
            g.state,
            g.file.display()
        );
    }
}

async fn config_check(config: Config, json_out: bool) -> anyhow::Result<u8> {
    let source = config.source.clone();
    let steps: Vec<String> = config
        .chain
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i}: {} ({})", s.kind(), s.plugins().join(" + ")))
        .collect();
    let require_space = config.chain.require_space.clone();
    let imbed = Imbed::new(config).await?;
    let statuses = imbed.plugins();
    let usable = imbed
        .config()
        .chain
        .steps
        .iter()
        .filter(|step| {
            step.plugins().iter().all(|p| {
                statuses
                    .iter()
                    .any(|s| s.key == *p && matches!(s.health, PluginHealth::Ready { .. }))
            })
        })
        .count();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "config": source, "valid": true, "steps": steps, "require_space": require_space,
                "usable_steps": usable, "plugins": statuses,
            }))?
        );
    } else {
        println!("config {source}: valid");
        if let Some(space) = &require_space {
            println!("only answers in space {space:?} are accepted");
        }
        println!("chain:");
        for s in &steps {
            println!("  {s}");
        }
        for s in &statuses {
            match &s.health {
                PluginHealth::Ready { name, version, .. } => {
                    println!("plugin {}: loads ({name} {version})", s.key)
                }
                PluginHealth::Failed { message, .. } => {
                    println!("plugin {}: does not load — {message}", s.key)
                }
            }
        }
        println!("{usable} of {} steps have all their plugins", steps.len());
    }
    // The config is valid even when plugins are missing; those steps are skipped at run time.
    Ok(exit::OK)
}

async fn doctor(config: Config, json_out: bool) -> anyhow::Result<u8> {
    let imbed = Imbed::new(config).await?;
    let report = imbed::doctor::run(&imbed).await;
    let code = if report.can_answer() {
        exit::OK
    } else {
        exit::EXHAUSTED
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    println!("config: {}", report.config);
    for o in &report.ollama {
        match (&o.version, &o.error) {
            (_, Some(e)) => println!(
                "ollama ({}): NOT REACHABLE at {} — {e}",
                o.plugin, o.base_url
            ),
            (v, None) => println!(
                "ollama ({}): reachable at {} (version {})",
                o.plugin,
                o.base_url,
                v.as_deref().unwrap_or("unknown")
            ),
        }
        for m in &o.models {
            match &m.fix {
                None => println!("  {} model {}: present", m.role, m.name),
                Some(fix) => println!("  {} model {}: PROBLEM — {fix}", m.role, m.name),
            }
        }
    }
    for p in &report.plugins {
        match &p.health {
            PluginHealth::Ready { name, version, .. } => {
                println!("plugin {}: loads ({name} {version})", p.key)
            }
            PluginHealth::Failed { message, .. } => {
                println!("plugin {}: DOES NOT LOAD — {message}", p.key)
            }
        }
    }
    for d in &report.model_dirs {
        if let (Some(model), Some(state)) = (&d.model, d.state) {
            use imbed::models::ModelState;
            let what = match state {
                ModelState::Complete => "complete",
                ModelState::Incomplete => "INCOMPLETE",
                ModelState::Corrupt => "CORRUPT",
                _ => "MISSING",
            };
            println!(
                "model files for {}: {model} {what} in {}",
                d.plugin,
                d.dir.display()
            );
            if state == ModelState::Absent {
                println!("  run `imbed models pull {model}`");
            }
            for p in &d.problems {
                println!("  {p}");
            }
        } else if d.exists {
            println!(
                "model files for {}: {} ({})",
                d.plugin,
                d.dir.display(),
                d.files.join(", ")
            );
        } else {
            println!(
                "model files for {}: MISSING — {} does not exist",
                d.plugin,
                d.dir.display()
            );
        }
    }
    println!("chain steps, tried on a test image:");
    for s in &report.steps {
        let what = format!("{} {} ({})", s.step, s.kind, s.plugins.join(" + "));
        match (&s.space, &s.problem) {
            (Some(space), _) => println!("  {what}: can answer, space {space}"),
            (_, problem) => println!(
                "  {what}: cannot answer — {}",
                problem.as_deref().unwrap_or("unknown")
            ),
        }
    }
    if !report.can_answer() {
        println!("no step can answer: fix one of the problems above");
    }
    Ok(code)
}

async fn plugins_check(file: &std::path::Path, json_out: bool) -> anyhow::Result<u8> {
    let (report, health) = match imbed::check_plugin(file).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imbed: {e}");
            return Ok(exit::BAD_INPUT);
        }
    };
    let ok = matches!(health, PluginHealth::Ready { .. });
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "component": report, "health": health }))?
        );
    } else {
        println!("{}:", file.display());
        match &report.contract {
            Some(v) => println!("  contract:     imbed:plugin@{v}"),
            None => println!("  contract:     none (it does not export imbed:plugin/plugin)"),
        }
        match &health {
            PluginHealth::Ready {
                name,
                version,
                roles,
                ..
            } => {
                println!(
                    "  loads:        yes — {name} {version}, {}",
                    roles_text(roles)
                )
            }
            PluginHealth::Failed { message, .. } => println!("  loads:        NO — {message}"),
        }
        println!("  exports:      {}", report.exports.join(", "));
        println!("  imports:      {}", report.imports.join(", "));
        if report.capabilities.is_empty() {
            println!("  capabilities: none");
        } else {
            for c in &report.capabilities {
                println!("  capability:   {c}");
            }
        }
    }
    Ok(if ok { exit::OK } else { exit::BAD_INPUT })
}

async fn serve(config: Config, listen: Option<String>) -> anyhow::Result<u8> {
    let listen = listen.unwrap_or_else(|| config.server.listen.clone());
    let source = config.source.clone();
    let store = match collection::open_store(&config) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("imbed: serving without the cache: {e:#}");
            None
        }
    };
    let state = imbed::server::AppState::build_with_store(config, store).await?;
    // Editing the config or replacing a plugin file takes effect without a restart.
    let config_file = std::path::PathBuf::from(&source);
    let _watcher = config_file.is_file().then(|| {
        state.watch(
            config_file,
            Env::from_process(),
            std::time::Duration::from_secs(1),
        )
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("imbed: serving on http://{}", listener.local_addr()?);
    imbed::server::serve(listener, state, shutdown_signal())
        .await
        .context("the server failed")?;
    eprintln!("imbed: stopped");
    Ok(exit::OK)
}

/// Ctrl-C or SIGTERM: the server stops accepting, finishes what is in flight, then exits.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_documented_exit_code() {
        let code = |e: Error| exit_code(&anyhow::Error::from(e));
        assert_eq!(code(Error::Engine("no threads".into())), exit::ENGINE);
        assert_eq!(code(Error::Usage("x".into())), exit::USAGE);
        assert_eq!(code(Error::Exhausted { attempts: vec![] }), exit::EXHAUSTED);
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing a result");
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
