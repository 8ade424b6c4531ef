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
        let (stop, thread) = serve(listener, shared.clone());
        OllamaStandIn {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// Serve `shared` on `listener` from a thread of its own, until the sender is used or dropped.
fn serve(listener: TcpListener, shared: Arc<Shared>) -> (oneshot::Sender<()>, JoinHandle<()>) {
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
    let router = app(shared);
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
    (stop, thread)
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
        self.stop();
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

    /// Stop serving, as a server that went away: requests in flight are cut off and new
    /// connections are refused until [`OllamaStandIn::restart`]. Knobs, models and the request
    /// log are kept.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Serve again on the same port after [`OllamaStandIn::stop`] (a no-op while serving).
    ///
    /// Panics if the port cannot be bound again: this is test setup.
    pub fn restart(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let listener = TcpListener::bind(self.addr).expect("bind the stand-in's port again");
        let (stop, thread) = serve(listener, self.shared.clone());
        self.stop = Some(stop);
        self.thread = Some(thread);
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

mod embed;
mod generate;
mod go;
mod http;
mod models;
mod names;
mod state;
#[cfg(test)]
mod tests;

use embed::*;
use generate::*;
use http::*;
use models::*;
use names::*;
use state::*;
