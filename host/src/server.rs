//! `imbed serve`: the library behind HTTP, speaking APIs that existing clients already use.
//!
//! - OpenAI-compatible `POST /v1/embeddings` (texts, and images as `{"image": url-or-base64}`
//!   items; `encoding_format` float or base64), errors as OpenAI error objects;
//! - Ollama-compatible `POST /api/embed`, `GET /api/tags`, `GET /api/version`, errors as
//!   `{"error": "..."}`;
//! - native `POST /embed/image` (JSON or multipart), `/embed/text`, `/embed/batch`, `/describe`;
//! - `GET /health` (which chain steps can answer) and `GET /metrics` (Prometheus text).
//!
//! Every request runs under a deadline and a bound on requests in flight; image URLs are fetched
//! through the [`UrlGuard`](crate::input::UrlGuard), so callers cannot make the server reach
//! loopback, private or metadata addresses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::chain::{ImageRequest, Imbed, StepCheck};
use crate::config::ServerSettings;
use crate::error::Error;
use crate::input::{ImageSource, InputError};
use crate::types::{Attempt, Embedding};

/// Shared state of the service.
#[derive(Clone)]
pub struct AppState {
    current: Arc<std::sync::RwLock<Imbed>>,
    options: crate::chain::Options,
    reload: Arc<Mutex<ReloadStatus>>,
    settings: Arc<ServerSettings>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    health: Arc<tokio::sync::Mutex<Option<HealthSnapshot>>>,
}

/// The last step probe and when it ran.
type HealthSnapshot = (Instant, Vec<StepCheck>);

/// What the last hot reload did, for `/health`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Reloads applied since start.
    pub reloads: u64,
    /// Why the last attempt was refused, when it was (the previous config stays in use).
    pub last_error: Option<String>,
}

impl AppState {
    /// State for an [`Imbed`] (see [`AppState::build`] for one with the settings' URL guard).
    pub fn new(imbed: Imbed, settings: ServerSettings) -> Self {
        let mut options = crate::chain::Options::default().url_guard(settings.url_allow.clone());
        // Reloads keep using the same cache.
        options.store = imbed.store().cloned();
        AppState {
            current: Arc::new(std::sync::RwLock::new(imbed)),
            options,
            reload: Arc::default(),
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings: Arc::new(settings),
            metrics: Arc::default(),
            health: Arc::default(),
        }
    }

    /// Load the plugins of `config` with image URLs guarded, and wrap them for serving.
    pub async fn build(config: crate::config::Config) -> crate::Result<Self> {
        AppState::build_with_store(config, None).await
    }

    /// [`AppState::build`] with the persistent cache: repeated images and texts are answered
    /// from it, and every image embedded is recorded for `imbed search`.
    pub async fn build_with_store(
        config: crate::config::Config,
        store: Option<crate::store::Store>,
    ) -> crate::Result<Self> {
        let settings = config.server.clone();
        let mut options = crate::chain::Options::default().url_guard(settings.url_allow.clone());
        options.store = store;
        let imbed = Imbed::with_options(config, options).await?;
        Ok(AppState::new(imbed, settings))
    }

    /// The runtime in use now. A request keeps the one it started with, so a reload never
    /// changes the plugins under a request in flight.
    pub fn imbed(&self) -> Imbed {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the last reload did.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Load `path` again and switch to it, unless it is invalid or a plugin that loads now
    /// would no longer load: then the running config stays and the reason is kept for /health.
    /// `[server]` settings (address, keys, limits) need a restart.
    pub async fn reload(
        &self,
        path: &std::path::Path,
        env: &crate::config::Env,
    ) -> Result<(), String> {
        let outcome = async {
            let config = crate::config::Config::load(path, env).map_err(|e| e.to_string())?;
            let next = Imbed::with_options(config, self.options.clone())
                .await
                .map_err(|e| e.to_string())?;
            let before = self.imbed().plugins();
            for p in next.plugins() {
                let was_ready = before.iter().any(|b| {
                    b.key == p.key && matches!(b.health, crate::chain::PluginHealth::Ready { .. })
                });
                if let (true, crate::chain::PluginHealth::Failed { message, .. }) =
                    (was_ready, &p.health)
                {
                    return Err(format!(
                        "plugin {:?} would no longer load: {message}",
                        p.key
                    ));
                }
            }
            Ok(next)
        }
        .await;
        let result = {
            let mut status = self.reload.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(next) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
                    status.reloads += 1;
                    status.last_error = None;
                    tracing::info!(target: "imbed::serve", "reloaded {}", path.display());
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(target: "imbed::serve", "kept the running config; {} was refused: {e}", path.display());
                    status.last_error = Some(e.clone());
                    Err(e)
                }
            }
        };
        if result.is_ok() {
            // The chain changed: the cached step probe no longer describes it.
            *self.health.lock().await = None;
        }
        result
    }

    /// Watch the config file and the plugin files it names; reload when any of them changes.
    /// Runs until the returned task is aborted.
    pub fn watch(
        &self,
        path: std::path::PathBuf,
        env: crate::config::Env,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut seen = state.fingerprint(&path);
            loop {
                tokio::time::sleep(every).await;
                let now = state.fingerprint(&path);
                if now != seen {
                    let _ = state.reload(&path, &env).await;
                    // Whatever the outcome, this version of the files has been looked at: a
                    // refused config is not retried until it changes again. The file list is
                    // taken again because a reload may name other plugins.
                    seen = state.fingerprint(&path);
                }
            }
        })
    }

    /// Size and modification time of the config file and of every plugin file in use.
    fn fingerprint(
        &self,
        path: &std::path::Path,
    ) -> Vec<(std::path::PathBuf, Option<(u64, std::time::SystemTime)>)> {
        let stat = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        };
        let mut files = vec![path.to_path_buf()];
        files.extend(
            self.imbed()
                .config()
                .plugins
                .values()
                .map(|p| p.path.clone()),
        );
        files
            .into_iter()
            .map(|f| {
                let s = stat(&f);
                (f, s)
            })
            .collect()
    }
}

/// The router, ready to serve or to test with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/api/embed", post(ollama_embed))
        .route("/api/tags", get(ollama_tags))
        .route("/api/version", get(ollama_version))
        .route("/embed/image", post(native_embed_image))
        .route("/embed/text", post(native_embed_text))
        .route("/embed/batch", post(native_embed_batch))
        .route("/describe", post(native_describe))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` resolves; requests in flight are finished first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

// ---------------------------------------------------------------------------------------------
// Errors in the style of each API

#[derive(Clone, Copy)]
enum Api {
    OpenAi,
    Ollama,
    Native,
}

fn api_of(path: &str) -> Api {
    if path.starts_with("/v1/") {
        Api::OpenAi
    } else if path.starts_with("/api/") {
        Api::Ollama
    } else {
        Api::Native
    }
}

fn error_response(api: Api, status: StatusCode, message: &str, attempts: &[Attempt]) -> Response {
    let body = match api {
        Api::OpenAi => json!({ "error": {
            "message": message,
            "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "param": null,
            "code": status.canonical_reason().map(|r| r.to_lowercase().replace(' ', "_")),
        }}),
        Api::Ollama => json!({ "error": message }),
        Api::Native => json!({ "error": {
            "status": status.as_u16(),
            "message": message,
            "attempts": attempts,
        }}),
    };
    (status, axum::Json(body)).into_response()
}

/// What went wrong while answering, mapped to a status.
struct Failure {
    status: StatusCode,
    message: String,
    attempts: Vec<Attempt>,
}

impl Failure {
    fn bad(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            attempts: vec![],
        }
    }

    fn respond(self, api: Api) -> Response {
        error_response(api, self.status, &self.message, &self.attempts)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Input(InputError::TooManyBytes { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Input(_) | Error::Usage(_) => StatusCode::BAD_REQUEST,
            // No step answered: the service cannot serve this now, but may later.
            Error::Exhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let attempts = match &e {
            Error::Exhausted { attempts } => attempts.clone(),
            _ => vec![],
        };
        Failure {
            status,
            message: e.to_string(),
            attempts,
        }
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Failure> {
    if body.is_empty() {
        return Err(Failure::bad("the request has no body: send JSON"));
    }
    serde_json::from_slice(body)
        .map_err(|e| Failure::bad(format!("the body is not valid JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Middleware: authentication, body size, concurrency, deadline, metrics, logs

async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let api = api_of(&path);
    let route = route_label(&path);
    let response = guarded(&state, api, &path, request, next).await;
    let status = response.status();
    state
        .metrics
        .request(route, status.as_u16(), started.elapsed());
    tracing::info!(
        target: "imbed::serve",
        %method,
        path,
        status = status.as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn guarded(state: &AppState, api: Api, path: &str, request: Request, next: Next) -> Response {
    let open = matches!(path, "/health" | "/metrics");
    if !open && !state.settings.api_keys.is_empty() {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = presented.is_some_and(|p| {
            state
                .settings
                .api_keys
                .iter()
                .any(|k| constant_time_eq(k, p))
        });
        if !ok {
            let mut r = error_response(
                api,
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer <key>`",
                &[],
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.settings.max_body_bytes) {
        return error_response(
            api,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body is larger than {} bytes",
                state.settings.max_body_bytes
            ),
            &[],
        );
    }
    // Refuse at once rather than queue without bound: a client can retry, a queue only grows.
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        let mut r = error_response(
            api,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the server is busy ({} requests in flight): retry shortly",
                state.settings.max_in_flight
            ),
            &[],
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    // Dropping the handler's future at the deadline drops the plugin calls under it: their
    // instances are discarded and nothing keeps working for a caller who has gone.
    match tokio::time::timeout(state.settings.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(
            api,
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "no answer within {} ms",
                state.settings.request_timeout.as_millis()
            ),
            &[],
        ),
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/embeddings" => "/v1/embeddings",
        "/api/embed" => "/api/embed",
        "/api/tags" => "/api/tags",
        "/api/version" => "/api/version",
        "/embed/image" => "/embed/image",
        "/embed/text" => "/embed/text",
        "/embed/batch" => "/embed/batch",
        "/describe" => "/describe",
        "/health" => "/health",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_string();
    error_response(
        api_of(&path),
        StatusCode::NOT_FOUND,
        &format!("no route {path}"),
        &[],
    )
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// An image given as a URL or as base64 (raw or `data:`).
fn image_source(text: &str) -> ImageSource {
    if text.starts_with("http://") || text.starts_with("https://") || text.contains("://") {
        ImageSource::Url(text.to_string())
    } else {
        ImageSource::Base64(text.to_string())
    }
}

/// One item of a mixed request.
enum Item {
    Text(String),
    Image(ImageRequest),
}

fn native_item(v: &Value, index: usize) -> Result<Item, Failure> {
    let description = v
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string);
    let source = if let Some(url) = v.get("image_url").and_then(Value::as_str) {
        ImageSource::Url(url.to_string())
    } else if let Some(b64) = v.get("image_base64").and_then(Value::as_str) {
        ImageSource::Base64(b64.to_string())
    } else if let Some(text) = v.get("text").and_then(Value::as_str) {
        return Ok(Item::Text(text.to_string()));
    } else {
        return Err(Failure::bad(format!(
            "item {index} needs `image_url`, `image_base64` or `text`"
        )));
    };
    let mut r = ImageRequest::new(source);
    r.description = description;
    Ok(Item::Image(r))
}

/// Embed mixed items: texts in one batch, images concurrently. Results in input order.
async fn embed_items(state: &AppState, items: Vec<Item>) -> Vec<Result<Embedding, Error>> {
    let mut texts = Vec::new();
    let mut slots = Vec::new();
    let mut images = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Item::Text(t) => {
                slots.push((i, true, texts.len()));
                texts.push(t);
            }
            Item::Image(r) => {
                slots.push((i, false, images.len()));
                images.push(r);
            }
        }
    }
    let imbed = state.imbed();
    let t = Instant::now();
    let text_results = if texts.is_empty() {
        Vec::new()
    } else {
        imbed.embed_texts(&texts).await
    };
    // A batch is one walk of the chain: each of its texts took the batch's time.
    let text_time = t.elapsed();
    for r in &text_results {
        state.metrics.outcome(r, text_time);
    }
    use futures::StreamExt;
    // Images run concurrently, each timed on its own.
    let image_results: Vec<_> = futures::stream::iter(images)
        .map(|r| {
            let imbed = imbed.clone();
            async move {
                let t = Instant::now();
                let result = imbed.embed_image(r).await;
                state.metrics.outcome(&result, t.elapsed());
                result
            }
        })
        .buffered(4)
        .collect()
        .await;
    let mut text_results: Vec<Option<_>> = text_results.into_iter().map(Some).collect();
    let mut image_results: Vec<Option<_>> = image_results.into_iter().map(Some).collect();
    let mut out: Vec<(usize, Result<Embedding, Error>)> = slots
        .into_iter()
        .map(|(i, is_text, j)| {
            let r = if is_text {
                text_results[j].take()
            } else {
                image_results[j].take()
            };
            (
                i,
                r.unwrap_or_else(|| Err(Error::Internal("missing result".into()))),
            )
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

fn embedding_json(e: &Embedding) -> Value {
    json!({ "vector": e.vector, "provenance": e.provenance })
}

fn result_json(r: &Result<Embedding, Error>) -> Value {
    match r {
        Ok(e) => embedding_json(e),
        Err(err) => {
            let f = Failure::from(clone_error(err));
            json!({ "error": { "status": f.status.as_u16(), "message": f.message, "attempts": f.attempts } })
        }
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Exhausted { attempts } => Error::Exhausted {
            attempts: attempts.clone(),
        },
        Error::Input(i) => Error::Usage(i.to_string()),
        other => Error::Usage(other.to_string()),
    }
}

/// The first failure of a batch that must succeed whole.
fn all_or_first_error(
    results: Vec<Result<Embedding, Error>>,
) -> Result<Vec<Embedding>, (usize, Failure)> {
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(e) => out.push(e),
            Err(e) => return Err((i, Failure::from(e))),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible

async fn openai_embeddings(State(state): State<AppState>, body: Bytes) -> Response {
    openai(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::OpenAi))
}

async fn openai(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let req = parse_json(&body)?;
    let input = req
        .get("input")
        .ok_or_else(|| Failure::bad("`input` is required"))?;
    let items: Vec<Item> = match input {
        Value::String(s) => vec![Item::Text(s.clone())],
        Value::Array(list) if list.is_empty() => {
            return Err(Failure::bad("`input` must not be empty"))
        }
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(Item::Text(s.clone())),
                Value::Object(o) => match o.get("image").and_then(Value::as_str) {
                    Some(img) => {
                        let mut r = ImageRequest::new(image_source(img));
                        r.description = o.get("text").and_then(Value::as_str).map(str::to_string);
                        Ok(Item::Image(r))
                    }
                    None => Err(Failure::bad(format!(
                        "input[{i}]: an object item needs an `image` field (a URL or base64)"
                    ))),
                },
                Value::Number(_) | Value::Array(_) => Err(Failure::bad(
                    "token arrays are not supported: send the text itself as a string",
                )),
                _ => Err(Failure::bad(format!(
                    "input[{i}] must be a string or an {{\"image\": ...}} object"
                ))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(Failure::bad("`input` must be a string or an array")),
    };
    let base64_out = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Failure::bad(format!(
                "encoding_format {other:?}: use float or base64"
            )))
        }
    };
    let requested_model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let results = embed_items(state, items).await;
    let embeddings = all_or_first_error(results).map_err(|(i, mut f)| {
        f.message = format!("input[{i}]: {}", f.message);
        f
    })?;
    // A space id as `model` pins the space: answers from any other space are refused, never mixed.
    if requested_model.contains('/') {
        if let Some((i, e)) = embeddings
            .iter()
            .enumerate()
            .find(|(_, e)| !crate::types::space_meets(&e.provenance.space, &requested_model))
        {
            return Err(Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "input[{i}] could only be embedded in space {:?}, not the requested {requested_model:?}",
                    e.provenance.space
                ),
                attempts: e.provenance.attempts.clone(),
            });
        }
    }
    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64_out {
                let bytes: Vec<u8> = e.vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.vector)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding, "imbed": e.provenance })
        })
        .collect();
    let model = embeddings
        .first()
        .map(|e| e.provenance.space.clone())
        .unwrap_or_default();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": 0, "total_tokens": 0 },
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Ollama-compatible

async fn ollama_embed(State(state): State<AppState>, body: Bytes) -> Response {
    ollama(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::Ollama))
}

async fn ollama(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let started = Instant::now();
    let req = parse_json(&body)?;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("imbed")
        .to_string();
    let texts: Vec<String> = match req.get("input") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) if s.is_empty() => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Failure::bad("invalid input type"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Failure::bad("invalid input type")),
    };
    let embeddings = if texts.is_empty() {
        vec![]
    } else {
        let results = embed_items(state, texts.into_iter().map(Item::Text).collect()).await;
        all_or_first_error(results).map_err(|(_, f)| f)?
    };
    let vectors: Vec<&Vec<f32>> = embeddings.iter().map(|e| &e.vector).collect();
    Ok(axum::Json(json!({
        "model": model,
        "embeddings": vectors,
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": 0,
    }))
    .into_response())
}

async fn ollama_tags(State(state): State<AppState>) -> Response {
    let spaces: Vec<String> = state
        .imbed()
        .config()
        .chain
        .steps
        .iter()
        .map(|s| format!("{}", s.kind()))
        .collect();
    axum::Json(json!({ "models": [{
        "name": "imbed:latest",
        "model": "imbed:latest",
        "modified_at": "1970-01-01T00:00:00Z",
        "size": 0,
        "digest": "",
        "details": { "format": "wasm", "family": "imbed", "families": spaces },
        "capabilities": ["embedding"],
    }]}))
    .into_response()
}

async fn ollama_version() -> Response {
    axum::Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}

// ---------------------------------------------------------------------------------------------
// Native

async fn native_embed_image(State(state): State<AppState>, request: Request) -> Response {
    native_image(&state, request)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

async fn image_request_from(
    state: &AppState,
    request: Request,
) -> Result<(ImageRequest, Option<String>), Failure> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form = Multipart::from_request(request, state)
            .await
            .map_err(|e| Failure::bad(format!("bad multipart body: {e}")))?;
        let (mut bytes, mut description, mut prompt) = (None, None, None);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| Failure::bad(format!("bad multipart body: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| Failure::bad(format!("bad multipart field {name}: {e}")))?;
            match name.as_str() {
                "image" => bytes = Some(data.to_vec()),
                "description" => description = Some(String::from_utf8_lossy(&data).into_owned()),
                "prompt" => prompt = Some(String::from_utf8_lossy(&data).into_owned()),
                _ => {}
            }
        }
        let bytes = bytes.ok_or_else(|| Failure::bad("the form has no `image` file field"))?;
        let mut r = ImageRequest::new(ImageSource::Bytes(bytes));
        r.description = description;
        return Ok((r, prompt));
    }
    let body = Bytes::from_request(request, state)
        .await
        .map_err(|e| Failure {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: e.to_string(),
            attempts: vec![],
        })?;
    let v = parse_json(&body)?;
    let prompt = v.get("prompt").and_then(Value::as_str).map(str::to_string);
    match native_item(&v, 0)? {
        Item::Image(r) => Ok((r, prompt)),
        Item::Text(_) => Err(Failure::bad(
            "send `image_url` or `image_base64` (for text, use /embed/text)",
        )),
    }
}

async fn native_image(state: &AppState, request: Request) -> Result<Response, Failure> {
    let (req, _) = image_request_from(state, request).await?;
    let t = Instant::now();
    let result = state.imbed().embed_image(req).await;
    state.metrics.outcome(&result, t.elapsed());
    let e = result?;
    Ok(axum::Json(embedding_json(&e)).into_response())
}

async fn native_embed_text(State(state): State<AppState>, body: Bytes) -> Response {
    native_text(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

async fn native_text(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let v = parse_json(&body)?;
    if let Some(text) = v.get("text").and_then(Value::as_str) {
        let results = embed_items(state, vec![Item::Text(text.to_string())]).await;
        let e = results
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(Error::Internal("no result".into())))?;
        return Ok(axum::Json(embedding_json(&e)).into_response());
    }
    let texts = v
        .get("texts")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::bad("send {\"text\": \"...\"} or {\"texts\": [...]}"))?;
    let items = texts
        .iter()
        .map(|t| {
            t.as_str()
                .map(|s| Item::Text(s.to_string()))
                .ok_or_else(|| Failure::bad("every text must be a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = embed_items(state, items).await;
    Ok(
        axum::Json(json!({ "results": results.iter().map(result_json).collect::<Vec<_>>() }))
            .into_response(),
    )
}

async fn native_embed_batch(State(state): State<AppState>, body: Bytes) -> Response {
    native_batch(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

async fn native_batch(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let v = parse_json(&body)?;
    let list = v.get("items").and_then(Value::as_array).ok_or_else(|| {
        Failure::bad("send {\"items\": [{\"image_url\"|\"image_base64\"|\"text\": ...}]}")
    })?;
    let items = list
        .iter()
        .enumerate()
        .map(|(i, v)| native_item(v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let results = embed_items(state, items).await;
    Ok(
        axum::Json(json!({ "results": results.iter().map(result_json).collect::<Vec<_>>() }))
            .into_response(),
    )
}

async fn native_describe(State(state): State<AppState>, request: Request) -> Response {
    describe(&state, request)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

async fn describe(state: &AppState, request: Request) -> Result<Response, Failure> {
    let (req, prompt) = image_request_from(state, request).await?;
    let imbed = state.imbed();
    let image = imbed.load_image(&req.source).await?;
    let d = imbed.describe(&image, prompt.as_deref()).await?;
    Ok(axum::Json(json!({ "description": d })).into_response())
}

// ---------------------------------------------------------------------------------------------
// Health and metrics

/// How long a health check's step probes are reused: probing runs the whole chain.
const HEALTH_TTL: Duration = Duration::from_secs(15);

async fn health(State(state): State<AppState>) -> Response {
    let steps = {
        let mut cached = state.health.lock().await;
        match cached.as_ref() {
            Some((at, steps)) if at.elapsed() < HEALTH_TTL => steps.clone(),
            _ => {
                let steps = state.imbed().check_steps().await;
                *cached = Some((Instant::now(), steps.clone()));
                steps
            }
        }
    };
    let answering = steps.iter().filter(|s| s.ok).count();
    let (status, word) = match answering {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "down"),
        n if n == steps.len() => (StatusCode::OK, "ok"),
        _ if steps.first().is_some_and(|s| s.ok) => (StatusCode::OK, "ok"),
        _ => (StatusCode::OK, "degraded"),
    };
    (
        status,
        axum::Json(json!({
            "status": word,
            "steps": steps,
            "plugins": state.imbed().plugins(),
            "config": state.imbed().config().source,
            "reload": state.reload_status(),
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    let mut text = state.metrics.render();
    text.push_str(&crate::runtime::budget::render_drops(
        &state.imbed().dropped_plugin_logs(),
    ));
    (headers, Body::from(text)).into_response()
}

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.total += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{label}=\"{value}\",le=\"{b}\"}} {}\n",
                self.counts[i]
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}\n",
            self.total
        ));
        out.push_str(&format!("{name}_sum{{{label}=\"{value}\"}} {}\n", self.sum));
        out.push_str(&format!(
            "{name}_count{{{label}=\"{value}\"}} {}\n",
            self.total
        ));
    }
}

/// Counters for `/metrics`, in Prometheus' text format.
#[derive(Default)]
struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Default)]
struct MetricsInner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    answers: BTreeMap<(usize, String), u64>,
    step_latency: BTreeMap<String, Histogram>,
    fallbacks: u64,
    exhausted: u64,
    failures: BTreeMap<(String, String), u64>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, MetricsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self, route: &'static str, status: u16, took: Duration) {
        let mut m = self.lock();
        *m.requests.entry((route, status)).or_default() += 1;
        m.latency.entry(route).or_default().observe(took);
    }

    /// Count an embedding result; `took` is the time of the chain walk that produced it.
    fn outcome(&self, result: &Result<Embedding, Error>, took: Duration) {
        let mut m = self.lock();
        let label = match result {
            Ok(e) => format!("{}:{}", e.provenance.step, e.provenance.step_kind),
            Err(_) => "none".to_string(),
        };
        m.step_latency.entry(label).or_default().observe(took);
        let attempts = match result {
            Ok(e) => {
                *m.answers
                    .entry((e.provenance.step, e.provenance.step_kind.to_string()))
                    .or_default() += 1;
                if e.provenance.degraded {
                    m.fallbacks += 1;
                }
                e.provenance.attempts.clone()
            }
            Err(Error::Exhausted { attempts }) => {
                m.exhausted += 1;
                attempts.clone()
            }
            Err(_) => vec![],
        };
        for a in attempts {
            let plugin = a.plugin.unwrap_or_else(|| "-".into());
            *m.failures.entry((plugin, a.kind.to_string())).or_default() += 1;
        }
    }

    fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP imbed_requests_total HTTP requests by route and status.\n# TYPE imbed_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            out.push_str(&format!(
                "imbed_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP imbed_request_duration_seconds Request latency by route.\n# TYPE imbed_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.render(&mut out, "imbed_request_duration_seconds", "route", route);
        }
        out.push_str("# HELP imbed_embed_duration_seconds Time to embed one input, by the step that answered (step:kind, or none).\n# TYPE imbed_embed_duration_seconds histogram\n");
        for (step, h) in &m.step_latency {
            h.render(&mut out, "imbed_embed_duration_seconds", "step", step);
        }
        out.push_str("# HELP imbed_step_answers_total Embeddings by the chain step that answered.\n# TYPE imbed_step_answers_total counter\n");
        for ((step, kind), n) in &m.answers {
            out.push_str(&format!(
                "imbed_step_answers_total{{step=\"{step}\",kind=\"{kind}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP imbed_fallbacks_total Embeddings answered by a step below the first (degraded).\n# TYPE imbed_fallbacks_total counter\n");
        out.push_str(&format!("imbed_fallbacks_total {}\n", m.fallbacks));
        out.push_str("# HELP imbed_exhausted_total Inputs for which no step answered.\n# TYPE imbed_exhausted_total counter\n");
        out.push_str(&format!("imbed_exhausted_total {}\n", m.exhausted));
        out.push_str("# HELP imbed_step_failures_total Step failures by plugin and kind (trap, timeout, memory-exceeded, ...).\n# TYPE imbed_step_failures_total counter\n");
        for ((plugin, kind), n) in &m.failures {
            out.push_str(&format!(
                "imbed_step_failures_total{{plugin=\"{plugin}\",kind=\"{kind}\"}} {n}\n"
            ));
        }
        out
    }
}
