//! A stand-in for an Ollama server: a real HTTP server on 127.0.0.1 that speaks Ollama's HTTP API
//! (`/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`, `/api/tags`, `/api/show`,
//! `/api/version`, `/`) with the real server's status codes, error texts and streaming, so the
//! backend plugin and the host can be tested where Ollama cannot run.
//!
//! The answers are computed from what was received, so a test can prove its data arrived intact:
//! a description names the decoded image's size, dominant colour and the first 8 hex digits of
//! the SHA-256 of the image bytes, then echoes the prompt's first words; an embedding is a
//! deterministic feature hash of the text's words (texts that share words are closer than
//! unrelated texts), L2-normalised, of the model's dimension.
//!
//! ```no_run
//! use imbed_tests::ollama::{OllamaStandIn, Route};
//!
//! let ollama = OllamaStandIn::start();
//! let base = ollama.base_url(); // http://127.0.0.1:PORT, give it to the plugin
//! ollama.set_latency(std::time::Duration::from_millis(50));
//! // ... run the code under test ...
//! assert_eq!(ollama.hits(Route::Embed), 1);
//! ```
//!
//! Where the knobs act: the latency, hang, failure, queue and cold-start knobs act on the model
//! routes (generate, chat, embed, embeddings) once a request has passed validation, at the point
//! where the real server hands it to its scheduler. So a malformed request is still refused at
//! once, and `/`, `/api/version`, `/api/tags` and `/api/show` keep answering while model requests
//! hang, as a real Ollama does while a model load is stuck.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Cursor;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::request_log::RequestLog;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::serve::ListenerExt;
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch, OnceCell};

/// The version `/api/version` reports unless told otherwise.
pub const DEFAULT_VERSION: &str = "0.33.0";
/// 503: the scheduler's queue is full (two spaces after the full stop, as Ollama sends it).
pub const QUEUE_FULL: &str = "server busy, please try again.  maximum pending requests exceeded";
/// 503 on every route while the stand-in is down ([`OllamaStandIn::set_down`]).
pub const DOWN: &str = "no healthy upstream";
/// 501 on `/api/embed` (500 on `/api/embeddings`) for a model that cannot embed.
pub const NO_EMBEDDINGS: &str =
    "This server does not support embeddings. Start it with `--embeddings`";
/// Contained in the 400 for images sent to a model without the `vision` capability.
pub const MULTIMODAL_UNSUPPORTED: &str =
    "Multimodal data provided, but model does not support multimodal requests.";
/// 500 when an embedding came out with NaN or Inf values.
pub const NAN_ERROR: &str = "embedding contains NaN or Inf values";
/// 400 on `/api/embed` with `"truncate": false` and an input longer than the context.
pub const CONTEXT_EXCEEDED: &str = "the input length exceeds the context length";
/// The error line sent inside a 200 stream when [`OllamaStandIn::set_error_mid_stream`] is on.
pub const MID_STREAM_ERROR: &str =
    "an error was encountered while running the model: unexpected EOF";
/// An embedding input containing this token comes out with a NaN component.
pub const NAN_TOKEN: &str = "__nan__";
/// Tokens a real vision model spends on one image; counted into `prompt_eval_count`.
const IMAGE_TOKENS: usize = 576;
const DEFAULT_HOST: &str = "registry.ollama.ai";
const MODIFIED_AT: &str = "2025-06-01T12:00:00Z";

/// What a model can do, as `/api/tags` and `/api/show` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Text generation: `/api/generate`, `/api/chat`.
    Completion,
    /// Accepts images.
    Vision,
    /// `/api/embed`, `/api/embeddings`.
    Embedding,
    /// Tool calls.
    Tools,
    /// Thinking output.
    Thinking,
    /// Fill-in-the-middle (`suffix`).
    Insert,
}

impl Capability {
    /// The name Ollama uses.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Completion => "completion",
            Capability::Vision => "vision",
            Capability::Embedding => "embedding",
            Capability::Tools => "tools",
            Capability::Thinking => "thinking",
            Capability::Insert => "insert",
        }
    }
}

/// One model the stand-in has "pulled".
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// `name:tag`, e.g. `llava:latest`.
    pub name: String,
    /// What it can do.
    pub capabilities: Vec<Capability>,
    /// Architecture, e.g. `llama`, `nomic-bert`.
    pub family: String,
    /// All architectures, e.g. `["llama", "clip"]`.
    pub families: Vec<String>,
    /// e.g. `7B`.
    pub parameter_size: String,
    /// e.g. `Q4_0`.
    pub quantization_level: String,
    /// Bytes on disk.
    pub size: u64,
    /// Vector length of the embeddings (hidden size for other models).
    pub embedding_length: usize,
    /// Context length in "tokens"; this stand-in counts whitespace-separated words.
    pub context_length: usize,
    /// Whether the legacy `/api/embeddings` route returns unit vectors for this model (BERT
    /// models do; `nomic-embed-text` does not).
    pub legacy_normalised: bool,
    /// Which weights the name stands for: changing it is `ollama pull` fetching new weights
    /// under the same tag (a new digest in `/api/tags`, other vectors). Empty at first.
    pub revision: String,
}

impl ModelSpec {
    fn base(name: &str, capabilities: &[Capability]) -> Self {
        ModelSpec {
            name: with_tag(name),
            capabilities: capabilities.to_vec(),
            family: "llama".into(),
            families: vec!["llama".into()],
            parameter_size: "3.2B".into(),
            quantization_level: "Q4_K_M".into(),
            size: 2_019_393_189,
            embedding_length: 3072,
            context_length: 4096,
            legacy_normalised: true,
            revision: String::new(),
        }
    }

    /// The SHA-256 `/api/tags` and `/api/show` report: of the name and the revision.
    pub fn digest(&self) -> String {
        if self.revision.is_empty() {
            hex(&Sha256::digest(self.name.as_bytes()))
        } else {
            hex(&Sha256::digest(
                format!("{}@{}", self.name, self.revision).as_bytes(),
            ))
        }
    }

    /// Other weights under the same name (see [`ModelSpec::revision`]).
    pub fn with_revision(mut self, revision: &str) -> Self {
        self.revision = revision.into();
        self
    }

    /// A text-only model (capability `completion`).
    pub fn completion(name: &str) -> Self {
        Self::base(name, &[Capability::Completion])
    }

    /// A model that sees images (capabilities `completion`, `vision`).
    pub fn vision(name: &str) -> Self {
        let mut m = Self::base(name, &[Capability::Completion, Capability::Vision]);
        m.families = vec!["llama".into(), "clip".into()];
        m.parameter_size = "7B".into();
        m.quantization_level = "Q4_0".into();
        m.size = 4_733_363_377;
        m.embedding_length = 4096;
        m
    }

    /// An embedding model of `dims` dimensions (capability `embedding`, context 2048).
    pub fn embedding(name: &str, dims: usize) -> Self {
        let mut m = Self::base(name, &[Capability::Embedding]);
        m.family = "bert".into();
        m.families = vec!["bert".into()];
        m.parameter_size = "137M".into();
        m.quantization_level = "F16".into();
        m.size = 274_302_450;
        m.embedding_length = dims;
        m.context_length = 2048;
        m
    }

    /// Set the context length.
    pub fn with_context_length(mut self, tokens: usize) -> Self {
        self.context_length = tokens;
        self
    }

    /// Replace the capabilities.
    pub fn with_capabilities(mut self, caps: &[Capability]) -> Self {
        self.capabilities = caps.to_vec();
        self
    }

    /// Set the architecture names.
    pub fn with_family(mut self, family: &str, families: &[&str]) -> Self {
        self.family = family.into();
        self.families = families.iter().map(|f| f.to_string()).collect();
        self
    }

    /// Set whether the legacy route normalises this model's vectors.
    pub fn with_legacy_normalised(mut self, normalised: bool) -> Self {
        self.legacy_normalised = normalised;
        self
    }

    /// Whether the model has `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }

    fn tweak(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

/// The models a stand-in starts with: three that generate (`llava` and `llama3.2-vision` see
/// images, `llama3.2` is text-only) and three that embed (`nomic-embed-text` 768 dims,
/// `mxbai-embed-large` 1024, `all-minilm` 384), with their real context lengths.
pub fn default_models() -> Vec<ModelSpec> {
    vec![
        ModelSpec::vision("llava:latest"),
        ModelSpec::vision("llama3.2-vision:latest").tweak(|m| {
            m.family = "mllama".into();
            m.families = vec!["mllama".into()];
            m.parameter_size = "10.7B".into();
            m.quantization_level = "Q4_K_M".into();
            m.size = 7_816_589_186;
        }),
        ModelSpec::completion("llama3.2:latest"),
        ModelSpec::embedding("nomic-embed-text:latest", 768).tweak(|m| {
            m.family = "nomic-bert".into();
            m.families = vec!["nomic-bert".into()];
            m.legacy_normalised = false;
        }),
        ModelSpec::embedding("mxbai-embed-large:latest", 1024).tweak(|m| {
            m.parameter_size = "334M".into();
            m.size = 669_615_493;
            m.context_length = 512;
        }),
        ModelSpec::embedding("all-minilm:latest", 384).tweak(|m| {
            m.parameter_size = "23M".into();
            m.size = 45_960_996;
            m.context_length = 256;
        }),
    ]
}

/// What a request made to fail by [`OllamaStandIn::set_failure_rate`] or
/// [`OllamaStandIn::fail_next`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 503 with [`QUEUE_FULL`], as a real server whose queue is full.
    Busy,
    /// Any status with `{"error": error}`.
    Status {
        /// The status code.
        status: u16,
        /// The `error` text.
        error: String,
    },
}

impl Failure {
    fn response(&self) -> Response {
        match self {
            Failure::Busy => error_resp(503, QUEUE_FULL),
            Failure::Status { status, error } => error_resp(*status, error.clone()),
        }
    }
}

/// What happens to an embedding input that contains [`NAN_TOKEN`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NanMode {
    /// What the real server does: 500 with [`NAN_ERROR`].
    #[default]
    Reject,
    /// Misbehave: answer 200 with `null` in place of the NaN, as many JSON encoders write it.
    Null,
    /// Misbehave: answer 200 with a bare `NaN` token (not JSON), as Python's encoder writes it.
    Literal,
}

/// The routes the stand-in serves, for [`OllamaStandIn::hits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /`, `HEAD /`.
    Root,
    /// `GET /api/version`.
    Version,
    /// `GET /api/tags`.
    Tags,
    /// `POST /api/show`.
    Show,
    /// `POST /api/generate`.
    Generate,
    /// `POST /api/chat`.
    Chat,
    /// `POST /api/embed`.
    Embed,
    /// `POST /api/embeddings` (legacy).
    Embeddings,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 8] = [
        Route::Root,
        Route::Version,
        Route::Tags,
        Route::Show,
        Route::Generate,
        Route::Chat,
        Route::Embed,
        Route::Embeddings,
    ];

    /// Short name: `generate`, `chat`, `embed`, `embeddings`, `tags`, `show`, `version`, `root`.
    pub fn name(self) -> &'static str {
        match self {
            Route::Root => "root",
            Route::Version => "version",
            Route::Tags => "tags",
            Route::Show => "show",
            Route::Generate => "generate",
            Route::Chat => "chat",
            Route::Embed => "embed",
            Route::Embeddings => "embeddings",
        }
    }

    /// The URL path.
    pub fn path(self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Version => "/api/version",
            Route::Tags => "/api/tags",
            Route::Show => "/api/show",
            Route::Generate => "/api/generate",
            Route::Chat => "/api/chat",
            Route::Embed => "/api/embed",
            Route::Embeddings => "/api/embeddings",
        }
    }

    fn takes_json(self) -> bool {
        matches!(
            self,
            Route::Show | Route::Generate | Route::Chat | Route::Embed | Route::Embeddings
        )
    }
}

/// One request as the stand-in received it.
pub type Recorded = crate::request_log::Recorded<Route>;

/// Settings fixed at start; everything else is a knob on [`OllamaStandIn`].
#[derive(Clone, Debug)]
pub struct OllamaStandInBuilder {
    version: String,
    models: Vec<ModelSpec>,
    seed: u64,
}

impl Default for OllamaStandInBuilder {
    fn default() -> Self {
        OllamaStandInBuilder {
            version: DEFAULT_VERSION.into(),
            models: default_models(),
            seed: 0x5eed,
        }
    }
}

impl OllamaStandInBuilder {
    /// The version `/api/version` reports.
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Replace the model set (an empty list: nothing pulled).
    pub fn models(mut self, models: Vec<ModelSpec>) -> Self {
        self.models = models;
        self
    }

    /// Add a model (replacing one of the same name).
    pub fn model(mut self, model: ModelSpec) -> Self {
        let key = canonical(&model.name);
        self.models.retain(|m| canonical(&m.name) != key);
        self.models.push(model);
        self
    }

    /// Seed of the generator that decides which requests fail under a failure rate.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Bind 127.0.0.1 on a free port and serve from a thread of its own.
    ///
    /// Panics if the socket or the runtime cannot be made: this is test setup.
    pub fn start(self) -> OllamaStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        // Its own runtime on its own thread, so that it serves the same from a plain #[test], from
        // either flavour of #[tokio::test], and to child processes, whatever the caller blocks on.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ollama-stand-in")
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (hang, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            version: Mutex::new(self.version),
            models: RwLock::new(self.models),
            knobs: Mutex::new(Knobs {
                seed: self.seed,
                rng: self.seed,
                ..Knobs::default()
            }),
            hang,
            log: RequestLog::new(count_images),
            loaded: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let router = app(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ollama-stand-in".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    // Streamed lines are small writes: without NODELAY they can sit in Nagle's
                    // buffer and arrive together, hiding the streaming from the client.
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    let serve = std::future::IntoFuture::into_future(axum::serve(listener, router));
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every task, hung requests included; nothing
                // here runs blocking work for long, so the wait is short.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn the stand-in's thread");
        OllamaStandIn {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A running Ollama stand-in. Dropping it stops the server, hung requests included.
pub struct OllamaStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for OllamaStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OllamaStandIn")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for OllamaStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl OllamaStandIn {
    /// Start with the defaults: [`default_models`], version [`DEFAULT_VERSION`].
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Configure before starting.
    pub fn builder() -> OllamaStandInBuilder {
        OllamaStandInBuilder::default()
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A URL on this server: `url("/api/tags")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Add a model, or replace the one of the same name.
    pub fn add_model(&self, model: ModelSpec) {
        let key = canonical(&model.name);
        let mut models = write(&self.shared.models);
        models.retain(|m| canonical(&m.name) != key);
        models.push(model);
    }

    /// Remove a model (as if never pulled); `llava` names `llava:latest`. Whether it was there.
    pub fn remove_model(&self, name: &str) -> bool {
        let key = canonical(name);
        let mut models = write(&self.shared.models);
        let before = models.len();
        models.retain(|m| canonical(&m.name) != key);
        models.len() != before
    }

    /// The models, in `/api/tags` order.
    pub fn models(&self) -> Vec<ModelSpec> {
        read(&self.shared.models).clone()
    }

    /// Change the version `/api/version` reports.
    pub fn set_version(&self, version: &str) {
        *lock(&self.shared.version) = version.into();
    }

    /// Wait this long before answering each model request (0: none).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.knobs).latency = latency;
    }

    /// Wait this long between streamed lines (0: none).
    pub fn set_token_delay(&self, delay: Duration) {
        lock(&self.shared.knobs).token_delay = delay;
    }

    /// Extra wait on the first request for each model, as a model load; shows in
    /// `load_duration`. Applies again to a model after [`Self::unload_models`] or an unload
    /// request (empty prompt with `keep_alive: 0`).
    pub fn set_cold_start(&self, delay: Duration) {
        lock(&self.shared.knobs).cold_start = delay;
    }

    /// Forget which models are loaded: the next request for each is cold again.
    pub fn unload_models(&self) {
        lock(&self.shared.loaded).clear();
    }

    /// Fail this fraction of model requests (clamped to [0, 1]) with the [`Failure`] set by
    /// [`Self::set_failure`] (default [`Failure::Busy`]). Each call restarts the seeded generator,
    /// so the same sequence of requests fails the same way every run.
    pub fn set_failure_rate(&self, rate: f64) {
        let mut k = lock(&self.shared.knobs);
        k.failure_rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        k.rng = k.seed;
    }

    /// What a failed request answers.
    pub fn set_failure(&self, failure: Failure) {
        lock(&self.shared.knobs).failure = failure;
    }

    /// Fail exactly the next `n` model requests that pass validation.
    pub fn fail_next(&self, n: usize) {
        lock(&self.shared.knobs).fail_next = n;
    }

    /// Hang: model requests are accepted and never answered until this is turned off (they then
    /// go on) or the stand-in is dropped (their connections then close unanswered).
    pub fn set_hang(&self, hang: bool) {
        self.shared.hang.send_replace(hang);
    }

    /// Behave as an old Ollama without `/api/embed`: it answers 404 `404 page not found`.
    pub fn set_legacy(&self, legacy: bool) {
        lock(&self.shared.knobs).legacy = legacy;
    }

    /// Streaming generate and chat send their first line, then `{"error": MID_STREAM_ERROR}`
    /// inside the 200 response; with `"stream": false` they answer 500.
    pub fn set_error_mid_stream(&self, on: bool) {
        lock(&self.shared.knobs).error_mid_stream = on;
    }

    /// What an embedding input containing [`NAN_TOKEN`] gets (default: the real 500).
    pub fn set_nan_mode(&self, mode: NanMode) {
        lock(&self.shared.knobs).nan_mode = mode;
    }

    /// At most this many model requests in flight (answering, hung, waiting out a latency or a
    /// cold start); one more is refused with 503 [`QUEUE_FULL`]. `None`: no limit (default).
    pub fn set_max_queue(&self, max: Option<usize>) {
        lock(&self.shared.knobs).max_queue = max;
    }

    /// Down: every route, `/api/version` included, answers 503 [`DOWN`], as a proxy in front
    /// of a stopped Ollama does; the requests are still recorded.
    pub fn set_down(&self, down: bool) {
        lock(&self.shared.knobs).down = down;
    }

    /// Requests received on a route, errors included.
    pub fn hits(&self, route: Route) -> usize {
        self.shared.log.count(|r| r.route == Some(route))
    }

    /// Every request received, oldest first (404s and 405s included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.all()
    }

    /// The requests received on one route.
    pub fn requests_to(&self, route: Route) -> Vec<Recorded> {
        self.shared.log.to(route)
    }

    /// Generate and chat requests that carried at least one image.
    pub fn vision_calls(&self) -> usize {
        self.shared
            .log
            .count(|r| matches!(r.route, Some(Route::Generate | Route::Chat)) && r.images > 0)
    }

    /// Model requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most model requests that were in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Clear the request log, the counters and the peak.
    pub fn reset_log(&self) {
        self.shared.log.clear();
        self.shared.peak_in_flight.store(
            self.shared.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// The space id imbed's Ollama plugin reports for `model` as pulled now
    /// (`ollama/<name>@<first 12 hex digits of its digest>`, then `+<tag>` for a model the
    /// plugin embeds with task prefixes), or `None` when it is not there.
    pub fn space(&self, model: &str) -> Option<String> {
        let spec = self.shared.model(&canonical(model)?)?;
        let name = spec.name.strip_suffix(":latest").unwrap_or(&spec.name);
        let tag = match name {
            // The tags of the known prefixes (pinned in the plugin SDK's own tests).
            "nomic-embed-text" => "+tp09b78f89",
            "mxbai-embed-large" => "+tpdb383b17",
            _ => "",
        };
        Some(format!("ollama/{name}@{}{tag}", &spec.digest()[..12]))
    }

    /// The space id of `model` as the Ollama plugin reported it before task prefixes (contract
    /// 0.1.0): `ollama/<name>@<digest>`.
    pub fn bare_space(&self, model: &str) -> Option<String> {
        let spec = self.shared.model(&canonical(model)?)?;
        let name = spec.name.strip_suffix(":latest").unwrap_or(&spec.name);
        Some(format!("ollama/{name}@{}", &spec.digest()[..12]))
    }

    /// Every text embedding routes received, exactly as sent, oldest first: the `input` of
    /// `/api/embed` (each item of a list) and the `prompt` of `/api/embeddings`.
    pub fn embedded_texts(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| matches!(r.route, Some(Route::Embed | Route::Embeddings)))
            .filter_map(|r| r.body.as_ref())
            .flat_map(|b| match (b.get("input"), b.get("prompt")) {
                (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => vec![s.clone()],
                (Some(Value::Array(items)), _) => items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// The vector `/api/embed` answers for `text` on `model` (before `dimensions`), or `None`
    /// for a model that is not there or cannot embed.
    pub fn expected_embedding(&self, model: &str, text: &str) -> Option<Vec<f32>> {
        let spec = self.shared.model(&canonical(model)?)?;
        spec.has(Capability::Embedding)
            .then(|| embed_text(&spec, text))
    }
}

/// The sentence the stand-in writes for one image: `A 64x48 image, mostly red, sha256
/// 1a2b3c4d.`; `None` when the bytes are not a decodable image.
pub fn describe_image(bytes: &[u8]) -> Option<String> {
    summarise(bytes).ok().map(|s| s.sentence())
}

/// The first 8 hex digits of the SHA-256 of `bytes`, as descriptions print it.
pub fn short_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// State

#[derive(Debug)]
struct Knobs {
    latency: Duration,
    token_delay: Duration,
    cold_start: Duration,
    failure_rate: f64,
    failure: Failure,
    fail_next: usize,
    seed: u64,
    rng: u64,
    legacy: bool,
    error_mid_stream: bool,
    nan_mode: NanMode,
    max_queue: Option<usize>,
    down: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency: Duration::ZERO,
            token_delay: Duration::ZERO,
            cold_start: Duration::ZERO,
            failure_rate: 0.0,
            failure: Failure::Busy,
            fail_next: 0,
            seed: 0,
            rng: 0,
            legacy: false,
            error_mid_stream: false,
            nan_mode: NanMode::Reject,
            max_queue: None,
            down: false,
        }
    }
}

impl Knobs {
    /// SplitMix64: tiny, seedable, and the same on every platform.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (mix(self.rng) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Shared {
    version: Mutex<String>,
    models: RwLock<Vec<ModelSpec>>,
    knobs: Mutex<Knobs>,
    hang: watch::Sender<bool>,
    log: RequestLog<Route>,
    /// Models that have been "loaded"; the cell is filled once the cold start is over.
    loaded: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

// A panic in one handler must not turn every later request into a panic too.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// A model request admitted past the queue; counts as in flight until dropped.
struct Ticket {
    shared: Arc<Shared>,
    loaded_at: Instant,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn model(&self, canonical_name: &str) -> Option<ModelSpec> {
        read(&self.models)
            .iter()
            .find(|m| canonical(&m.name).as_deref() == Some(canonical_name))
            .cloned()
    }

    fn unload(&self, spec: &ModelSpec) {
        if let Some(key) = canonical(&spec.name) {
            lock(&self.loaded).remove(&key);
        }
    }

    async fn schedule(self: &Arc<Self>, spec: &ModelSpec) -> Result<Ticket, Response> {
        let (cold_start, latency) = {
            let mut k = lock(&self.knobs);
            if let Some(max) = k.max_queue {
                if self.in_flight.load(Ordering::SeqCst) >= max {
                    return Err(error_resp(503, QUEUE_FULL));
                }
            }
            if k.fail_next > 0 {
                k.fail_next -= 1;
                return Err(k.failure.response());
            }
            if k.failure_rate > 0.0 && k.next_unit() < k.failure_rate {
                return Err(k.failure.response());
            }
            // Counted while the knobs are locked, so two requests cannot both take the last
            // place in the queue.
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
            (k.cold_start, k.latency)
        };
        let mut ticket = Ticket {
            shared: self.clone(),
            loaded_at: Instant::now(),
        };
        let mut hang = self.hang.subscribe();
        let _ = hang.wait_for(|h| !*h).await;
        let cell = {
            let key = canonical(&spec.name).unwrap_or_default();
            lock(&self.loaded).entry(key).or_default().clone()
        };
        cell.get_or_init(|| async move {
            if !cold_start.is_zero() {
                tokio::time::sleep(cold_start).await;
            }
        })
        .await;
        ticket.loaded_at = Instant::now();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(ticket)
    }
}

fn count_images(body: &Value) -> usize {
    let images = |v: &Value| {
        field(v, "images")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|i| !i.is_null()).count())
            .unwrap_or(0)
    };
    let in_messages: usize = field(body, "messages")
        .and_then(Value::as_array)
        .map(|ms| ms.iter().map(images).sum())
        .unwrap_or(0);
    images(body) + in_messages
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn app(shared: Arc<Shared>) -> Router {
    fn on(route: Route) -> MethodRouter<Arc<Shared>> {
        let handler = move |State(s): State<Arc<Shared>>,
                            method: Method,
                            uri: Uri,
                            headers: HeaderMap,
                            body: Bytes| async move {
            dispatch(s, Some(route), method, uri, headers, body).await
        };
        match route {
            Route::Root | Route::Version | Route::Tags => get(handler),
            _ => post(handler),
        }
    }
    let mut router = Router::new();
    for route in Route::ALL {
        router = router.route(route.path(), on(route));
    }
    router
        .method_not_allowed_fallback(
            |State(s): State<Arc<Shared>>,
             method: Method,
             uri: Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                let i = s.log.record(None, &method, &uri, &headers, &body, None);
                s.log.set_status(i, StatusCode::METHOD_NOT_ALLOWED);
                text_resp(405, "text/plain", "405 method not allowed")
            },
        )
        .fallback(
            |State(s): State<Arc<Shared>>,
             method: Method,
             uri: Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                let i = s.log.record(None, &method, &uri, &headers, &body, None);
                s.log.set_status(i, StatusCode::NOT_FOUND);
                not_found()
            },
        )
        // Images arrive base64-encoded inside the JSON: bodies of many megabytes are normal.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

async fn dispatch(
    shared: Arc<Shared>,
    route: Option<Route>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let Some(route) = route else {
        return not_found();
    };
    let (legacy, down) = {
        let k = lock(&shared.knobs);
        (k.legacy, k.down)
    };
    if down {
        let i = shared
            .log
            .record(Some(route), &method, &uri, &headers, &body, None);
        shared.log.set_status(i, StatusCode::SERVICE_UNAVAILABLE);
        return error_resp(503, DOWN);
    }
    if route == Route::Embed && legacy {
        let i = shared
            .log
            .record(Some(route), &method, &uri, &headers, &body, None);
        shared.log.set_status(i, StatusCode::NOT_FOUND);
        return not_found();
    }
    let parsed = route.takes_json().then(|| go::bind(&body));
    let logged = parsed.as_ref().and_then(|p| p.as_ref().ok().cloned());
    let index = shared
        .log
        .record(Some(route), &method, &uri, &headers, &body, logged);
    let parsed = parsed.unwrap_or(Ok(Value::Null));
    let response = match route {
        Route::Root => text_resp(200, "text/plain; charset=utf-8", "Ollama is running"),
        Route::Version => json_resp(200, &json!({ "version": *lock(&shared.version) })),
        Route::Tags => tags(&shared),
        Route::Show => show(&shared, parsed),
        Route::Generate => generate(&shared, parsed, start).await,
        Route::Chat => chat(&shared, parsed, start).await,
        Route::Embed => embed(&shared, parsed, start).await,
        Route::Embeddings => embeddings(&shared, parsed).await,
    };
    shared.log.set_status(index, response.status());
    response
}

fn response(status: u16, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text_resp(status: u16, content_type: &'static str, text: &'static str) -> Response {
    response(status, content_type, Body::from(text))
}

fn not_found() -> Response {
    text_resp(404, "text/plain", "404 page not found")
}

fn json_resp(status: u16, value: &Value) -> Response {
    // Serialising a Value cannot fail: its map keys are strings.
    let body = serde_json::to_vec(value).unwrap_or_default();
    response(status, "application/json; charset=utf-8", Body::from(body))
}

fn error_resp(status: u16, error: impl Into<String>) -> Response {
    json_resp(status, &json!({ "error": error.into() }))
}

fn ndjson(lines: Vec<Value>, delay: Duration, ticket: Ticket) -> Response {
    let chunks: Vec<Bytes> = lines
        .iter()
        .map(|l| {
            let mut b = serde_json::to_vec(l).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        })
        .collect();
    let stream = futures::stream::iter(chunks.into_iter().enumerate())
        .then(move |(i, chunk)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(chunk)
        })
        // The request stays in flight until its last line is sent (or the client goes away).
        .map(move |chunk| {
            let _in_flight = &ticket;
            chunk
        });
    response(200, "application/x-ndjson", Body::from_stream(stream))
}

/// The body, or the text of the 400 for a body that does not bind or does not type-check.
fn bind_checked(
    parsed: Result<Value, String>,
    struct_name: &str,
    fields: &[(&str, go::Ty)],
) -> Result<Value, String> {
    parsed.and_then(|v| go::check(&v, struct_name, fields).map(|()| v))
}

/// The last non-null value of a key, matched case-insensitively, as Go's decoder fills a field.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .filter(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
        .map(|(_, v)| v)
        .next_back()
}

fn str_of(v: &Value, name: &str) -> String {
    field(v, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn keep_alive_is_zero(v: &Value) -> bool {
    match field(v, "keep_alive") {
        Some(Value::Number(n)) => n
            .as_f64()
            .is_some_and(|t| t >= 0.0 && (t * 1e9) as i64 == 0),
        Some(Value::String(s)) => go::parse_duration(s).is_ok_and(|ns| ns == 0.0),
        _ => false,
    }
}

fn option_i64(v: &Value, name: &str) -> Option<i64> {
    field(v, "options")
        .and_then(|o| field(o, name))
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
}

fn images_of(v: &Value) -> Vec<Vec<u8>> {
    field(v, "images")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(|s| go::base64(s.as_bytes()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn nanos(d: Duration) -> u64 {
    // Go omits zero durations; a real measurement is never exactly zero.
    (d.as_nanos() as u64).max(1)
}

fn tags(shared: &Shared) -> Response {
    let models: Vec<Value> = read(&shared.models)
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "model": m.name,
                "modified_at": MODIFIED_AT,
                "size": m.size,
                "digest": m.digest(),
                "details": details(m),
                "capabilities": m.capabilities.iter().map(|c| c.name()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_resp(200, &json!({ "models": models }))
}

fn details(m: &ModelSpec) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.family,
        "families": m.families,
        "parameter_size": m.parameter_size,
        "quantization_level": m.quantization_level,
    })
}

fn show(shared: &Shared, parsed: Result<Value, String>) -> Response {
    let v = match bind_checked(parsed, "ShowRequest", go::SHOW) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    let mut name = str_of(&v, "model");
    if name.is_empty() {
        // `name` is the deprecated spelling the server still honours.
        name = str_of(&v, "name");
    }
    if name.is_empty() {
        return error_resp(400, "model is required");
    }
    let Some(key) = canonical(&name) else {
        return error_resp(400, "invalid model name");
    };
    let Some(m) = shared.model(&key) else {
        return error_resp(404, format!("model '{}' not found", with_tag(&name)));
    };
    let arch = m.family.clone();
    let mut info = Map::new();
    info.insert("general.architecture".into(), json!(arch));
    info.insert(
        "general.parameter_count".into(),
        json!(parameter_count(&m.parameter_size)),
    );
    info.insert(format!("{arch}.context_length"), json!(m.context_length));
    info.insert(
        format!("{arch}.embedding_length"),
        json!(m.embedding_length),
    );
    let digest = m.digest();
    let mut out = json!({
        "modelfile": format!(
            "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {}\n\nFROM /root/.ollama/models/blobs/sha256-{digest}\n",
            m.name
        ),
        "template": "{{ .Prompt }}",
        "details": details(&m),
        "model_info": info,
        "capabilities": m.capabilities.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "modified_at": MODIFIED_AT,
    });
    if m.has(Capability::Vision) {
        out["projector_info"] = json!({ "clip.has_vision_encoder": true });
    }
    json_resp(200, &out)
}

fn parameter_count(size: &str) -> u64 {
    let (num, unit) = size.split_at(size.len().saturating_sub(1));
    let scale = match unit {
        "B" => 1e9,
        "M" => 1e6,
        "K" => 1e3,
        _ => 1.0,
    };
    (num.parse::<f64>().unwrap_or(0.0) * scale) as u64
}

// ---------------------------------------------------------------------------------------------
// Generate and chat

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Generate,
    Chat,
}

struct Job {
    kind: Kind,
    /// The model as the request named it: responses echo it.
    model: String,
    spec: ModelSpec,
    prompt: String,
    prompt_tokens: usize,
    images: Vec<Vec<u8>>,
    format: Option<Value>,
    stream: bool,
    num_predict: Option<i64>,
    start: Instant,
}

async fn generate(shared: &Arc<Shared>, parsed: Result<Value, String>, start: Instant) -> Response {
    let v = match bind_checked(parsed, "GenerateRequest", go::GENERATE) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    let name = str_of(&v, "model");
    // An invalid name is reported as not found here, as the real handler does.
    let Some(spec) = canonical(&name).and_then(|k| shared.model(&k)) else {
        return error_resp(404, format!("model '{name}' not found"));
    };
    let prompt = str_of(&v, "prompt");
    if prompt.is_empty() && keep_alive_is_zero(&v) {
        shared.unload(&spec);
        return json_resp(
            200,
            &json!({
                "model": name, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": "unload",
            }),
        );
    }
    if !spec.has(Capability::Completion) {
        return error_resp(
            400,
            format!("{} does not support generate", go::quote(&name)),
        );
    }
    let ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if prompt.is_empty() {
        // Loading is answered as one JSON object even when streaming was asked for.
        return json_resp(
            200,
            &json!({
                "model": name, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": "load",
            }),
        );
    }
    let images = images_of(&v);
    let system = str_of(&v, "system");
    let job = Job {
        kind: Kind::Generate,
        model: name,
        spec,
        prompt_tokens: words(&prompt) + words(&system) + IMAGE_TOKENS * images.len(),
        prompt,
        images,
        format: field(&v, "format").cloned(),
        stream: field(&v, "stream").and_then(Value::as_bool).unwrap_or(true),
        num_predict: option_i64(&v, "num_predict"),
        start,
    };
    run(shared, job, ticket).await
}

async fn chat(shared: &Arc<Shared>, parsed: Result<Value, String>, start: Instant) -> Response {
    let v = match bind_checked(parsed, "ChatRequest", go::CHAT) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    let name = str_of(&v, "model");
    let Some(key) = canonical(&name) else {
        return error_resp(400, "model is required");
    };
    let Some(spec) = shared.model(&key) else {
        return error_resp(404, format!("model '{name}' not found"));
    };
    let messages: Vec<&Value> = field(&v, "messages")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter(|m| m.is_object()).collect())
        .unwrap_or_default();
    let done = |reason: &str| {
        json_resp(
            200,
            &json!({
                "model": name, "created_at": now_rfc3339(),
                "message": { "role": "assistant", "content": "" },
                "done": true, "done_reason": reason,
            }),
        )
    };
    if messages.is_empty() && keep_alive_is_zero(&v) {
        shared.unload(&spec);
        return done("unload");
    }
    if !spec.has(Capability::Completion) {
        return error_resp(400, format!("{} does not support chat", go::quote(&name)));
    }
    let ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if messages.is_empty() {
        return done("load");
    }
    let prompt = messages
        .iter()
        .rev()
        .find(|m| str_of(m, "role") == "user")
        .or(messages.last())
        .map(|m| str_of(m, "content"))
        .unwrap_or_default();
    let images: Vec<Vec<u8>> = messages.iter().flat_map(|m| images_of(m)).collect();
    let job = Job {
        kind: Kind::Chat,
        model: name.clone(),
        spec,
        prompt_tokens: messages
            .iter()
            .map(|m| words(&str_of(m, "content")))
            .sum::<usize>()
            + IMAGE_TOKENS * images.len(),
        prompt,
        images,
        format: field(&v, "format").cloned(),
        stream: field(&v, "stream").and_then(Value::as_bool).unwrap_or(true),
        num_predict: option_i64(&v, "num_predict"),
        start,
    };
    run(shared, job, ticket).await
}

/// What the runner does once the model is loaded.
async fn run(shared: &Arc<Shared>, job: Job, ticket: Ticket) -> Response {
    if !job.images.is_empty() && !job.spec.has(Capability::Vision) {
        // The runner's own JSON error, passed through as the error text.
        let runner = json!({ "error": {
            "code": 400, "message": MULTIMODAL_UNSUPPORTED, "type": "invalid_request_error",
        }});
        return error_resp(400, runner.to_string());
    }
    let json_mode = match &job.format {
        None => false,
        Some(Value::String(s)) if s.is_empty() => false,
        Some(Value::String(s)) if s == "json" => true,
        Some(Value::Object(_)) => true,
        Some(other) => {
            return error_resp(
                500,
                format!(
                    "invalid format: {}; expected \"json\" or a valid JSON Schema object",
                    go::quote(&other.to_string())
                ),
            )
        }
    };
    let images = job.images.clone();
    // Decoding a large image takes a while: keep it off the threads that serve other requests.
    let summaries = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|i| summarise(i))
            .collect::<Vec<Result<ImageSummary, String>>>()
    })
    .await;
    let summaries = match summaries {
        Ok(s) => s,
        Err(e) => return error_resp(500, format!("failed to process inputs: {e}")),
    };
    let mut ok = Vec::new();
    for (i, s) in summaries.into_iter().enumerate() {
        match s {
            Ok(s) => ok.push(s),
            Err(e) => {
                return error_resp(
                    500,
                    format!("failed to process inputs: image {i} could not be decoded: {e}"),
                )
            }
        }
    }
    let text = compose(&job.prompt, &ok, json_mode);
    let mut pieces: Vec<&str> = text.split_inclusive(' ').collect();
    let mut done_reason = "stop";
    if let Some(n) = job.num_predict.filter(|n| *n > 0) {
        if pieces.len() > n as usize {
            pieces.truncate(n as usize);
            done_reason = "length";
        }
    }
    let (token_delay, mid_stream) = {
        let k = lock(&shared.knobs);
        (k.token_delay, k.error_mid_stream)
    };
    let now = Instant::now();
    let streamed = if job.stream {
        token_delay * pieces.len().saturating_sub(1) as u32
    } else {
        Duration::ZERO
    };
    let processing = now.duration_since(ticket.loaded_at);
    let created = now_rfc3339();
    let mut last = json!({ "model": job.model, "created_at": created });
    match job.kind {
        Kind::Generate => last["response"] = json!(""),
        Kind::Chat => last["message"] = json!({ "role": "assistant", "content": "" }),
    }
    last["done"] = json!(true);
    last["done_reason"] = json!(done_reason);
    if job.kind == Kind::Generate {
        let context: Vec<u64> = job
            .prompt
            .split_whitespace()
            .chain(pieces.iter().copied())
            .map(|w| mix(fnv(&[w.trim().as_bytes()])) % 32_000)
            .collect();
        last["context"] = json!(context);
    }
    last["total_duration"] = json!(nanos(now.duration_since(job.start) + streamed));
    last["load_duration"] = json!(nanos(ticket.loaded_at.duration_since(job.start)));
    last["prompt_eval_count"] = json!(job.prompt_tokens.max(1));
    last["prompt_eval_duration"] = json!(nanos(processing / 3));
    last["eval_count"] = json!(pieces.len());
    last["eval_duration"] = json!(nanos(processing - processing / 3 + streamed));

    if !job.stream {
        if mid_stream {
            return error_resp(500, MID_STREAM_ERROR);
        }
        let whole: String = pieces.concat();
        match job.kind {
            Kind::Generate => last["response"] = json!(whole),
            Kind::Chat => last["message"]["content"] = json!(whole),
        }
        return json_resp(200, &last);
    }
    let line = |piece: &str| {
        let mut l = json!({ "model": job.model, "created_at": created });
        match job.kind {
            Kind::Generate => l["response"] = json!(piece),
            Kind::Chat => l["message"] = json!({ "role": "assistant", "content": piece }),
        }
        l["done"] = json!(false);
        l
    };
    let mut lines: Vec<Value> = pieces.iter().map(|p| line(p)).collect();
    if mid_stream {
        lines.truncate(1);
        lines.push(json!({ "error": MID_STREAM_ERROR }));
    } else {
        lines.push(last);
    }
    ndjson(lines, token_delay, ticket)
}

fn compose(prompt: &str, images: &[ImageSummary], json_mode: bool) -> String {
    let mut description = match images {
        [] => "No image was provided.".to_string(),
        [one] => one.sentence(),
        many => many
            .iter()
            .enumerate()
            .map(|(i, s)| format!("Image {}: {}", i + 1, s.sentence()))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let echo: Vec<&str> = prompt.split_whitespace().take(8).collect();
    if !echo.is_empty() {
        description.push_str(&format!(" Prompt: \"{}\".", echo.join(" ")));
    }
    if !json_mode {
        return description;
    }
    let mut objects: Vec<String> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    for s in images {
        for (name, share) in &s.colours {
            if *share >= 0.1 {
                let object = format!("a {name} region");
                if !objects.contains(&object) {
                    objects.push(object);
                }
                if !tags.iter().any(|t| t == name) {
                    tags.push(name.to_string());
                }
            }
        }
        let orientation = match s.width.cmp(&s.height) {
            std::cmp::Ordering::Greater => "landscape",
            std::cmp::Ordering::Less => "portrait",
            std::cmp::Ordering::Equal => "square",
        };
        for t in [orientation.to_string(), format!("{}x{}", s.width, s.height)] {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
    }
    json!({
        "description": description,
        "objects": objects,
        "visible_text": "",
        "tags": tags,
    })
    .to_string()
}

struct ImageSummary {
    width: u32,
    height: u32,
    hash: String,
    /// Colour names with their share of the pixels, largest first.
    colours: Vec<(&'static str, f32)>,
}

impl ImageSummary {
    fn sentence(&self) -> String {
        let colour = self.colours.first().map(|c| c.0).unwrap_or("gray");
        format!(
            "A {}x{} image, mostly {colour}, sha256 {}.",
            self.width, self.height, self.hash
        )
    }
}

const COLOURS: [&str; 12] = [
    "black", "white", "gray", "red", "orange", "brown", "yellow", "green", "cyan", "blue",
    "purple", "pink",
];

fn summarise(bytes: &[u8]) -> Result<ImageSummary, String> {
    use image::GenericImageView;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    // A decompression bomb must fail here, not take the test machine's memory.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let (w, h) = img.dimensions();
    // Sampling a grid of at most ~64k pixels names the colour as well as reading them all.
    let step = (((w as u64 * h as u64) / 65_536) as f64)
        .sqrt()
        .ceil()
        .max(1.0) as usize;
    let mut counts = [0usize; COLOURS.len()];
    let mut total = 0usize;
    for y in (0..h).step_by(step) {
        for x in (0..w).step_by(step) {
            let p = img.get_pixel(x, y).0;
            counts[colour_index(p[0], p[1], p[2])] += 1;
            total += 1;
        }
    }
    let mut colours: Vec<(&'static str, f32)> = COLOURS
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (*name, n as f32 / total.max(1) as f32))
        .collect();
    // Stable: ties keep the fixed order of COLOURS.
    colours.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ImageSummary {
        width: w,
        height: h,
        hash: short_sha256(bytes),
        colours,
    })
}

fn colour_index(r: u8, g: u8, b: u8) -> usize {
    let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    if max < 0.2 {
        return 0;
    }
    if s < 0.2 {
        return if max > 0.8 { 1 } else { 2 };
    }
    let h = if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let name = match h {
        h if !(15.0..345.0).contains(&h) => "red",
        h if h < 45.0 => {
            if max < 0.6 {
                "brown"
            } else {
                "orange"
            }
        }
        h if h < 70.0 => "yellow",
        h if h < 165.0 => "green",
        h if h < 195.0 => "cyan",
        h if h < 255.0 => "blue",
        h if h < 290.0 => "purple",
        _ => "pink",
    };
    COLOURS.iter().position(|c| *c == name).unwrap_or(2)
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// The inputs; `None` when `input` is neither a string nor a list of strings.
fn embed_inputs(v: &Value) -> Option<Vec<String>> {
    match field(v, "input") {
        None => Some(vec![]),
        Some(Value::String(s)) if s.is_empty() => Some(vec![]),
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(_) => None,
    }
}

async fn embed(shared: &Arc<Shared>, parsed: Result<Value, String>, start: Instant) -> Response {
    let v = match bind_checked(parsed, "EmbedRequest", go::EMBED) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    // The input's type is checked before the model, as the real handler does.
    let Some(inputs) = embed_inputs(&v) else {
        return error_resp(400, "invalid input type");
    };
    let name = str_of(&v, "model");
    let Some(key) = canonical(&name) else {
        return error_resp(404, format!("model '{name}' not found"));
    };
    let Some(spec) = shared.model(&key) else {
        return error_resp(
            404,
            format!("model {} not found, try pulling it first", go::quote(&name)),
        );
    };
    let ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if inputs.is_empty() {
        return json_resp(200, &json!({ "model": name, "embeddings": [] }));
    }
    if !spec.has(Capability::Embedding) {
        return error_resp(501, NO_EMBEDDINGS);
    }
    let context = option_i64(&v, "num_ctx")
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .unwrap_or(spec.context_length);
    let truncate = field(&v, "truncate")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let nan_mode = lock(&shared.knobs).nan_mode;
    let mut vectors = Vec::with_capacity(inputs.len());
    let mut tokens = 0;
    for input in &inputs {
        let n = words(input);
        let text = if n > context {
            if !truncate {
                return error_resp(400, CONTEXT_EXCEEDED);
            }
            input
                .split_whitespace()
                .take(context)
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            input.clone()
        };
        tokens += words(&text).max(1);
        let mut e = embed_text(&spec, &text);
        if let Some(d) = field(&v, "dimensions").and_then(Value::as_i64) {
            if d > 0 && (d as usize) < e.len() {
                e.truncate(d as usize);
                normalise(&mut e);
            }
        }
        if text.contains(NAN_TOKEN) {
            if nan_mode == NanMode::Reject {
                return error_resp(500, NAN_ERROR);
            }
            if let Some(x) = e.first_mut() {
                *x = f32::NAN;
            }
        }
        vectors.push(e);
    }
    let total = nanos(start.elapsed());
    let load = nanos(ticket.loaded_at.duration_since(start));
    let list = |v: &[f32]| format_floats(v.iter().map(|x| *x as f64), nan_mode);
    let body = format!(
        "{{\"model\":{},\"embeddings\":[{}],\"total_duration\":{total},\"load_duration\":{load},\"prompt_eval_count\":{tokens}}}",
        Value::from(name),
        vectors.iter().map(|v| list(v)).collect::<Vec<_>>().join(",")
    );
    response(200, "application/json; charset=utf-8", Body::from(body))
}

async fn embeddings(shared: &Arc<Shared>, parsed: Result<Value, String>) -> Response {
    let v = match bind_checked(parsed, "EmbeddingRequest", go::EMBEDDINGS) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    let name = str_of(&v, "model");
    let Some(key) = canonical(&name) else {
        return error_resp(400, "model is required");
    };
    let Some(spec) = shared.model(&key) else {
        return error_resp(
            404,
            format!("model {} not found, try pulling it first", go::quote(&name)),
        );
    };
    let _ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let prompt = str_of(&v, "prompt");
    if prompt.is_empty() {
        return json_resp(200, &json!({ "embedding": [] }));
    }
    // This route passes every runner error on as a 500.
    if !spec.has(Capability::Embedding) {
        return error_resp(500, NO_EMBEDDINGS);
    }
    let context = option_i64(&v, "num_ctx")
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .unwrap_or(spec.context_length);
    if words(&prompt) > context {
        return error_resp(500, CONTEXT_EXCEEDED);
    }
    let nan_mode = lock(&shared.knobs).nan_mode;
    let mut e = embed_text(&spec, &prompt);
    if !spec.legacy_normalised {
        // Raw model output: a length that differs from text to text, so a client that divides
        // by a constant instead of normalising is caught.
        let scale = 10.0 + (mix(fnv(&[prompt.as_bytes()])) % 1000) as f32 / 100.0;
        e.iter_mut().for_each(|x| *x *= scale);
    }
    if prompt.contains(NAN_TOKEN) {
        if nan_mode == NanMode::Reject {
            return error_resp(500, NAN_ERROR);
        }
        if let Some(x) = e.first_mut() {
            *x = f32::NAN;
        }
    }
    let body = format!(
        "{{\"embedding\":{}}}",
        format_floats(e.iter().map(|x| *x as f64), nan_mode)
    );
    response(200, "application/json; charset=utf-8", Body::from(body))
}

fn format_floats(values: impl Iterator<Item = f64>, nan_mode: NanMode) -> String {
    let items: Vec<String> = values
        .map(|x| {
            if x.is_finite() {
                Value::from(x).to_string()
            } else if nan_mode == NanMode::Literal {
                "NaN".to_string()
            } else {
                "null".to_string()
            }
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// A feature hash of the words: each word adds ±1 at one place and ±0.5 at another (fewer
/// collisions), seeded by the model so that models have different spaces; a shared direction
/// makes unrelated texts slightly similar, as real embeddings are, and keeps a wordless text
/// from being the zero vector.
fn embed_text(spec: &ModelSpec, text: &str) -> Vec<f32> {
    let dims = spec.embedding_length;
    if dims == 0 {
        return vec![];
    }
    let mut salt = canonical(&spec.name).unwrap_or_default();
    if !spec.revision.is_empty() {
        salt = format!("{salt}@{}", spec.revision);
    }
    let mut v = vec![0f32; dims];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = word.to_lowercase();
        let h = mix(fnv(&[salt.as_bytes(), w.as_bytes()]));
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        v[(h % dims as u64) as usize] += sign;
        let h2 = mix(h ^ 0x2545_f491_4f6c_dd1d);
        let sign2 = if h2 >> 63 == 1 { -0.5 } else { 0.5 };
        v[(h2 % dims as u64) as usize] += sign2;
    }
    let bias = mix(fnv(&[salt.as_bytes(), b"\0shared"]));
    v[(bias % dims as u64) as usize] += 0.5;
    normalise(&mut v);
    v
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads FNV's weak low bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Names and times

/// `name` with `:latest` added when it has no tag.
fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// `host/namespace/model:tag`, lowercase, with Ollama's defaults filled in
/// (`llava` → `registry.ollama.ai/library/llava:latest`); `None` for an invalid name.
fn canonical(name: &str) -> Option<String> {
    let (path, tag) = match name.rfind(':') {
        Some(i) if !name[i + 1..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let (host, ns, model) = match parts.as_slice() {
        [m] => (DEFAULT_HOST, "library", *m),
        [n, m] => (DEFAULT_HOST, *n, *m),
        [h, n, m] => (*h, *n, *m),
        _ => return None,
    };
    let part_ok = |s: &str, max: usize, first_underscore: bool, extra: &[char]| {
        let mut chars = s.chars();
        let first = chars.next();
        !s.is_empty()
            && s.len() <= max
            && first.is_some_and(|c| c.is_ascii_alphanumeric() || (first_underscore && c == '_'))
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(&c))
    };
    let valid = part_ok(host, 350, false, &[':'])
        && part_ok(ns, 80, false, &[])
        && part_ok(model, 80, false, &[])
        && part_ok(tag, 80, true, &[]);
    valid.then(|| format!("{host}/{ns}/{model}:{tag}").to_ascii_lowercase())
}

fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

/// Go's `time.RFC3339Nano` in UTC, trailing zeros of the fraction dropped.
fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos > 0 {
        let f = format!("{nanos:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

// ---------------------------------------------------------------------------------------------
// Go compatibility: the real server decodes with Go's encoding/json into typed structs, and its
// error texts are those of Go's scanner, decoder, base64 and time packages.

mod go {
    use serde_json::Value;

    /// Go's `maxNestingDepth`.
    const MAX_DEPTH: usize = 10_000;

    /// Field types of the request structs, as far as decoding can fail on them.
    #[derive(Clone, Copy, Debug)]
    pub enum Ty {
        Str,
        Bool,
        Int,
        Map,
        Any,
        Duration,
        Images,
        Messages,
    }

    use Ty::*;

    pub const GENERATE: &[(&str, Ty)] = &[
        ("model", Str),
        ("prompt", Str),
        ("suffix", Str),
        ("system", Str),
        ("template", Str),
        ("stream", Bool),
        ("raw", Bool),
        ("format", Any),
        ("keep_alive", Duration),
        ("images", Images),
        ("options", Map),
        ("think", Any),
    ];
    pub const CHAT: &[(&str, Ty)] = &[
        ("model", Str),
        ("messages", Messages),
        ("stream", Bool),
        ("format", Any),
        ("keep_alive", Duration),
        ("tools", Any),
        ("options", Map),
        ("think", Any),
    ];
    const MESSAGE: &[(&str, Ty)] = &[
        ("role", Str),
        ("content", Str),
        ("thinking", Str),
        ("images", Images),
        ("tool_calls", Any),
        ("tool_name", Str),
    ];
    pub const EMBED: &[(&str, Ty)] = &[
        ("model", Str),
        ("input", Any),
        ("keep_alive", Duration),
        ("truncate", Bool),
        ("dimensions", Int),
        ("options", Map),
    ];
    pub const EMBEDDINGS: &[(&str, Ty)] = &[
        ("model", Str),
        ("prompt", Str),
        ("keep_alive", Duration),
        ("options", Map),
    ];
    pub const SHOW: &[(&str, Ty)] = &[
        ("model", Str),
        ("name", Str),
        ("system", Str),
        ("template", Str),
        ("verbose", Bool),
        ("options", Map),
    ];

    /// Read the body as gin's `ShouldBindJSON` does: the first JSON value, anything after it
    /// ignored; an empty or blank body is "missing request body".
    pub fn bind(body: &[u8]) -> Result<Value, String> {
        let end = match scan(body) {
            Ok(end) => end,
            Err(Scan::Empty) => return Err("missing request body".into()),
            Err(Scan::UnexpectedEof) => return Err("unexpected EOF".into()),
            Err(Scan::Syntax(msg)) => return Err(msg),
        };
        // Go replaces invalid UTF-8 rather than refusing it.
        let text = String::from_utf8_lossy(&body[..end]);
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    /// Decode into the named struct's fields in document order: the first type error (or bad
    /// base64) is kept and reported, a duration's error stops at once, as in Go.
    pub fn check(v: &Value, struct_name: &str, fields: &[(&str, Ty)]) -> Result<(), String> {
        let mut saved = None;
        match v {
            Value::Null => {}
            Value::Object(obj) => check_struct(obj, struct_name, "", fields, &mut saved)?,
            other => {
                return Err(format!(
                    "json: cannot unmarshal {} into Go value of type api.{struct_name}",
                    kind(other)
                ))
            }
        }
        saved.map_or(Ok(()), Err)
    }

    fn check_struct(
        obj: &serde_json::Map<String, Value>,
        struct_name: &str,
        path: &str,
        fields: &[(&str, Ty)],
        saved: &mut Option<String>,
    ) -> Result<(), String> {
        for (key, value) in obj {
            let Some((name, ty)) = fields
                .iter()
                .find(|(n, _)| n == key)
                .or_else(|| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(key)))
            else {
                continue;
            };
            let path = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            check_value(value, *ty, struct_name, &path, saved)?;
        }
        Ok(())
    }

    fn check_value(
        v: &Value,
        ty: Ty,
        struct_name: &str,
        path: &str,
        saved: &mut Option<String>,
    ) -> Result<(), String> {
        let mut save = |what: &str, go_type: &str| {
            if saved.is_none() {
                *saved = Some(format!(
                    "json: cannot unmarshal {what} into Go struct field {struct_name}.{path} of type {go_type}"
                ));
            }
        };
        match (ty, v) {
            (_, Value::Null) | (Any, _) => {}
            (Str, Value::String(_)) | (Bool, Value::Bool(_)) | (Map, Value::Object(_)) => {}
            (Str, other) => save(kind(other), "string"),
            (Bool, other) => save(kind(other), "bool"),
            (Map, other) => save(kind(other), "map[string]interface {}"),
            (Int, Value::Number(n)) => {
                if !n.is_i64() {
                    save(&format!("number {n}"), "int");
                }
            }
            (Int, other) => save(kind(other), "int"),
            (Duration, Value::Number(_)) => {}
            (Duration, Value::String(s)) => {
                parse_duration(s)?;
            }
            (Duration, _) => return Err("invalid duration".into()),
            (Images, Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::Null => {}
                        Value::String(s) => {
                            if let Err(at) = base64(s.as_bytes()) {
                                if saved.is_none() {
                                    *saved =
                                        Some(format!("illegal base64 data at input byte {at}"));
                                }
                            }
                        }
                        other => {
                            if saved.is_none() {
                                *saved = Some(format!(
                                    "json: cannot unmarshal {} into Go struct field {struct_name}.{path} of type api.ImageData",
                                    kind(other)
                                ));
                            }
                        }
                    }
                }
            }
            (Images, other) => save(kind(other), "[]api.ImageData"),
            (Messages, Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::Null => {}
                        Value::Object(obj) => check_struct(obj, "Message", path, MESSAGE, saved)?,
                        other => {
                            if saved.is_none() {
                                *saved = Some(format!(
                                    "json: cannot unmarshal {} into Go struct field {struct_name}.{path} of type api.Message",
                                    kind(other)
                                ));
                            }
                        }
                    }
                }
            }
            (Messages, other) => save(kind(other), "[]api.Message"),
        }
        Ok(())
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    pub enum Scan {
        Empty,
        UnexpectedEof,
        Syntax(String),
    }

    #[derive(Clone, Copy)]
    enum St {
        BeginValue,
        BeginValueOrEmpty,
        BeginStringOrEmpty,
        BeginString,
        EndValue,
        InString,
        InStringEsc,
        InStringEscU(u8),
        Neg,
        Zero,
        One,
        Dot,
        Dot0,
        E,
        ESign,
        E0,
        Lit(&'static str, usize),
    }

    #[derive(Clone, Copy)]
    enum Ps {
        ObjectKey,
        ObjectValue,
        ArrayValue,
    }

    enum Step {
        Next(St),
        /// Hand the same byte to another state, as Go's state functions call each other.
        Again(St),
        /// The value ended before this byte.
        EndBefore,
        /// The value ended with this byte.
        EndWith,
        Error(String),
    }

    /// Go's `encoding/json` scanner over the first value: where it ends, or Go's error text.
    pub fn scan(data: &[u8]) -> Result<usize, Scan> {
        let mut st = St::BeginValue;
        let mut stack: Vec<Ps> = Vec::new();
        for (i, &c) in data.iter().enumerate() {
            let mut state = st;
            loop {
                match step(state, c, &mut stack) {
                    Step::Next(next) => {
                        st = next;
                        break;
                    }
                    Step::Again(next) => state = next,
                    Step::EndBefore => return Ok(i),
                    Step::EndWith => return Ok(i + 1),
                    Step::Error(context) => {
                        return Err(Scan::Syntax(format!(
                            "invalid character {} {context}",
                            quote_char(c)
                        )))
                    }
                }
            }
        }
        match st {
            St::BeginValue if stack.is_empty() => Err(Scan::Empty),
            St::EndValue | St::Zero | St::One | St::Dot0 | St::E0 if stack.is_empty() => {
                Ok(data.len())
            }
            _ => Err(Scan::UnexpectedEof),
        }
    }

    fn step(st: St, c: u8, stack: &mut Vec<Ps>) -> Step {
        use Step::*;
        let space = matches!(c, b' ' | b'\t' | b'\r' | b'\n');
        let push = |stack: &mut Vec<Ps>, p: Ps, next: St| {
            stack.push(p);
            if stack.len() > MAX_DEPTH {
                Error("exceeded max depth".into())
            } else {
                Next(next)
            }
        };
        match st {
            St::BeginValueOrEmpty if space => Next(st),
            St::BeginValueOrEmpty if c == b']' => Again(St::EndValue),
            St::BeginValueOrEmpty => Again(St::BeginValue),
            St::BeginValue if space => Next(st),
            St::BeginValue => match c {
                b'{' => push(stack, Ps::ObjectKey, St::BeginStringOrEmpty),
                b'[' => push(stack, Ps::ArrayValue, St::BeginValueOrEmpty),
                b'"' => Next(St::InString),
                b'-' => Next(St::Neg),
                b'0' => Next(St::Zero),
                b'1'..=b'9' => Next(St::One),
                b't' => Next(St::Lit("true", 1)),
                b'f' => Next(St::Lit("false", 1)),
                b'n' => Next(St::Lit("null", 1)),
                _ => Error("looking for beginning of value".into()),
            },
            St::BeginStringOrEmpty if space => Next(st),
            St::BeginStringOrEmpty if c == b'}' => {
                if let Some(top) = stack.last_mut() {
                    *top = Ps::ObjectValue;
                }
                Again(St::EndValue)
            }
            St::BeginStringOrEmpty => Again(St::BeginString),
            St::BeginString if space => Next(st),
            St::BeginString if c == b'"' => Next(St::InString),
            St::BeginString => Error("looking for beginning of object key string".into()),
            St::EndValue => {
                let Some(top) = stack.last().copied() else {
                    return EndBefore;
                };
                if space {
                    return Next(St::EndValue);
                }
                let close = |stack: &mut Vec<Ps>| {
                    stack.pop();
                    if stack.is_empty() {
                        EndWith
                    } else {
                        Next(St::EndValue)
                    }
                };
                match (top, c) {
                    (Ps::ObjectKey, b':') => {
                        if let Some(t) = stack.last_mut() {
                            *t = Ps::ObjectValue;
                        }
                        Next(St::BeginValue)
                    }
                    (Ps::ObjectKey, _) => Error("after object key".into()),
                    (Ps::ObjectValue, b',') => {
                        if let Some(t) = stack.last_mut() {
                            *t = Ps::ObjectKey;
                        }
                        Next(St::BeginString)
                    }
                    (Ps::ObjectValue, b'}') => close(stack),
                    (Ps::ObjectValue, _) => Error("after object key:value pair".into()),
                    (Ps::ArrayValue, b',') => Next(St::BeginValue),
                    (Ps::ArrayValue, b']') => close(stack),
                    (Ps::ArrayValue, _) => Error("after array element".into()),
                }
            }
            St::InString => match c {
                b'"' => Next(St::EndValue),
                b'\\' => Next(St::InStringEsc),
                c if c < 0x20 => Error("in string literal".into()),
                _ => Next(st),
            },
            St::InStringEsc => match c {
                b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => Next(St::InString),
                b'u' => Next(St::InStringEscU(0)),
                _ => Error("in string escape code".into()),
            },
            St::InStringEscU(n) if c.is_ascii_hexdigit() => Next(if n == 3 {
                St::InString
            } else {
                St::InStringEscU(n + 1)
            }),
            St::InStringEscU(_) => Error("in \\u hexadecimal character escape".into()),
            St::Neg => match c {
                b'0' => Next(St::Zero),
                b'1'..=b'9' => Next(St::One),
                _ => Error("in numeric literal".into()),
            },
            St::One if c.is_ascii_digit() => Next(st),
            St::One => Again(St::Zero),
            St::Zero => match c {
                b'.' => Next(St::Dot),
                b'e' | b'E' => Next(St::E),
                _ => Again(St::EndValue),
            },
            St::Dot if c.is_ascii_digit() => Next(St::Dot0),
            St::Dot => Error("after decimal point in numeric literal".into()),
            St::Dot0 if c.is_ascii_digit() => Next(st),
            St::Dot0 if c == b'e' || c == b'E' => Next(St::E),
            St::Dot0 => Again(St::EndValue),
            St::E if c == b'+' || c == b'-' => Next(St::ESign),
            St::E => Again(St::ESign),
            St::ESign if c.is_ascii_digit() => Next(St::E0),
            St::ESign => Error("in exponent of numeric literal".into()),
            St::E0 if c.is_ascii_digit() => Next(st),
            St::E0 => Again(St::EndValue),
            St::Lit(word, pos) => {
                let w = word.as_bytes();
                if c == w[pos] {
                    Next(if pos + 1 == w.len() {
                        St::EndValue
                    } else {
                        St::Lit(word, pos + 1)
                    })
                } else {
                    Error(format!(
                        "in literal {word} (expecting {})",
                        quote_char(w[pos])
                    ))
                }
            }
        }
    }

    /// Go's `quoteChar` in the scanner's messages.
    fn quote_char(c: u8) -> String {
        match c {
            b'\'' => "'\\''".into(),
            b'"' => "'\"'".into(),
            _ => {
                let q = quote(&char::from(c).to_string());
                format!("'{}'", &q[1..q.len() - 1])
            }
        }
    }

    /// Go's `strconv.Quote` (and `%q`) for the texts that appear here.
    pub fn quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn decode_char(c: u8) -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }

    /// Go's `base64.StdEncoding.Decode`, which is how `encoding/json` fills a `[]byte`:
    /// standard alphabet, padding required, `\r` and `\n` skipped, bits after the last byte not
    /// checked. The error is the offset Go's `CorruptInputError` reports.
    pub fn base64(src: &[u8]) -> Result<Vec<u8>, usize> {
        let skip_newlines = |mut si: usize| {
            while si < src.len() && (src[si] == b'\n' || src[si] == b'\r') {
                si += 1;
            }
            si
        };
        let mut out = Vec::with_capacity(src.len() / 4 * 3);
        let mut si = 0;
        while si < src.len() {
            // One quantum of four characters, as Go's decodeQuantum.
            let mut dbuf = [0u32; 4];
            let mut dlen = 4;
            let mut trailing = None;
            let mut j = 0;
            while j < 4 {
                if si == src.len() {
                    if j == 0 {
                        return Ok(out);
                    }
                    return Err(si - j);
                }
                let c = src[si];
                si += 1;
                if let Some(v) = decode_char(c) {
                    dbuf[j] = v;
                    j += 1;
                    continue;
                }
                if c == b'\n' || c == b'\r' {
                    continue;
                }
                if c != b'=' {
                    return Err(si - 1);
                }
                match j {
                    0 | 1 => return Err(si - 1),
                    2 => {
                        si = skip_newlines(si);
                        if si == src.len() {
                            return Err(src.len());
                        }
                        if src[si] != b'=' {
                            return Err(si - 1);
                        }
                        si += 1;
                    }
                    _ => {}
                }
                si = skip_newlines(si);
                if si < src.len() {
                    trailing = Some(si);
                }
                dlen = j;
                break;
            }
            let val = dbuf[0] << 18 | dbuf[1] << 12 | dbuf[2] << 6 | dbuf[3];
            let bytes = [(val >> 16) as u8, (val >> 8) as u8, val as u8];
            out.extend_from_slice(&bytes[..dlen - 1]);
            if let Some(at) = trailing {
                return Err(at);
            }
        }
        Ok(out)
    }

    /// Go's `time.ParseDuration`, in nanoseconds; errors in Go's words.
    pub fn parse_duration(text: &str) -> Result<f64, String> {
        let invalid = || format!("time: invalid duration {}", quote(text));
        let mut s = text;
        let mut neg = false;
        if let Some(rest) = s.strip_prefix('-') {
            neg = true;
            s = rest;
        } else if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        }
        if s == "0" {
            return Ok(0.0);
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut total = 0.0;
        while !s.is_empty() {
            if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
                return Err(invalid());
            }
            let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let int_part = &s[..int_end];
            s = &s[int_end..];
            let mut frac = "";
            if let Some(rest) = s.strip_prefix('.') {
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                frac = &rest[..end];
                s = &rest[end..];
            }
            if int_part.is_empty() && frac.is_empty() {
                return Err(invalid());
            }
            let unit_end = s
                .find(|c: char| c == '.' || c.is_ascii_digit())
                .unwrap_or(s.len());
            if unit_end == 0 {
                return Err(format!("time: missing unit in duration {}", quote(text)));
            }
            let unit = &s[..unit_end];
            s = &s[unit_end..];
            let scale = match unit {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => {
                    return Err(format!(
                        "time: unknown unit {} in duration {}",
                        quote(unit),
                        quote(text)
                    ))
                }
            };
            let number: f64 = format!("0{int_part}.{frac}0").parse().unwrap_or(0.0);
            total += number * scale;
        }
        Ok(if neg { -total } else { total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_err(body: &str) -> String {
        go::bind(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn go_scanner_texts() {
        assert_eq!(bind_err(""), "missing request body");
        assert_eq!(bind_err(" \n\t"), "missing request body");
        assert_eq!(bind_err("{\"model\":"), "unexpected EOF");
        assert_eq!(bind_err("{\"model\":\"x"), "unexpected EOF");
        assert_eq!(
            bind_err("hello"),
            "invalid character 'h' looking for beginning of value"
        );
        assert_eq!(
            bind_err("{model:1}"),
            "invalid character 'm' looking for beginning of object key string"
        );
        assert_eq!(
            bind_err("{\"a\" 1}"),
            "invalid character '1' after object key"
        );
        assert_eq!(
            bind_err("{\"a\":1 \"b\"}"),
            "invalid character '\"' after object key:value pair"
        );
        assert_eq!(
            bind_err("[1 2]"),
            "invalid character '2' after array element"
        );
        assert_eq!(
            bind_err("{\"a\":tru}"),
            "invalid character '}' in literal true (expecting 'e')"
        );
        assert_eq!(
            bind_err("{\"a\":\"\n\"}"),
            "invalid character '\\n' in string literal"
        );
        assert_eq!(
            bind_err("{\"a\":-x}"),
            "invalid character 'x' in numeric literal"
        );
        assert_eq!(
            bind_err("{\"a\":1.}"),
            "invalid character '}' after decimal point in numeric literal"
        );
        assert_eq!(
            bind_err("{\"a\":'x'}"),
            "invalid character '\\'' looking for beginning of value"
        );
        // Go's decoder reads one value and ignores what follows.
        assert_eq!(go::bind(b"{\"a\":1} trailing").unwrap(), json!({ "a": 1 }));
        assert_eq!(go::bind(b"12").unwrap(), json!(12));
        let deep = "[".repeat(10_001);
        assert_eq!(bind_err(&deep), "invalid character '[' exceeded max depth");
    }

    #[test]
    fn go_type_errors() {
        let check = |body: Value, fields| go::check(&body, "GenerateRequest", fields);
        assert_eq!(
            check(json!({ "model": "x", "stream": "yes" }), go::GENERATE).unwrap_err(),
            "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"
        );
        assert_eq!(
            check(json!({ "prompt": 5 }), go::GENERATE).unwrap_err(),
            "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"
        );
        assert_eq!(
            check(json!({ "images": "QQ==" }), go::GENERATE).unwrap_err(),
            "json: cannot unmarshal string into Go struct field GenerateRequest.images of type []api.ImageData"
        );
        assert_eq!(
            check(json!({ "keep_alive": "5x" }), go::GENERATE).unwrap_err(),
            "time: unknown unit \"x\" in duration \"5x\""
        );
        assert_eq!(
            check(json!({ "keep_alive": true }), go::GENERATE).unwrap_err(),
            "invalid duration"
        );
        assert_eq!(
            go::check(&json!([]), "ChatRequest", go::CHAT).unwrap_err(),
            "json: cannot unmarshal array into Go value of type api.ChatRequest"
        );
        assert_eq!(
            go::check(
                &json!({ "messages": [{ "role": "user", "content": 1 }] }),
                "ChatRequest",
                go::CHAT
            )
            .unwrap_err(),
            "json: cannot unmarshal number into Go struct field Message.messages.content of type string"
        );
        assert_eq!(
            go::check(&json!({ "dimensions": 1.5 }), "EmbedRequest", go::EMBED).unwrap_err(),
            "json: cannot unmarshal number 1.5 into Go struct field EmbedRequest.dimensions of type int"
        );
        // Keys match case-insensitively, as Go's decoder matches fields.
        assert!(check(json!({ "MODEL": "x", "Stream": false }), go::GENERATE).is_ok());
    }

    #[test]
    fn go_base64_offsets() {
        assert_eq!(go::base64(b"QUJD").unwrap(), b"ABC");
        assert_eq!(go::base64(b"QUI=").unwrap(), b"AB");
        assert_eq!(go::base64(b"QQ==").unwrap(), b"A");
        assert_eq!(go::base64(b"QU\r\nJD\n").unwrap(), b"ABC");
        assert_eq!(go::base64(b"").unwrap(), b"");
        assert_eq!(go::base64(b"QQ"), Err(0));
        assert_eq!(go::base64(b"QUJDQQ"), Err(4));
        assert_eq!(go::base64(b"QUJDQUI"), Err(4));
        assert_eq!(go::base64(b"data:image/png;base64,QUJD"), Err(4));
        assert_eq!(go::base64(b"QUJD-_"), Err(4));
        assert_eq!(go::base64(b"QU JD"), Err(2));
        assert_eq!(go::base64(b"QQ=="[..3].as_ref()), Err(3));
        assert_eq!(go::base64(b"QQ==QUJD"), Err(4));
        assert_eq!(go::base64(b"Q==="), Err(1));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go::parse_duration("5m").unwrap(), 300e9);
        assert_eq!(go::parse_duration("1h30m").unwrap(), 5400e9);
        assert_eq!(go::parse_duration("0").unwrap(), 0.0);
        assert_eq!(go::parse_duration("0s").unwrap(), 0.0);
        assert_eq!(go::parse_duration("1.5s").unwrap(), 1.5e9);
        assert_eq!(go::parse_duration("-1s").unwrap(), -1e9);
        assert_eq!(
            go::parse_duration("5").unwrap_err(),
            "time: missing unit in duration \"5\""
        );
        assert_eq!(
            go::parse_duration("abc").unwrap_err(),
            "time: invalid duration \"abc\""
        );
    }

    #[test]
    fn model_names() {
        let llava = canonical("llava");
        assert_eq!(
            llava.as_deref(),
            Some("registry.ollama.ai/library/llava:latest")
        );
        assert_eq!(canonical("llava:latest"), llava);
        assert_eq!(canonical("LLaVA"), llava);
        assert_eq!(canonical("library/llava"), llava);
        assert_eq!(canonical("registry.ollama.ai/library/llava:latest"), llava);
        assert_ne!(canonical("llava:7b"), llava);
        assert_eq!(canonical(""), None);
        assert_eq!(canonical("bad name!"), None);
        assert_eq!(canonical("a/b/c/d"), None);
        assert_eq!(with_tag("llava"), "llava:latest");
        assert_eq!(with_tag("llava:7b"), "llava:7b");
    }

    #[test]
    fn times_format_as_go_does() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 500_000_000), "2000-02-29T00:00:00.5Z");
        assert_eq!(
            rfc3339(1_735_689_599, 123),
            "2024-12-31T23:59:59.000000123Z"
        );
    }

    #[test]
    fn embeddings_share_words() {
        let spec = ModelSpec::embedding("e", 768);
        let a = embed_text(&spec, "a red bicycle leaning on a wall");
        let b = embed_text(&spec, "a red bicycle in the street");
        let c = embed_text(&spec, "quarterly tax report spreadsheet");
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        assert!(dot(&a, &b) > dot(&a, &c) + 0.2);
        assert_eq!(embed_text(&spec, "!!!").len(), 768);
        assert!((dot(&embed_text(&spec, "!!!"), &embed_text(&spec, "!!!")) - 1.0).abs() < 1e-5);
    }
}
