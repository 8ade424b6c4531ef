//! Loading plugin components and calling them inside their sandboxes.
//!
//! One [`Runtime`] holds the shared wasmtime `Engine`, the linker with the host functions, and
//! the on-disk cache of compiled components. Each [`Plugin`] holds one component, ready to
//! instantiate, and a small pool of live instances. Every call runs under the plugin's memory
//! cap and deadline; a trap, a timeout or malformed output is turned into a [`CallError`] and
//! the instance that misbehaved is thrown away, never reused.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{
    self, describer, embedder, host, http, image_embedder, plugin, types as wit,
};
use crate::config::PluginConfig;
use crate::input::{describe_reqwest, hex, ValidImage};
use crate::runtime::{budget, nn};
use crate::types::{FailureKind, Inference, PluginId, StructuredDescription};

/// How often the engine's epoch advances: the granularity of deadlines and of yielding.
const TICK: Duration = Duration::from_millis(10);
/// Guest stderr kept per instance (panic messages land here).
const STDERR_CAP: usize = 256 * 1024;
/// Largest HTTP response body handed to a plugin.
const HTTP_BODY_CAP: usize = 256 << 20;
/// Longest side of images sent to describers unless the plugin's config says otherwise.
const DESCRIBER_MAX_SIDE: u32 = 1024;
/// The contract version this host serves.
pub(crate) const CONTRACT_VERSION: &str = "0.1.0";

/// Why a plugin call did not produce a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    pub kind: FailureKind,
    pub message: String,
    /// Native inference (wasi-nn) that ran during the failed call.
    pub inference: Option<Inference>,
}

impl CallError {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            message: message.into(),
            inference: None,
        }
    }
}

impl From<wit::Error> for CallError {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::Unavailable(m) => CallError::new(FailureKind::Unavailable, m),
            wit::Error::ModelNotFound(m) => CallError::new(FailureKind::ModelNotFound, m),
            wit::Error::BadInput(m) => CallError::new(FailureKind::BadInput, m),
            wit::Error::Timeout(m) => CallError::new(FailureKind::Timeout, m),
            wit::Error::Other(m) => CallError::new(FailureKind::Other, m),
        }
    }
}

/// One item of a batch: its vector, or why this item has none.
pub(crate) type ItemResult = Result<Vec<f32>, CallError>;

/// A model as a plugin reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelInfo {
    pub model: String,
    pub dimensions: Option<usize>,
    pub space: String,
    /// On the copy returned with a batch: what ran natively (wasi-nn) to answer it.
    pub inference: Option<Inference>,
}

impl From<wit::ModelInfo> for ModelInfo {
    fn from(m: wit::ModelInfo) -> Self {
        ModelInfo {
            model: m.model_id,
            dimensions: m.dimensions.map(|d| d as usize),
            space: m.space_id,
            inference: None,
        }
    }
}

/// What a describer wrote.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PluginDescription {
    pub text: String,
    pub model: String,
    pub structured: Option<StructuredDescription>,
}

impl From<describer::Description> for PluginDescription {
    fn from(d: describer::Description) -> Self {
        PluginDescription {
            text: d.text,
            model: d.model_id,
            structured: d.structured.map(|s| StructuredDescription {
                objects: s.objects,
                visible_text: s.visible_text,
                tags: s.tags,
            }),
        }
    }
}

fn to_wit_image(img: &ValidImage) -> wit::Image {
    wit::Image {
        data: img.data.to_vec(),
        mime_type: img.mime_type.to_string(),
        width: img.width,
        height: img.height,
    }
}

/// The roles a component can serve, from what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Roles {
    /// Exports `describer`.
    pub describer: bool,
    /// Exports `embedder`.
    pub text_embedder: bool,
    /// Exports `image-embedder`.
    pub image_embedder: bool,
}

// ---------------------------------------------------------------------------------------------
// Store state and host functions

struct Limiter {
    memory_cap: usize,
    exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.exceeded = true;
            // An error (not `Ok(false)`) traps at once: a guest allocator that sees a failed
            // grow would abort anyway, with a less helpful message.
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} MiB reached",
                self.memory_cap >> 20
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// What every instance of one plugin shares: its identity, settings and HTTP grants.
struct Shared {
    key: String,
    settings: BTreeMap<String, String>,
    /// The granted model folder's own name, answered for [`MODEL_DIR_NAME`].
    model_dir_name: Option<String>,
    http_origins: Vec<url::Origin>,
    client: reqwest::Client,
    /// The plugin's wasi-nn grants, budget and shared graph sessions.
    nn: Arc<nn::PluginNn>,
    /// The plugin's log budget (per-minute window shared by its instances).
    log: budget::PluginLogBudget,
}

pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    shared: Arc<Shared>,
    deadline: Instant,
    nn: nn::InstanceNn,
    /// This call's log lines, against the plugin's log budget.
    call_log: budget::CallLog,
}

fn nn_view(s: &mut PluginState) -> nn::NnView<'_> {
    nn::NnView {
        table: &mut s.table,
        nn: &mut s.nn,
        deadline: s.deadline,
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
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
            } else if e.is_connect() {
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

// ---------------------------------------------------------------------------------------------
// Runtime

/// The shared engine, linker and compile cache.
pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: Option<PathBuf>,
    client: reqwest::Client,
    stop_ticker: Arc<AtomicBool>,
    /// Plugin log lines dropped past their budgets, by plugin, for `/metrics`.
    pub(crate) log_drops: budget::DropCounts,
    /// Components this runtime compiled, by the SHA-256 of their bytes: inspecting and then
    /// loading the same file (`imbed plugins check`) compiles it once, not twice.
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    nn: Arc<nn::NnHost>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// `nn_plugins`: how many plugins the config grants wasi-nn graphs (for the thread default).
    pub(crate) fn new(
        cache_dir: Option<PathBuf>,
        nn_settings: &crate::config::NnSettings,
        nn_plugins: usize,
    ) -> Result<Runtime, String> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;

        // Epoch interruption only fires when something advances the epoch: without this ticker
        // a guest in an endless loop would never be stopped.
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("imbed-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
        }

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("{e:#}"))?;
        bindings::HostView::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| format!("{e:#}"))?;
        nn::add_to_linker(&mut linker, nn_view).map_err(|e| format!("{e:#}"))?;

        let client = reqwest::Client::builder()
            // Plugins see every hop: a redirect to an origin that is not granted must not be
            // followed behind the grant check's back.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("imbed/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;

        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            client,
            stop_ticker: stop,
            log_drops: Default::default(),
            compiled: Mutex::new(HashMap::new()),
            nn: Arc::new(nn::NnHost::new(nn_settings.clone(), nn_plugins)),
        })
    }

    /// Compile a component, or load it from the cache when this exact file was compiled before
    /// by this exact engine. Returns whether the cache answered.
    fn compile(&self, bytes: &[u8]) -> Result<(Component, bool), String> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let memo = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        if let Some(component) = memo {
            return Ok((component, true));
        }
        let (component, from_cache) = self.compile_uncached(bytes, &digest)?;
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, component.clone());
        Ok((component, from_cache))
    }

    fn compile_uncached(
        &self,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> Result<(Component, bool), String> {
        let cache_file = self.cache_dir.as_ref().map(|dir| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            let key = format!("{}-{:016x}", hex(digest), h.finish());
            dir.join("components").join(format!("{key}.cwasm"))
        });
        if let Some(path) = cache_file.as_ref().filter(|p| p.is_file()) {
            // Read into memory rather than mapping the file: a mapped file that someone
            // truncates (a cache cleaner, a second imbed) kills the process with SIGBUS.
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash (it is in the name), into imbed's own cache directory.
            let loaded = std::fs::read(path)
                .map_err(wasmtime::Error::from)
                .and_then(|bytes| unsafe { Component::deserialize(&self.engine, bytes) });
            match loaded {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(
                    "ignoring unusable compile cache entry {}: {e:#}",
                    path.display()
                ),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"))?;
        if let Some(path) = cache_file {
            if let Err(e) = write_atomically(&path, &component) {
                tracing::warn!("cannot write compile cache {}: {e}", path.display());
            }
        }
        Ok((component, false))
    }

    /// Load one plugin: read, compile (or hit the cache), link, and ask it who it is.
    pub(crate) async fn load(
        self: &Arc<Self>,
        key: &str,
        cfg: &PluginConfig,
    ) -> Result<Plugin, CallError> {
        let not_installed = |m: String| CallError::new(FailureKind::NotInstalled, m);
        let started = Instant::now();
        let bytes = match tokio::fs::read(&cfg.path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_installed(format!(
                    "plugin file {} not found: install the plugin (see README) or remove its steps from the chain",
                    cfg.path.display()
                )))
            }
            Err(e) => return Err(not_installed(format!("cannot read plugin file {}: {e}", cfg.path.display()))),
        };
        if let Some(dir) = &cfg.grants.model_dir {
            if !dir.is_dir() {
                // `imbed models pull <name>` puts a model in `<models dir>/<name>`, so the folder's
                // name is the model's when the grant follows that layout.
                let pull = match dir.file_name().and_then(|n| n.to_str()) {
                    Some(name)
                        if crate::models::Registry::builtin()
                            .is_ok_and(|r| r.get(name).is_ok()) =>
                    {
                        format!("`imbed models pull {name}`")
                    }
                    _ => "`imbed models pull <model>` (`imbed models list` names them)".to_string(),
                };
                return Err(CallError::new(
                    FailureKind::ModelNotFound,
                    format!(
                        "model directory {} does not exist: run {pull}, or fix [plugins.{key}.grants] model_dir",
                        dir.display()
                    ),
                ));
            }
        }
        let this = self.clone();
        let (component, from_cache) = tokio::task::spawn_blocking(move || this.compile(&bytes))
            .await
            .map_err(|e| not_installed(format!("compiling the plugin panicked: {e}")))?
            .map_err(|e| {
                not_installed(format!(
                    "{} is not a valid WebAssembly component: {e}",
                    cfg.path.display()
                ))
            })?;
        if let Some(found) = contract_version(&self.engine, &component) {
            if found != CONTRACT_VERSION {
                return Err(not_installed(format!(
                    "{} is built for imbed:plugin@{found}, but this host serves imbed:plugin@{CONTRACT_VERSION}: rebuild the plugin against wit/{CONTRACT_VERSION}, or use an imbed release that serves {found}",
                    cfg.path.display()
                )));
            }
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            not_installed(format!(
                "{} imports something imbed does not provide (is it built for imbed:plugin@{CONTRACT_VERSION}?): {e:#}",
                cfg.path.display()
            ))
        })?;
        let indices = Indices {
            plugin: plugin::GuestIndices::new(&pre).map_err(|e| {
                not_installed(format!(
                    "{} does not export imbed:plugin/plugin@{CONTRACT_VERSION} as this host expects ({e}): rebuild it against wit/{CONTRACT_VERSION}",
                    cfg.path.display()
                ))
            })?,
            describer: describer::GuestIndices::new(&pre).ok(),
            embedder: embedder::GuestIndices::new(&pre).ok(),
            image_embedder: image_embedder::GuestIndices::new(&pre).ok(),
        };
        let shared = Arc::new(Shared {
            key: key.to_string(),
            settings: cfg.settings.clone(),
            model_dir_name: cfg.grants.model_dir.as_deref().and_then(model_dir_name),
            http_origins: cfg.grants.http.clone(),
            client: self.client.clone(),
            nn: self.nn.plugin(key, cfg),
            log: budget::PluginLogBudget::new(key, cfg.budgets, self.log_drops.clone()),
        });
        // A plugin that can reach no network only computes: more instances than cores would
        // just take turns on them, each holding its own memory (a CLIP instance is ~600 MB).
        let mut cfg = cfg.clone();
        if cfg.grants.http.is_empty() && cfg.grants.sockets.is_empty() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cfg.pool_size > cores {
                tracing::info!(
                    plugin = key,
                    "{} instances configured, {cores} used: the plugin is CPU-bound (no network grants) and this machine has {cores} cores",
                    cfg.pool_size
                );
                cfg.pool_size = cores;
            }
        }
        let cfg = &cfg;
        let mut plugin = Plugin {
            key: key.to_string(),
            id: PluginId {
                key: key.to_string(),
                name: key.to_string(),
                version: String::new(),
            },
            config: cfg.clone(),
            runtime: self.clone(),
            pre,
            indices,
            shared,
            permits: Arc::new(Semaphore::new(cfg.pool_size.max(1))),
            idle: Mutex::new(Vec::new()),
            text_model: Mutex::new(None),
            image_model: Mutex::new(None),
            learned_dims: Mutex::new(HashMap::new()),
            from_cache,
            load_time: Duration::ZERO,
        };
        let info = plugin.info().await?;
        plugin.id.name = info.name;
        plugin.id.version = info.version;
        plugin.load_time = started.elapsed();
        Ok(plugin)
    }
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

/// The version of the `imbed:plugin` contract a component exports, from its export names.
fn contract_version(engine: &Engine, component: &Component) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| {
            name.strip_prefix("imbed:plugin/plugin@")
                .map(str::to_string)
        })
}

/// What `imbed plugins check` reports about a component file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentReport {
    /// The contract version it exports, if it exports `imbed:plugin/plugin` at all.
    pub contract: Option<String>,
    /// Everything it imports, by name.
    pub imports: Vec<String>,
    /// Everything it exports, by name.
    pub exports: Vec<String>,
    /// Grants it may ask for, from its imports (a std guest imports filesystem and environment
    /// interfaces even when it never uses them: a capability listed here is possible, not certain).
    pub capabilities: Vec<String>,
}

impl Runtime {
    /// The wasi-nn status of a plugin that did not load, from its config.
    pub(crate) fn nn_status(&self, key: &str, cfg: &PluginConfig) -> Option<nn::NnStatus> {
        self.nn.plugin(key, cfg).status()
    }

    /// Compile a component file and describe its imports, exports and contract version.
    pub(crate) fn inspect(&self, bytes: &[u8]) -> Result<ComponentReport, String> {
        let (component, _) = self.compile(bytes)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let uses = |prefix: &str| imports.iter().any(|i| i.starts_with(prefix));
        let mut capabilities = Vec::new();
        if uses("imbed:plugin/http") {
            capabilities.push(
                "http: outbound HTTP through the host (grants.http = [\"scheme://host:port\"])"
                    .into(),
            );
        }
        if uses("wasi:filesystem/") {
            capabilities.push(
                "files: reading a model directory (grants.model_dir), if it reads files".into(),
            );
        }
        if uses("wasi:cli/environment") {
            capabilities.push("env: environment variables (grants.env), if it reads any".into());
        }
        if uses("wasi:nn/") {
            capabilities.push(
                "nn: native inference on granted graphs (grants.nn = [\"<graph>\"] with a model_dir)"
                    .into(),
            );
        }
        if uses("wasi:sockets/tcp") || uses("wasi:sockets/udp") {
            capabilities
                .push("sockets: direct TCP connections (grants.sockets), if it opens any".into());
        }
        Ok(ComponentReport {
            contract: contract_version(&self.engine, &component),
            imports,
            exports,
            capabilities,
        })
    }
}

fn write_atomically(path: &Path, component: &Component) -> Result<(), String> {
    let dir = path.parent().ok_or("no parent directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let bytes = component.serialize().map_err(|e| format!("{e:#}"))?;
    let tmp = dir.join(format!(".{}.tmp{}", std::process::id(), rand_suffix()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    // Rename is atomic: a concurrent reader sees the old file or the whole new one.
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

fn rand_suffix() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    Instant::now().hash(&mut h);
    std::thread::current().id().hash(&mut h);
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Plugin

struct Indices {
    plugin: plugin::GuestIndices,
    describer: Option<describer::GuestIndices>,
    embedder: Option<embedder::GuestIndices>,
    image_embedder: Option<image_embedder::GuestIndices>,
}

struct Exports {
    plugin: plugin::Guest,
    describer: Option<describer::Guest>,
    embedder: Option<embedder::Guest>,
    image_embedder: Option<image_embedder::Guest>,
}

/// A live instance, with its store and the permit that counts it against the plugin's limit.
struct Instance {
    store: Store<PluginState>,
    exports: Exports,
    stderr: MemoryOutputPipe,
    /// Held while the instance is leased; an idle instance holds none.
    permit: Option<OwnedSemaphorePermit>,
}

/// One loaded plugin.
pub(crate) struct Plugin {
    pub key: String,
    pub id: PluginId,
    pub config: PluginConfig,
    runtime: Arc<Runtime>,
    pre: InstancePre<PluginState>,
    indices: Indices,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Instance>>,
    text_model: Mutex<Option<ModelInfo>>,
    image_model: Mutex<Option<ModelInfo>>,
    learned_dims: Mutex<HashMap<String, usize>>,
    pub from_cache: bool,
    pub load_time: Duration,
}

/// Runs one guest function of one role on a leased instance and settles the outcome, with what
/// ran natively during the call.
macro_rules! guest_call_traced {
    ($self:ident, $role:ident, $what:literal, $method:ident ( $($arg:expr),* )) => {{
        let mut inst = $self.checkout().await?;
        let budget = $self.arm(&mut inst.store);
        let outcome = match inst.exports.$role.as_ref() {
            Some(guest) => {
                tokio::time::timeout(budget, guest.$method(&mut inst.store $(, $arg)*)).await
            }
            None => {
                return Err(CallError::new(
                    FailureKind::NotApplicable,
                    format!("plugin {:?} does not export {}", $self.key, $what),
                ))
            }
        };
        $self.settle_traced(inst, outcome)
    }};
}

/// Runs one guest function of one role on a leased instance and settles the outcome.
macro_rules! guest_call {
    ($self:ident, $role:ident, $what:literal, $method:ident ( $($arg:expr),* )) => {{
        let mut inst = $self.checkout().await?;
        let budget = $self.arm(&mut inst.store);
        let outcome = match inst.exports.$role.as_ref() {
            Some(guest) => {
                tokio::time::timeout(budget, guest.$method(&mut inst.store $(, $arg)*)).await
            }
            None => {
                return Err(CallError::new(
                    FailureKind::NotApplicable,
                    format!("plugin {:?} does not export {}", $self.key, $what),
                ))
            }
        };
        $self.settle(inst, outcome)
    }};
}

impl Plugin {
    /// The wasi-nn side for `imbed plugins` (`None` without graph grants).
    pub(crate) fn nn_status(&self) -> Option<nn::NnStatus> {
        self.shared.nn.status()
    }

    /// Hash the granted graph files not hashed yet, so the status can say `verified`.
    pub(crate) async fn verify_nn_files(&self) {
        self.shared.nn.verify_files().await
    }

    pub(crate) fn roles(&self) -> Roles {
        Roles {
            describer: self.indices.describer.is_some(),
            text_embedder: self.indices.embedder.is_some(),
            image_embedder: self.indices.image_embedder.is_some(),
        }
    }

    /// Lease an idle instance or make a new one, waiting while the plugin is at its limit.
    async fn checkout(&self) -> Result<Instance, CallError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CallError::new(FailureKind::Other, "the plugin is shutting down"))?;
        if let Some(mut inst) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            inst.permit = Some(permit);
            return Ok(inst);
        }
        self.instantiate(permit).await
    }

    async fn instantiate(&self, permit: OwnedSemaphorePermit) -> Result<Instance, CallError> {
        let cfg = &self.config;
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        // `WasiCtxBuilder::new` grants nothing: no files, no environment, no sockets, no args.
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        for var in &cfg.grants.env {
            if let Ok(value) = std::env::var(var) {
                wasi.env(var, value);
            }
        }
        if let Some(dir) = &cfg.grants.model_dir {
            wasi.preopened_dir(dir, "/model", FsPerms::ReadOnly)
                .map_err(|e| {
                    CallError::new(
                        FailureKind::ModelNotFound,
                        format!("cannot open model directory {}: {e:#}", dir.display()),
                    )
                })?;
        }
        if !cfg.grants.sockets.is_empty() {
            let allowed = cfg.grants.sockets.clone();
            wasi.allow_tcp(true);
            wasi.socket_addr_check(move |addr, usage| {
                use wasmtime_wasi::sockets::SocketAddrUse;
                let ok = match usage {
                    SocketAddrUse::TcpConnect => allowed.contains(&addr),
                    // `connect` first binds implicitly to the wildcard address: allow only that.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        let state = PluginState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_cap: cfg.memory_bytes as usize,
                exceeded: false,
            },
            shared: self.shared.clone(),
            deadline: Instant::now() + cfg.timeout,
            nn: nn::InstanceNn::new(self.shared.nn.clone()),
            call_log: Default::default(),
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield to tokio at every tick so a busy guest cannot starve other tasks.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        let budget = self.arm(&mut store);
        let fail =
            |e: wasmtime::Error, store: &Store<PluginState>| self.classify_trap(e, store, &stderr);
        let instance =
            match tokio::time::timeout(budget, self.pre.instantiate_async(&mut store)).await {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => {
                    self.finish_log(&mut store);
                    return Err(fail(e, &store));
                }
                Err(_) => return Err(self.timeout_error("starting")),
            };
        let load = |store: &mut Store<PluginState>| -> wasmtime::Result<Exports> {
            Ok(Exports {
                plugin: self.indices.plugin.load(&mut *store, &instance)?,
                describer: self
                    .indices
                    .describer
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                embedder: self
                    .indices
                    .embedder
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
                image_embedder: self
                    .indices
                    .image_embedder
                    .as_ref()
                    .map(|i| i.load(&mut *store, &instance))
                    .transpose()?,
            })
        };
        let exports = load(&mut store).map_err(|e| {
            CallError::new(
                FailureKind::NotInstalled,
                format!(
                    "plugin {:?} exports functions of the wrong type: {e:#}",
                    self.key
                ),
            )
        })?;
        Ok(Instance {
            store,
            exports,
            stderr,
            permit: Some(permit),
        })
    }

    /// Set the deadline for the next call; returns the wall-clock budget.
    fn arm(&self, store: &mut Store<PluginState>) -> Duration {
        store.data_mut().deadline = Instant::now() + self.config.timeout;
        store.data_mut().nn.used = None;
        store.set_epoch_deadline(1);
        // A little longer than the deadline: the epoch trap should win while the guest runs,
        // the outer timeout catches time spent waiting in host calls.
        self.config.timeout + TICK * 5
    }

    fn timeout_error(&self, what: &str) -> CallError {
        CallError::new(
            FailureKind::Timeout,
            format!(
                "plugin {:?} ran past its deadline of {} ms while {what}: it was stopped (raise [plugins.{}.limits] timeout_ms if it needs longer)",
                self.key,
                self.config.timeout.as_millis(),
                self.key
            ),
        )
    }

    fn classify_trap(
        &self,
        e: wasmtime::Error,
        store: &Store<PluginState>,
        stderr: &MemoryOutputPipe,
    ) -> CallError {
        if store.data().limiter.exceeded {
            return CallError::new(
                FailureKind::MemoryExceeded,
                format!(
                    "plugin {:?} exceeded its memory cap of {} MiB and was stopped (raise [plugins.{}.limits] memory_mb if it needs more)",
                    self.key,
                    self.config.memory_bytes >> 20,
                    self.key
                ),
            );
        }
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            return self.timeout_error("running");
        }
        let trap = e
            .downcast_ref::<wasmtime::Trap>()
            .map(|t| t.to_string())
            .unwrap_or_else(|| format!("{e}"));
        let output = String::from_utf8_lossy(&stderr.contents()).into_owned();
        let last: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = last[last.len().saturating_sub(3)..].join(" | ");
        let mut message = format!("plugin {:?} crashed ({trap})", self.key);
        if !tail.is_empty() {
            message.push_str(&format!("; its last output: {tail}"));
        }
        CallError::new(FailureKind::Trap, message)
    }

    /// Turn the outcome of a guest call into a result, returning a healthy instance to the pool
    /// and discarding one that trapped or timed out.
    fn settle<T>(
        &self,
        inst: Instance,
        outcome: Result<wasmtime::Result<Result<T, wit::Error>>, tokio::time::error::Elapsed>,
    ) -> Result<T, CallError> {
        self.settle_traced(inst, outcome).map(|(v, _)| v)
    }

    /// [`Plugin::settle`], also returning what ran natively (wasi-nn) during the call; a
    /// failed call carries it in its error.
    fn settle_traced<T>(
        &self,
        mut inst: Instance,
        outcome: Result<wasmtime::Result<Result<T, wit::Error>>, tokio::time::error::Elapsed>,
    ) -> Result<(T, Option<Inference>), CallError> {
        let inference = inst.store.data_mut().nn.used.take();
        self.finish_log(&mut inst.store);
        let with = |mut e: CallError| {
            e.inference = inference.clone();
            e
        };
        match outcome {
            Err(_) => Err(with(self.timeout_error("running"))),
            Ok(Err(trap)) => Err(with(self.classify_trap(trap, &inst.store, &inst.stderr))),
            Ok(Ok(result)) => {
                self.give_back(inst);
                match result {
                    Ok(v) => Ok((v, inference)),
                    Err(e) => Err(with(CallError::from(e))),
                }
            }
        }
    }

    /// Close the call's log accounting: one line saying how many lines the budget dropped.
    fn finish_log(&self, store: &mut Store<PluginState>) {
        let state = store.data_mut();
        if let Some(summary) = self.shared.log.finish(&mut state.call_log) {
            tracing::warn!(target: "imbed::plugin", plugin = self.key.as_str(), "{summary}");
        }
    }

    fn give_back(&self, mut inst: Instance) {
        inst.permit = None;
        // An instance whose captured stderr is filling up is retired rather than reused: a full
        // pipe would make the guest's next write fail.
        if inst.stderr.contents().len() < STDERR_CAP / 2 {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.config.pool_size {
                idle.push(inst);
            }
        }
    }

    async fn info(&self) -> Result<wit::PluginInfo, CallError> {
        let mut inst = self.checkout().await?;
        let budget = self.arm(&mut inst.store);
        let outcome = tokio::time::timeout(budget, inst.exports.plugin.call_info(&mut inst.store))
            .await
            .map(|r| r.map(Ok));
        self.settle(inst, outcome)
    }

    /// Ask every instance the plugin may run to get ready (load its models), as the contract
    /// says: each instance holds its own copy, so warming one would leave the others cold for
    /// their first request. All are leased first, so each call reaches a different instance,
    /// then warmed at once, each on its own task (a model load is CPU work; tasks spread over
    /// the cores). One result per instance; failures are for the log.
    pub(crate) async fn warm_all(self: &Arc<Self>) -> Vec<Result<(), CallError>> {
        let leases =
            futures::future::join_all((0..self.config.pool_size.max(1)).map(|_| self.checkout()))
                .await;
        let warms = leases.into_iter().map(|lease| {
            let this = self.clone();
            tokio::spawn(async move {
                let mut inst = lease?;
                let budget = this.arm(&mut inst.store);
                let outcome =
                    tokio::time::timeout(budget, inst.exports.plugin.call_warm(&mut inst.store))
                        .await;
                this.settle(inst, outcome)
            })
        });
        futures::future::join_all(warms)
            .await
            .into_iter()
            .map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(CallError::new(
                        FailureKind::Other,
                        format!("warming panicked: {e}"),
                    ))
                })
            })
            .collect()
    }

    pub(crate) async fn text_model(&self) -> Result<ModelInfo, CallError> {
        if let Some(m) = self
            .text_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(m);
        }
        let info: ModelInfo =
            guest_call!(self, embedder, "a text embedder", call_text_model())?.into();
        check_model(&self.key, &info)?;
        *self.text_model.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.clone());
        Ok(info)
    }

    pub(crate) async fn image_model(&self) -> Result<ModelInfo, CallError> {
        if let Some(m) = self
            .image_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(m);
        }
        let info: ModelInfo = guest_call!(
            self,
            image_embedder,
            "an image embedder",
            call_image_model()
        )?
        .into();
        check_model(&self.key, &info)?;
        *self.image_model.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.clone());
        Ok(info)
    }

    /// Embed a batch of texts: the outer error fails the batch, each item has its own result.
    pub(crate) async fn embed_texts(
        &self,
        texts: &[String],
    ) -> Result<(ModelInfo, Vec<ItemResult>), CallError> {
        let mut model = self.text_model().await?;
        let (items, inference) =
            guest_call_traced!(self, embedder, "a text embedder", call_embed_texts(texts))?;
        let items = self.check_vectors(&model, texts.len(), items)?;
        model.inference = inference;
        Ok((model, items))
    }

    /// Embed a batch of images: the outer error fails the batch, each item has its own result.
    pub(crate) async fn embed_images(
        &self,
        images: &[ValidImage],
    ) -> Result<(ModelInfo, Vec<ItemResult>), CallError> {
        let mut model = self.image_model().await?;
        let mut wit_images = Vec::with_capacity(images.len());
        for image in images {
            let image = match self.config.image_max_side {
                Some(max_side) => self.fit(image, max_side).await?,
                None => image.clone(),
            };
            wit_images.push(to_wit_image(&image));
        }
        let (vectors, inference) = guest_call_traced!(
            self,
            image_embedder,
            "an image embedder",
            call_embed_images(&wit_images)
        )?;
        let vectors = self.check_vectors(&model, images.len(), vectors)?;
        model.inference = inference;
        Ok((model, vectors))
    }

    pub(crate) async fn describe(
        &self,
        image: &ValidImage,
        prompt: Option<&str>,
    ) -> Result<PluginDescription, CallError> {
        let max_side = self.config.image_max_side.unwrap_or(DESCRIBER_MAX_SIDE);
        let image = self.fit(image, max_side).await?;
        let wit_image = to_wit_image(&image);
        let d = guest_call!(
            self,
            describer,
            "a describer",
            call_describe(&wit_image, prompt)
        )?;
        check_description(&self.key, &self.config.budgets, &d)?;
        let d = PluginDescription::from(d);
        if d.text.trim().is_empty() {
            return Err(CallError::new(
                FailureKind::Malformed,
                format!("plugin {:?} returned an empty description", self.key),
            ));
        }
        Ok(d)
    }

    /// Downsize an image for this plugin, off the async threads.
    async fn fit(&self, image: &ValidImage, max_side: u32) -> Result<ValidImage, CallError> {
        if image.width.max(image.height) <= max_side {
            return Ok(image.clone());
        }
        let image = image.clone();
        tokio::task::spawn_blocking(move || crate::input::downsize(&image, max_side))
            .await
            .map_err(|e| CallError::new(FailureKind::Other, format!("downsizing panicked: {e}")))?
            .map_err(|e| CallError::new(FailureKind::BadInput, e.to_string()))
    }

    /// Hold a batch to the contract: one entry per input; each vector of the promised length (or
    /// the length first seen in this space), finite and not all zero. Normalises the vectors.
    fn check_vectors(
        &self,
        model: &ModelInfo,
        expected: usize,
        items: Vec<Result<Vec<f32>, wit::Error>>,
    ) -> Result<Vec<ItemResult>, CallError> {
        let malformed = |m: String| {
            CallError::new(FailureKind::Malformed, format!("plugin {:?} {m}", self.key))
        };
        if items.len() != expected {
            return Err(malformed(format!(
                "returned {} vectors for {expected} inputs",
                items.len()
            )));
        }
        let dims = match model.dimensions {
            Some(d) => Some(d),
            None => items.iter().flatten().next().map(|first| {
                *self
                    .learned_dims
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(model.space.clone())
                    .or_insert(first.len())
            }),
        };
        let check = |i: usize, mut v: Vec<f32>| -> ItemResult {
            let dims = dims.unwrap_or(v.len());
            if v.len() != dims {
                return Err(malformed(format!(
                    "returned a vector of length {} (item {i}) in space {:?}, whose vectors have {dims} dimensions",
                    v.len(),
                    model.space
                )));
            }
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(malformed(format!(
                    "returned a vector containing {bad} (item {i})"
                )));
            }
            let norm = v
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 {
                return Err(malformed(format!("returned an all-zero vector (item {i})")));
            }
            v.iter_mut()
                .for_each(|x| *x = (f64::from(*x) / norm) as f32);
            Ok(v)
        };
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, item)| item.map_err(CallError::from).and_then(|v| check(i, v)))
            .collect())
    }
}

/// Hold a lifted description to the plugin's output caps before it is copied any further.
fn check_description(
    key: &str,
    budgets: &budget::Budgets,
    d: &describer::Description,
) -> Result<(), CallError> {
    let (fields, longest) = d.structured.as_ref().map_or((0, 0), |s| {
        let all = s.objects.iter().chain(&s.tags).chain(&s.visible_text);
        (all.clone().count(), all.map(String::len).max().unwrap_or(0))
    });
    let longest = longest.max(d.model_id.len());
    budget::check_description(key, budgets, d.text.len(), fields, longest)
        .map_err(|m| CallError::new(FailureKind::Malformed, m))
}

fn check_model(key: &str, info: &ModelInfo) -> Result<(), CallError> {
    if info.space.trim().is_empty() || info.model.trim().is_empty() {
        return Err(CallError::new(
            FailureKind::Malformed,
            format!("plugin {key:?} reported a model without a model id or space id"),
        ));
    }
    if info.dimensions == Some(0) {
        return Err(CallError::new(
            FailureKind::Malformed,
            format!("plugin {key:?} reported 0 dimensions"),
        ));
    }
    Ok(())
}
