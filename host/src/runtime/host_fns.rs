//! The host functions a plugin imports (log, settings, HTTP), each answering from what the
//! plugin was granted; HTTP checks the origin grant before anything is sent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget;
use super::contract::{host, http, wit};
use super::nn;
use super::sandbox::PluginState;
use crate::input::describe_reqwest;

/// Largest HTTP response body handed to a plugin.
const HTTP_BODY_CAP: usize = 256 << 20;

/// What every instance of one plugin (of one pool endpoint) shares: its identity, settings and
/// HTTP grants.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) key: String,
    pub(crate) settings: BTreeMap<String, String>,
    /// The granted model folder's own name, answered for [`MODEL_DIR_NAME`].
    pub(crate) model_dir_name: Option<String>,
    pub(crate) http_origins: Vec<url::Origin>,
    pub(crate) client: reqwest::Client,
    /// The plugin's wasi-nn grants, budget and shared graph sessions.
    pub(crate) nn: Arc<nn::PluginNn>,
    /// The plugin's log budget (per-minute window shared by its instances).
    pub(crate) log: Arc<budget::PluginLogBudget>,
}

/// The setting a plugin granted a `model_dir` reads to learn the folder's name on the host (the
/// folder is `/model` inside): a model folder without an `imbed-model.json` manifest is named
/// after it. A value in the plugin's own settings table wins.
pub const MODEL_DIR_NAME: &str = "model_dir_name";

/// The last part of a model folder's path, as plugins are told it.
/// The name as written wins over the resolved one (a link named `clip-b32` says more than
/// its target); `.` and `..` are resolved.
pub(crate) fn model_dir_name(dir: &Path) -> Option<String> {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir).or_else(|| dir.canonicalize().ok().as_deref().and_then(named))
}

impl wit::Host for PluginState {}

impl host::Host for PluginState {
    async fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        use tracing::{enabled, Level};
        // A line the host would not print costs nothing: only written lines count against the
        // budget, so debug chatter under `--log warn` never shows up as "dropped".
        let shown = match level {
            host::LogLevel::Trace => enabled!(target: "imbed::plugin", Level::TRACE),
            host::LogLevel::Debug => enabled!(target: "imbed::plugin", Level::DEBUG),
            host::LogLevel::Info => enabled!(target: "imbed::plugin", Level::INFO),
            host::LogLevel::Warn => enabled!(target: "imbed::plugin", Level::WARN),
            host::LogLevel::Error => enabled!(target: "imbed::plugin", Level::ERROR),
        };
        if !shown {
            return Ok(());
        }
        let plugin = self.shared.key.as_str();
        let message = match self
            .shared
            .log
            .admit(&mut self.call_log, &message, Instant::now())
        {
            budget::Admit::Write(m) => m,
            budget::Admit::Drop => return Ok(()),
        };
        match level {
            host::LogLevel::Trace => tracing::trace!(target: "imbed::plugin", plugin, "{message}"),
            host::LogLevel::Debug => tracing::debug!(target: "imbed::plugin", plugin, "{message}"),
            host::LogLevel::Info => tracing::info!(target: "imbed::plugin", plugin, "{message}"),
            host::LogLevel::Warn => tracing::warn!(target: "imbed::plugin", plugin, "{message}"),
            host::LogLevel::Error => tracing::error!(target: "imbed::plugin", plugin, "{message}"),
        }
        Ok(())
    }

    async fn get_setting(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        if let Some(value) = self.shared.settings.get(&key) {
            return Ok(Some(value.clone()));
        }
        // Inside the sandbox the model folder is always `/model`; its real name is the only
        // name a folder without a manifest has, so the host answers it.
        Ok((key == MODEL_DIR_NAME)
            .then(|| self.shared.model_dir_name.clone())
            .flatten())
    }

    async fn setting_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.shared.settings.keys().cloned().collect())
    }
}

impl http::Host for PluginState {
    async fn send(
        &mut self,
        req: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let shared = self.shared.clone();
        Ok(shared.send(req, self.deadline).await)
    }
}

impl Shared {
    async fn send(
        &self,
        req: http::Request,
        deadline: Instant,
    ) -> Result<http::Response, http::HttpError> {
        use http::HttpError as E;
        let url = url::Url::parse(&req.url)
            .map_err(|e| E::Invalid(format!("bad URL {:?}: {e}", req.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(E::Denied(format!(
                "scheme {}: is not allowed; only http and https",
                url.scheme()
            )));
        }
        let origin = url.origin();
        if !self.http_origins.contains(&origin) {
            return Err(E::Denied(format!(
                "origin {} is not granted to plugin {:?}: add it to [plugins.{}.grants] http in the config",
                origin.ascii_serialization(),
                self.key,
                self.key
            )));
        }
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| E::Invalid(format!("bad HTTP method {:?}", req.method)))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = match req.timeout_ms {
            Some(ms) => remaining.min(Duration::from_millis(u64::from(ms))),
            None => remaining,
        };
        if timeout.is_zero() {
            return Err(E::Timeout("the plugin call's deadline has passed".into()));
        }
        let mut builder = self.client.request(method, url.clone()).timeout(timeout);
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !req.body.is_empty() {
            builder = builder.body(req.body);
        }
        let map_err = |e: reqwest::Error| {
            let text = format!("{} {}: {}", req.method, url, describe_reqwest(&e));
            if e.is_timeout() {
                E::Timeout(text)
            } else if e.is_connect() || dropped_connection(&e) {
                E::Unreachable(text)
            } else if e.is_builder() {
                E::Invalid(text)
            } else {
                E::Other(text)
            }
        };
        let work = async {
            let mut response = builder.send().await.map_err(map_err)?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(map_err)? {
                if body.len() + chunk.len() > HTTP_BODY_CAP {
                    return Err(E::TooLarge(format!(
                        "response from {url} exceeds {} MiB",
                        HTTP_BODY_CAP >> 20
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(http::Response {
                status,
                headers,
                body,
            })
        };
        // reqwest's timeout covers the body too, but a belt-and-braces bound keeps a slow
        // trickle from outliving the plugin's deadline.
        match tokio::time::timeout(timeout + Duration::from_millis(50), work).await {
            Ok(r) => r,
            Err(_) => Err(E::Timeout(format!(
                "{} {url}: no complete response in time",
                req.method
            ))),
        }
    }
}

/// A backend that went away while a request was on its connection (reset, closed before the
/// answer): as unreachable as a refused connection, and worth trying elsewhere.
fn dropped_connection(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind as K;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof
            ) {
                return true;
            }
        }
        // hyper's IncompleteMessage carries no io::Error and is not a public type.
        if s.to_string()
            .contains("connection closed before message completed")
        {
            return true;
        }
        source = s.source();
    }
    false
}
