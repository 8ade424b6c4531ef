//! A stand-in for an OpenAI-compatible server: a real HTTP server on 127.0.0.1 that speaks the
//! OpenAI API (`GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` with image
//! content parts, streamed or not, `POST /v1/embeddings` with string or list input, float or
//! base64 encoding and `dimensions`) with OpenAI's error object
//! (`{"error": {"message", "type", "param", "code"}}`), statuses and headers, so the OpenAI plugin
//! and any OpenAI client can be tested where no such server can run. The official `openai`
//! Python client talks to it unchanged (see `tests/clients/check_openai_standin.py`).
//!
//! The answers are computed from what was received, so a test can prove its data arrived intact:
//! a description is the Ollama stand-in's sentence for each image ([`describe_image`]: decoded
//! size, dominant colour, first 8 hex digits of the SHA-256 of the bytes) followed by the prompt's
//! first words; an embedding is a deterministic feature hash of the text's words, seeded by the
//! model (so models have different spaces), L2-normalised, shortened and renormalised by
//! `dimensions` as OpenAI's `text-embedding-3-*` models are ([`OpenAiStandIn::expected_embedding`]).
//!
//! ```no_run
//! use imbed_tests::openai::{OpenAiStandIn, Route};
//!
//! let server = OpenAiStandIn::builder().api_key("sk-test").start();
//! let base = server.base_url(); // http://127.0.0.1:PORT/v1, give it to the client
//! server.rate_limit_next(1, Some(std::time::Duration::from_millis(100)));
//! // ... run the code under test ...
//! assert_eq!(server.hits(Route::Embeddings), 2);
//! ```
//!
//! Order of checks, as the real service does it: the route, then the key, then the body and its
//! fields, then the model; only a request that passed all of them meets the knobs (injected
//! failures, rate limits, the hang, the latency). Messages follow OpenAI's texts where they are
//! known; where OpenAI's exact wording is not documented (a chat model sent to `/v1/embeddings`)
//! the text is ours, in OpenAI's envelope.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::request_log::RequestLog;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

pub use crate::ollama::describe_image;

/// The organisation named in rate-limit messages.
pub const ORGANIZATION: &str = "org-standin";
/// The `system_fingerprint` of every chat answer.
pub const FINGERPRINT: &str = "fp_standin01";
/// Prompt tokens one image costs (OpenAI's figure for a low-detail image).
pub const IMAGE_TOKENS: usize = 85;
/// Most inputs in one `/v1/embeddings` request.
pub const MAX_EMBED_INPUTS: usize = 2048;
/// The 401 text when no key was sent.
pub const NO_KEY: &str = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.";
/// The 400 text for an image sent to a model without vision.
pub const NO_VISION: &str = "Invalid content type. image_url is only supported by certain models.";
/// The 400 text for a body that is not JSON.
pub const BAD_JSON: &str = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";
/// The 400 text for an `input` that is empty, of the wrong type, or too long a list.
pub const BAD_INPUT: &str =
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.";
/// The 429 text of a spent quota.
pub const QUOTA: &str = "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.";
/// The 500 text of [`Failure::Server`].
pub const SERVER_ERROR: &str =
    "The server had an error while processing your request. Sorry about that!";
/// The 503 text of [`Failure::Overloaded`].
pub const OVERLOADED: &str = "The engine is currently overloaded, please try again later.";

/// What a model does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `/v1/chat/completions`.
    Chat {
        /// Accepts `image_url` parts.
        vision: bool,
        /// A reasoning model: refuses `max_tokens` (wants `max_completion_tokens`) and any
        /// `temperature` but 1, as OpenAI's o-series and gpt-5 models do.
        reasoning: bool,
    },
    /// `/v1/embeddings`.
    Embedding {
        /// Native vector length.
        dims: usize,
        /// Accepts `dimensions` (the `text-embedding-3-*` models).
        flexible: bool,
        /// Longest input, in tokens (this stand-in counts words).
        context: usize,
    },
}

/// One model the stand-in serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// The id clients name it by.
    pub id: String,
    /// What it does.
    pub kind: ModelKind,
    /// `owned_by` in `/v1/models`.
    pub owned_by: String,
}

impl ModelSpec {
    /// A text-only chat model.
    pub fn chat(id: &str) -> Self {
        ModelSpec {
            id: id.into(),
            kind: ModelKind::Chat {
                vision: false,
                reasoning: false,
            },
            owned_by: "openai".into(),
        }
    }

    /// A chat model that sees images.
    pub fn vision(id: &str) -> Self {
        ModelSpec {
            id: id.into(),
            kind: ModelKind::Chat {
                vision: true,
                reasoning: false,
            },
            owned_by: "system".into(),
        }
    }

    /// A reasoning model that sees images.
    pub fn reasoning(id: &str) -> Self {
        ModelSpec {
            id: id.into(),
            kind: ModelKind::Chat {
                vision: true,
                reasoning: true,
            },
            owned_by: "system".into(),
        }
    }

    /// An embedding model of `dims` dimensions that accepts `dimensions`, context 8192 tokens.
    pub fn embedding(id: &str, dims: usize) -> Self {
        ModelSpec {
            id: id.into(),
            kind: ModelKind::Embedding {
                dims,
                flexible: true,
                context: 8192,
            },
            owned_by: "system".into(),
        }
    }

    /// An embedding model that refuses `dimensions` (like `text-embedding-ada-002`).
    pub fn fixed_embedding(id: &str, dims: usize) -> Self {
        let mut m = Self::embedding(id, dims);
        m.kind = ModelKind::Embedding {
            dims,
            flexible: false,
            context: 8192,
        };
        m.owned_by = "openai-internal".into();
        m
    }

    /// Set the context length of an embedding model.
    pub fn with_context(mut self, tokens: usize) -> Self {
        if let ModelKind::Embedding { context, .. } = &mut self.kind {
            *context = tokens;
        }
        self
    }
}

/// OpenAI's own models: `gpt-4o-mini` and `gpt-4o` see images, `gpt-3.5-turbo` does not,
/// `o4-mini` is a reasoning model; `text-embedding-3-small` (1536) and `-large` (3072) accept
/// `dimensions`, `text-embedding-ada-002` (1536) does not.
pub fn default_models() -> Vec<ModelSpec> {
    vec![
        ModelSpec::vision("gpt-4o-mini"),
        ModelSpec::vision("gpt-4o"),
        ModelSpec::chat("gpt-3.5-turbo"),
        ModelSpec::reasoning("o4-mini"),
        ModelSpec::embedding("text-embedding-3-small", 1536),
        ModelSpec::embedding("text-embedding-3-large", 3072),
        ModelSpec::fixed_embedding("text-embedding-ada-002", 1536),
    ]
}

/// What a request made to fail by [`OpenAiStandIn::fail_next`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 500 `server_error` with [`SERVER_ERROR`].
    Server,
    /// 503 with [`OVERLOADED`], and a `Retry-After` when given.
    Overloaded(Option<Duration>),
    /// Any status with an OpenAI error object of this message, type and code.
    Status {
        /// The status code.
        status: u16,
        /// `error.message`.
        message: String,
        /// `error.type`.
        kind: String,
        /// `error.code`.
        code: Option<String>,
    },
}

/// The routes, for [`OpenAiStandIn::hits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`.
    Model,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

/// One request as the stand-in received it.
pub type Recorded = crate::request_log::Recorded<Route>;

/// Settings fixed at start; everything else is a knob on [`OpenAiStandIn`].
#[derive(Clone, Debug)]
pub struct OpenAiStandInBuilder {
    api_key: Option<String>,
    models: Vec<ModelSpec>,
}

impl Default for OpenAiStandInBuilder {
    fn default() -> Self {
        OpenAiStandInBuilder {
            api_key: None,
            models: default_models(),
        }
    }
}

impl OpenAiStandInBuilder {
    /// Require `Authorization: Bearer <key>` on every `/v1` route (default: no key, as local
    /// servers run).
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Replace the model set.
    pub fn models(mut self, models: Vec<ModelSpec>) -> Self {
        self.models = models;
        self
    }

    /// Add a model (replacing one of the same id).
    pub fn model(mut self, model: ModelSpec) -> Self {
        self.models.retain(|m| m.id != model.id);
        self.models.push(model);
        self
    }

    /// Bind 127.0.0.1 on a free port and serve from a thread of its own.
    ///
    /// Panics if the socket or the runtime cannot be made: this is test setup.
    pub fn start(self) -> OpenAiStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        // Its own runtime on its own thread, so that it serves the same from a plain #[test],
        // from either flavour of #[tokio::test], and to child processes.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("openai-stand-in")
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (hang, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            api_key: Mutex::new(self.api_key),
            models: RwLock::new(self.models),
            knobs: Mutex::default(),
            hang,
            log: RequestLog::new(count_images),
            ids: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
        });
        let router = Router::new()
            .fallback(
                |State(s): State<Arc<Shared>>,
                 method: Method,
                 uri: Uri,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    dispatch(s, method, uri, headers, body).await
                },
            )
            // Images arrive base64-encoded inside the JSON: bodies of many megabytes are normal.
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("openai-stand-in".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let serve = std::future::IntoFuture::into_future(axum::serve(listener, router));
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every task, hung requests included.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn the stand-in's thread");
        OpenAiStandIn {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A running OpenAI stand-in. Dropping it stops the server, hung requests included.
pub struct OpenAiStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for OpenAiStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiStandIn")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for OpenAiStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl OpenAiStandIn {
    /// Start with the defaults: [`default_models`], no key.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Configure before starting.
    pub fn builder() -> OpenAiStandInBuilder {
        OpenAiStandInBuilder::default()
    }

    /// `http://127.0.0.1:PORT/v1`: the base URL clients take.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`: the origin to grant.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Change the key required (`None`: no key needed).
    pub fn set_api_key(&self, key: Option<&str>) {
        *lock(&self.shared.api_key) = key.map(str::to_string);
    }

    /// Add a model, or replace the one of the same id.
    pub fn add_model(&self, model: ModelSpec) {
        let mut models = write(&self.shared.models);
        models.retain(|m| m.id != model.id);
        models.push(model);
    }

    /// Remove a model; whether it was there.
    pub fn remove_model(&self, id: &str) -> bool {
        let mut models = write(&self.shared.models);
        let before = models.len();
        models.retain(|m| m.id != id);
        models.len() != before
    }

    /// Wait this long before answering each model request.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.knobs).latency = latency;
    }

    /// Hang: model requests are accepted and not answered until this is turned off (they then
    /// go on) or the stand-in is dropped (their connections then close unanswered).
    pub fn set_hang(&self, hang: bool) {
        self.shared.hang.send_replace(hang);
    }

    /// Fail exactly the next `n` model requests that pass validation, with `failure`.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut k = lock(&self.shared.knobs);
        k.fail_next = n;
        k.failure = failure;
    }

    /// Refuse the next `n` model requests with 429 `rate_limit_exceeded`; with `retry_after`, the
    /// answer carries `retry-after` (whole seconds, rounded up) and `retry-after-ms`, as OpenAI's
    /// does and as the official clients read it.
    pub fn rate_limit_next(&self, n: usize, retry_after: Option<Duration>) {
        let mut k = lock(&self.shared.knobs);
        k.rate_limit_next = n;
        k.retry_after = retry_after;
    }

    /// Refuse every model request with 429 `insufficient_quota` (a spent quota) while on.
    pub fn set_insufficient_quota(&self, on: bool) {
        lock(&self.shared.knobs).insufficient_quota = on;
    }

    /// Answer `/v1/embeddings` with `data` in reverse order (each item keeps its `index`): the
    /// API does not promise the order, and some servers do not keep it.
    pub fn set_shuffle_embeddings(&self, on: bool) {
        lock(&self.shared.knobs).shuffle = on;
    }

    /// Streamed answers stop after the first piece of text, without a finish reason or
    /// `[DONE]`, as when a server dies mid-answer.
    pub fn set_cut_streams(&self, on: bool) {
        lock(&self.shared.knobs).cut_streams = on;
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

    /// Chat requests that carried at least one image.
    pub fn vision_calls(&self) -> usize {
        self.shared
            .log
            .count(|r| r.route == Some(Route::ChatCompletions) && r.images > 0)
    }

    /// Model requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Clear the request log and the counters.
    pub fn reset_log(&self) {
        self.shared.log.clear();
    }

    /// The vector `/v1/embeddings` answers for `text` on `model` with `dimensions`, or `None` for
    /// a model that is not there or does not embed.
    pub fn expected_embedding(
        &self,
        model: &str,
        text: &str,
        dimensions: Option<usize>,
    ) -> Option<Vec<f32>> {
        let spec = self.shared.model(model)?;
        let ModelKind::Embedding { dims, .. } = spec.kind else {
            return None;
        };
        Some(embed_text(&spec.id, dims, text, dimensions))
    }

    /// The text `/v1/chat/completions` answers for one image and prompt (before `max_tokens`).
    pub fn expected_description(image: &[u8], prompt: &str) -> Option<String> {
        describe_image(image).map(|d| compose(&[d], prompt))
    }
}

// ---------------------------------------------------------------------------------------------
// State

#[derive(Debug)]
struct Knobs {
    latency: Duration,
    fail_next: usize,
    failure: Failure,
    rate_limit_next: usize,
    retry_after: Option<Duration>,
    insufficient_quota: bool,
    shuffle: bool,
    cut_streams: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency: Duration::ZERO,
            fail_next: 0,
            failure: Failure::Server,
            rate_limit_next: 0,
            retry_after: None,
            insufficient_quota: false,
            shuffle: false,
            cut_streams: false,
        }
    }
}

struct Shared {
    api_key: Mutex<Option<String>>,
    models: RwLock<Vec<ModelSpec>>,
    knobs: Mutex<Knobs>,
    hang: watch::Sender<bool>,
    log: RequestLog<Route>,
    ids: AtomicU64,
    in_flight: AtomicUsize,
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

/// A model request past the knobs; counts as in flight until dropped.
struct Ticket(Arc<Shared>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn model(&self, id: &str) -> Option<ModelSpec> {
        read(&self.models).iter().find(|m| m.id == id).cloned()
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::SeqCst);
        let digest = Sha256::digest(n.to_le_bytes());
        let tail: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("{prefix}{tail}")
    }

    /// Where a validated request meets the knobs: injected failures, rate limits, the hang,
    /// the latency.
    async fn schedule(self: &Arc<Self>, model: &str) -> Result<Ticket, Response> {
        let latency = {
            let mut k = lock(&self.knobs);
            if k.insufficient_quota {
                return Err(error_resp(
                    429,
                    QUOTA,
                    "insufficient_quota",
                    None,
                    Some("insufficient_quota"),
                ));
            }
            if k.rate_limit_next > 0 {
                k.rate_limit_next -= 1;
                let wait = k.retry_after.unwrap_or(Duration::from_secs(20));
                let message = format!(
                    "Rate limit reached for {model} in organization {ORGANIZATION} on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in {}ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
                    wait.as_millis()
                );
                let mut r =
                    error_resp(429, &message, "requests", None, Some("rate_limit_exceeded"));
                set_header(&mut r, "x-ratelimit-limit-requests", "3".into());
                set_header(&mut r, "x-ratelimit-remaining-requests", "0".into());
                set_header(
                    &mut r,
                    "x-ratelimit-reset-requests",
                    format!("{}ms", wait.as_millis()),
                );
                if let Some(after) = k.retry_after {
                    set_retry_after(&mut r, after);
                }
                return Err(r);
            }
            if k.fail_next > 0 {
                k.fail_next -= 1;
                return Err(failure_resp(&k.failure));
            }
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            k.latency
        };
        let ticket = Ticket(self.clone());
        let mut hang = self.hang.subscribe();
        let _ = hang.wait_for(|h| !*h).await;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(ticket)
    }
}

fn count_images(body: &Value) -> usize {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .count()
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn set_header(r: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

fn set_retry_after(r: &mut Response, after: Duration) {
    let ms = after.as_millis().max(1);
    set_header(r, "retry-after", ms.div_ceil(1000).to_string());
    set_header(r, "retry-after-ms", ms.to_string());
}

fn json_resp(status: u16, value: &Value) -> Response {
    // Serialising a Value cannot fail: its map keys are strings.
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// OpenAI's error object.
fn error_resp(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_resp(
        status,
        &json!({ "error": { "message": message, "type": kind, "param": param, "code": code } }),
    )
}

fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    error_resp(400, message, "invalid_request_error", param, code)
}

fn failure_resp(f: &Failure) -> Response {
    match f {
        Failure::Server => error_resp(500, SERVER_ERROR, "server_error", None, None),
        Failure::Overloaded(after) => {
            let mut r = error_resp(503, OVERLOADED, "server_error", None, None);
            if let Some(a) = after {
                set_retry_after(&mut r, *a);
            }
            r
        }
        Failure::Status {
            status,
            message,
            kind,
            code,
        } => error_resp(*status, message, kind, None, code.as_deref()),
    }
}

fn model_not_found(model: &str) -> Response {
    error_resp(
        404,
        &format!("The model `{model}` does not exist or you do not have access to it."),
        "invalid_request_error",
        None,
        Some("model_not_found"),
    )
}

/// `sk-abc***...wxyz` as OpenAI echoes a wrong key: enough to recognise it, not to use it.
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// A refusal: boxed, since a response is large and the happy path should not carry its size.
fn refuse<T>(r: Response) -> Result<T, Box<Response>> {
    Err(Box::new(r))
}

fn check_key(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(expected) = lock(&shared.api_key).clone() else {
        return Ok(());
    };
    let sent = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match sent {
        None => refuse(error_resp(401, NO_KEY, "invalid_request_error", None, None)),
        Some(k) if k == expected => Ok(()),
        Some(k) => refuse(error_resp(
            401,
            &format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                redact(k)
            ),
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )),
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let route = match path.as_str() {
        "/v1/models" => Some((Route::Models, Method::GET)),
        "/v1/chat/completions" => Some((Route::ChatCompletions, Method::POST)),
        "/v1/embeddings" => Some((Route::Embeddings, Method::POST)),
        p if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            Some((Route::Model, Method::GET))
        }
        _ => None,
    };
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let index = shared.log.record(
        route.as_ref().map(|r| r.0),
        &method,
        &uri,
        &headers,
        &body,
        parsed.clone(),
    );
    let response = match &route {
        None => invalid_url(404, "Invalid URL", &method, &path),
        Some((_, expected)) if method != *expected => {
            invalid_url(405, "Invalid method for URL", &method, &path)
        }
        Some((route, _)) => match check_key(&shared, &headers) {
            Err(r) => *r,
            Ok(()) => match route {
                Route::Models => list_models(&shared),
                Route::Model => get_model(&shared, &path["/v1/models/".len()..]),
                Route::ChatCompletions => chat(&shared, parsed).await,
                Route::Embeddings => embeddings(&shared, parsed).await,
            },
        },
    };
    shared.log.set_status(index, response.status());
    let mut response = response;
    set_header(&mut response, "x-request-id", shared.next_id("req_"));
    response
}

fn invalid_url(status: u16, what: &str, method: &Method, path: &str) -> Response {
    error_resp(
        status,
        &format!("{what} ({method} {path})"),
        "invalid_request_error",
        None,
        None,
    )
}

const CREATED: u64 = 1_715_367_049;

fn model_object(m: &ModelSpec) -> Value {
    json!({ "id": m.id, "object": "model", "created": CREATED, "owned_by": m.owned_by })
}

fn list_models(shared: &Shared) -> Response {
    let data: Vec<Value> = read(&shared.models).iter().map(model_object).collect();
    json_resp(200, &json!({ "object": "list", "data": data }))
}

fn get_model(shared: &Shared, id: &str) -> Response {
    match shared.model(id) {
        Some(m) => json_resp(200, &model_object(&m)),
        None => error_resp(
            404,
            &format!("The model '{id}' does not exist"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

// ---------------------------------------------------------------------------------------------
// Chat completions

/// The text part of a user message and its decoded images, or the 400 for a malformed part.
fn read_content(messages: &[Value], vision: bool) -> Result<(String, Vec<Vec<u8>>), Box<Response>> {
    let mut prompt = String::new();
    let mut images = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(role) = m.get("role").and_then(Value::as_str) else {
            return refuse(invalid(
                &format!("Missing required parameter: 'messages[{i}].role'."),
                Some(&format!("messages[{i}].role")),
                Some("missing_required_parameter"),
            ));
        };
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return refuse(invalid(
                &format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
                Some(&format!("messages[{i}].role")),
                Some("invalid_value"),
            ));
        }
        match m.get("content") {
            Some(Value::String(s)) => {
                if role == "user" {
                    prompt = s.clone();
                }
            }
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let at = format!("messages[{i}].content[{j}]");
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => match p.get("text").and_then(Value::as_str) {
                            Some(t) => text.push_str(t),
                            None => {
                                return refuse(invalid(
                                    &format!("Missing required parameter: '{at}.text'."),
                                    Some(&format!("{at}.text")),
                                    Some("missing_required_parameter"),
                                ))
                            }
                        },
                        Some("image_url") => {
                            if !vision || role != "user" {
                                return refuse(invalid(
                                    NO_VISION,
                                    Some(&format!("messages.[{i}].content.[{j}].type")),
                                    None,
                                ));
                            }
                            let Some(url) = p.pointer("/image_url/url").and_then(Value::as_str)
                            else {
                                return refuse(invalid(
                                    &format!("Missing required parameter: '{at}.image_url.url'."),
                                    Some(&format!("{at}.image_url.url")),
                                    Some("missing_required_parameter"),
                                ));
                            };
                            if let Some(d) = p.pointer("/image_url/detail") {
                                if !matches!(d.as_str(), Some("low" | "high" | "auto")) {
                                    return refuse(invalid(
                                        &format!("Invalid value: {d}. Supported values are: 'low', 'high', and 'auto'."),
                                        Some(&format!("{at}.image_url.detail")),
                                        Some("invalid_value"),
                                    ));
                                }
                            }
                            images.push(decode_image_url(url)?);
                        }
                        other => {
                            let shown = other
                                .map(|t| format!("'{t}'"))
                                .unwrap_or_else(|| "null".into());
                            return refuse(invalid(
                                &format!("Invalid value: {shown}. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', 'audio', and 'file'."),
                                Some(&format!("{at}.type")),
                                Some("invalid_value"),
                            ));
                        }
                    }
                }
                if role == "user" {
                    prompt = text;
                }
            }
            _ => {
                return refuse(invalid(
                    &format!("Missing required parameter: 'messages[{i}].content'."),
                    Some(&format!("messages[{i}].content")),
                    Some("missing_required_parameter"),
                ));
            }
        }
    }
    Ok((prompt, images))
}

/// The bytes of a `data:image/...;base64,` URL; a remote URL is refused (the stand-in has no
/// network), as OpenAI refuses one it cannot download.
fn decode_image_url(url: &str) -> Result<Vec<u8>, Box<Response>> {
    let unsupported = || {
        invalid(
            "You uploaded an unsupported image. Please make sure your image has of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
            None,
            Some("invalid_image_format"),
        )
    };
    let Some(rest) = url.strip_prefix("data:") else {
        return refuse(invalid(
            &format!("Error while downloading {url}."),
            None,
            Some("invalid_image_url"),
        ));
    };
    let Some((mime, data)) = rest.split_once(";base64,") else {
        return refuse(invalid("Invalid image URL. The URL must be a valid HTTP or HTTPS URL, or a data URL with base64 encoding.", None, Some("invalid_image_url")));
    };
    if !matches!(
        mime,
        "image/png" | "image/jpeg" | "image/jpg" | "image/gif" | "image/webp"
    ) {
        return refuse(unsupported());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .or_else(|_| {
            refuse(invalid(
                "Invalid base64 image_url.",
                None,
                Some("invalid_image_url"),
            ))
        })?;
    if describe_image(&bytes).is_none() {
        return refuse(unsupported());
    }
    Ok(bytes)
}

fn compose(descriptions: &[String], prompt: &str) -> String {
    let mut text = match descriptions {
        [] => "No image was provided.".to_string(),
        [one] => one.clone(),
        many => many
            .iter()
            .enumerate()
            .map(|(i, d)| format!("Image {}: {d}", i + 1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let echo: Vec<&str> = prompt.split_whitespace().take(8).collect();
    if !echo.is_empty() {
        text.push_str(&format!(" Prompt: \"{}\".", echo.join(" ")));
    }
    text
}

async fn chat(shared: &Arc<Shared>, parsed: Option<Value>) -> Response {
    let Some(v) = parsed.filter(Value::is_object) else {
        return invalid(BAD_JSON, None, None);
    };
    let Some(model) = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return invalid("you must provide a model parameter", None, None);
    };
    let messages = match v.get("messages") {
        None | Some(Value::Null) => return invalid("Missing required parameter: 'messages'.", Some("messages"), Some("missing_required_parameter")),
        Some(Value::Array(m)) if m.is_empty() => {
            return invalid("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", Some("messages"), Some("empty_array"))
        }
        Some(Value::Array(m)) => m.clone(),
        Some(_) => return invalid("Invalid type for 'messages': expected an array of objects.", Some("messages"), Some("invalid_type")),
    };
    let number = |key: &str| v.get(key).filter(|x| !x.is_null());
    for key in ["max_tokens", "max_completion_tokens", "n", "seed"] {
        if let Some(x) = number(key) {
            if !x.is_i64() {
                return invalid(
                    &format!(
                        "Invalid type for '{key}': expected an integer, but got {} instead.",
                        type_name(x)
                    ),
                    Some(key),
                    Some("invalid_type"),
                );
            }
        }
    }
    if let Some(t) = number("temperature") {
        match t.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => {}
            Some(t) => return invalid(&format!("Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t} instead."), Some("temperature"), Some("decimal_above_max_value")),
            None => return invalid(&format!("Invalid type for 'temperature': expected a decimal, but got {} instead.", type_name(t)), Some("temperature"), Some("invalid_type")),
        }
    }
    let Some(spec) = shared.model(model) else {
        return model_not_found(model);
    };
    let ModelKind::Chat { vision, reasoning } = spec.kind else {
        return error_resp(
            404,
            "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?",
            "invalid_request_error",
            Some("model"),
            None,
        );
    };
    if reasoning {
        if number("max_tokens").is_some() {
            return invalid("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", Some("max_tokens"), Some("unsupported_parameter"));
        }
        if let Some(t) = number("temperature")
            .and_then(Value::as_f64)
            .filter(|t| *t != 1.0)
        {
            return invalid(
                &format!("Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."),
                Some("temperature"),
                Some("unsupported_value"),
            );
        }
    }
    let (prompt, images) = match read_content(&messages, vision) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let limit = number("max_completion_tokens")
        .or(number("max_tokens"))
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .map(|n| n as usize);
    let n = number("n").and_then(Value::as_i64).unwrap_or(1).max(1) as usize;
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ticket = match shared.schedule(model).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Decoding a large image takes a while: keep it off the threads that serve other requests.
    let descriptions = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .filter_map(|i| describe_image(i))
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(descriptions) = descriptions else {
        return error_resp(500, SERVER_ERROR, "server_error", None, None);
    };
    let text = compose(&descriptions, &prompt);
    let mut pieces: Vec<&str> = text.split_inclusive(' ').collect();
    let mut finish = "stop";
    if let Some(limit) = limit {
        if pieces.len() > limit {
            pieces.truncate(limit);
            finish = "length";
        }
    }
    let usage = json!({
        "prompt_tokens": words(&prompt) + IMAGE_TOKENS * descriptions.len(),
        "completion_tokens": pieces.len() * n,
        "total_tokens": words(&prompt) + IMAGE_TOKENS * descriptions.len() + pieces.len() * n,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": { "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 },
    });
    let id = shared.next_id("chatcmpl-");
    let created = now_secs();
    if !stream {
        let content: String = pieces.concat();
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({
                "index": i,
                "message": { "role": "assistant", "content": content, "refusal": null, "annotations": [] },
                "logprobs": null,
                "finish_reason": finish,
            }))
            .collect();
        return json_resp(
            200,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": choices, "usage": usage, "service_tier": "default", "system_fingerprint": FINGERPRINT,
            }),
        );
    }
    let cut = lock(&shared.knobs).cut_streams;
    let chunk = |choices: Value, usage_field: Option<Value>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": FINGERPRINT, "choices": choices,
        });
        if include_usage {
            c["usage"] = usage_field.unwrap_or(Value::Null);
        }
        format!("data: {}\n\n", c)
    };
    let mut events = Vec::new();
    for i in 0..n {
        events.push(chunk(json!([{ "index": i, "delta": { "role": "assistant", "content": "", "refusal": null }, "logprobs": null, "finish_reason": null }]), None));
    }
    for p in &pieces {
        for i in 0..n {
            events.push(chunk(json!([{ "index": i, "delta": { "content": p }, "logprobs": null, "finish_reason": null }]), None));
        }
        if cut {
            break;
        }
    }
    if !cut {
        for i in 0..n {
            events.push(chunk(
                json!([{ "index": i, "delta": {}, "logprobs": null, "finish_reason": finish }]),
                None,
            ));
        }
        if include_usage {
            events.push(chunk(json!([]), Some(usage)));
        }
        events.push("data: [DONE]\n\n".to_string());
    }
    let stream = futures::stream::iter(events.into_iter().map(move |e| {
        // The request stays in flight until its last event is sent.
        let _in_flight = &ticket;
        Ok::<_, std::convert::Infallible>(Bytes::from(e))
    }));
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// The inputs as texts (token-id lists become their ids as words); `None` when `input` is not a
/// string, a list of strings, a list of token ids or a list of such lists, or is empty.
fn embed_inputs(v: &Value) -> Option<Vec<String>> {
    let tokens = |items: &[Value]| -> Option<String> {
        let ids: Option<Vec<String>> = items
            .iter()
            .map(|t| t.as_u64().map(|n| n.to_string()))
            .collect();
        ids.map(|ids| ids.join(" ")).filter(|s| !s.is_empty())
    };
    let inputs = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_u64) => vec![tokens(items)?],
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Array(t) => tokens(t),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let ok = !inputs.is_empty()
        && inputs.len() <= MAX_EMBED_INPUTS
        && inputs.iter().all(|s| !s.is_empty());
    ok.then_some(inputs)
}

async fn embeddings(shared: &Arc<Shared>, parsed: Option<Value>) -> Response {
    let Some(v) = parsed.filter(Value::is_object) else {
        return invalid(BAD_JSON, None, None);
    };
    let Some(model) = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return invalid("you must provide a model parameter", None, None);
    };
    let Some(input) = v.get("input").filter(|i| !i.is_null()) else {
        return invalid(
            "Missing required parameter: 'input'.",
            Some("input"),
            Some("missing_required_parameter"),
        );
    };
    let Some(inputs) = embed_inputs(input) else {
        return invalid(BAD_INPUT, None, None);
    };
    let base64 = match v.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return invalid(
                &format!("Invalid value: {other}. Supported values are: 'float' and 'base64'."),
                Some("encoding_format"),
                Some("invalid_value"),
            )
        }
    };
    let Some(spec) = shared.model(model) else {
        return model_not_found(model);
    };
    let ModelKind::Embedding {
        dims,
        flexible,
        context,
    } = spec.kind
    else {
        // OpenAI's own wording for this case is not documented; the envelope is.
        return invalid(
            &format!("The model `{model}` does not support embeddings."),
            Some("model"),
            None,
        );
    };
    let dimensions = match v.get("dimensions").filter(|d| !d.is_null()) {
        None => None,
        Some(_) if !flexible => return invalid("This model does not support specifying dimensions.", None, None),
        Some(d) => match d.as_i64() {
            Some(d) if d < 1 => return invalid(&format!("Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got {d} instead."), Some("dimensions"), Some("integer_below_min_value")),
            Some(d) if d as usize > dims => return invalid(&format!("Invalid 'dimensions': integer above maximum value. Expected a value <= {dims}, but got {d} instead."), Some("dimensions"), Some("integer_above_max_value")),
            Some(d) => Some(d as usize),
            None => return invalid(&format!("Invalid type for 'dimensions': expected an integer, but got {} instead.", type_name(d)), Some("dimensions"), Some("invalid_type")),
        },
    };
    if let Some(long) = inputs.iter().map(|t| words(t)).find(|n| *n > context) {
        return invalid(
            &format!("This model's maximum context length is {context} tokens, however you requested {long} tokens ({long} in your prompt; 0 for the completion). Please reduce your prompt; or completion length."),
            None,
            None,
        );
    }
    let _ticket = match shared.schedule(model).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let tokens: usize = inputs.iter().map(|t| words(t).max(1)).sum();
    let mut data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let e = embed_text(&spec.id, dims, text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    if lock(&shared.knobs).shuffle {
        data.reverse();
    }
    json_resp(
        200,
        &json!({
            "object": "list", "data": data, "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }),
    )
}

/// A feature hash of the words: each word adds ±1 at one place and ±0.5 at another, seeded by
/// the model so that models have different spaces; a shared direction keeps a wordless text from
/// being the zero vector. `dimensions` keeps the first components and renormalises, as the
/// Matryoshka-trained `text-embedding-3-*` models do.
fn embed_text(model: &str, dims: usize, text: &str, dimensions: Option<usize>) -> Vec<f32> {
    let mut v = vec![0f32; dims.max(1)];
    let n = v.len() as u64;
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = mix(fnv(&[model.as_bytes(), word.to_lowercase().as_bytes()]));
        v[(h % n) as usize] += if h >> 63 == 1 { -1.0 } else { 1.0 };
        let h2 = mix(h ^ 0x2545_f491_4f6c_dd1d);
        v[(h2 % n) as usize] += if h2 >> 63 == 1 { -0.5 } else { 0.5 };
    }
    v[(mix(fnv(&[model.as_bytes(), b"\0shared"])) % n) as usize] += 0.5;
    if let Some(d) = dimensions.filter(|d| *d < v.len()) {
        v.truncate(d);
        if v.iter().all(|x| *x == 0.0) {
            v[0] = 1.0;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_as_openai_does() {
        assert_eq!(redact("sk-test-wrong-key"), "sk-**********-key");
        assert_eq!(redact("short"), "*****");
    }

    #[test]
    fn embeddings_share_words_and_shorten_by_dimensions() {
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let a = embed_text("m", 1536, "a red bicycle leaning on a wall", None);
        let b = embed_text("m", 1536, "a red bicycle in the street", None);
        let c = embed_text("m", 1536, "quarterly tax report spreadsheet", None);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        assert!(dot(&a, &b) > dot(&a, &c) + 0.2);
        let short = embed_text("m", 1536, "a red bicycle leaning on a wall", Some(256));
        assert_eq!(short.len(), 256);
        assert!((dot(&short, &short) - 1.0).abs() < 1e-5);
        assert_ne!(
            embed_text("other", 1536, "a red bicycle", None),
            embed_text("m", 1536, "a red bicycle", None)
        );
    }

    #[test]
    fn inputs_take_every_documented_shape() {
        assert_eq!(embed_inputs(&json!("hi")), Some(vec!["hi".to_string()]));
        assert_eq!(embed_inputs(&json!(["a", "b"])).map(|v| v.len()), Some(2));
        assert_eq!(
            embed_inputs(&json!([1, 2, 3])),
            Some(vec!["1 2 3".to_string()])
        );
        assert_eq!(
            embed_inputs(&json!([[1, 2], [3]])).map(|v| v.len()),
            Some(2)
        );
        assert_eq!(embed_inputs(&json!("")), None);
        assert_eq!(embed_inputs(&json!([])), None);
        assert_eq!(embed_inputs(&json!(["a", 1.5])), None);
        assert_eq!(embed_inputs(&json!({ "a": 1 })), None);
    }
}
