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

mod chat;
mod embeddings;
mod http;
mod state;
#[cfg(test)]
mod tests;

use chat::*;
use embeddings::*;
use http::*;
use state::*;
