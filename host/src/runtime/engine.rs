//! The shared wasmtime engine with its epoch ticker and linker, and loading a plugin from its
//! component file into a [`Plugin`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use super::budget;
use super::call::CallError;
use super::contract::{self, contract_version, supported_list, Indices, NEWEST, SUPPORTED};
use super::host_fns::{model_dir_name, Shared};
use super::nn;
use super::plugin::Plugin;
use super::pool::{Endpoint, Pool};
use super::sandbox::{nn_view, PluginState};
use crate::config::PluginConfig;
use crate::error::EngineError;
use crate::types::{FailureKind, PluginId};

/// How often the engine's epoch advances: the granularity of deadlines and of yielding.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The shared engine, linker and compile cache.
pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<PluginState>,
    pub(crate) cache_dir: Option<PathBuf>,
    client: reqwest::Client,
    stop_ticker: Arc<AtomicBool>,
    /// Plugin log lines dropped past their budgets, by plugin, for `/metrics`.
    pub(crate) log_drops: budget::DropCounts,
    /// Components this runtime compiled, by the SHA-256 of their bytes: inspecting and then
    /// loading the same file (`imbed plugins check`) compiles it once, not twice.
    pub(crate) compiled: Mutex<HashMap<[u8; 32], Component>>,
    pub(crate) nn: Arc<nn::NnHost>,
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
    ) -> Result<Runtime, EngineError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(EngineError::Wasmtime)?;

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
                .map_err(EngineError::EpochThread)?;
        }

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(EngineError::Wasmtime)?;
        contract::add_to_linker(&mut linker).map_err(EngineError::Wasmtime)?;
        nn::add_to_linker(&mut linker, nn_view).map_err(EngineError::Wasmtime)?;

        let client = reqwest::Client::builder()
            // Plugins see every hop: a redirect to an origin that is not granted must not be
            // followed behind the grant check's back.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("imbed/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| EngineError::HttpClient {
                what: "plugin",
                source,
            })?;

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
}

impl Runtime {
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
        let (component, from_cache, digest) = tokio::task::spawn_blocking(move || {
            let digest = super::compile::component_digest(&bytes);
            this.compile_digested(&bytes, digest)
                .map(|(c, from_cache)| (c, from_cache, digest))
        })
        .await
        .map_err(|e| not_installed(format!("compiling the plugin panicked: {e}")))?
        .map_err(|e| {
            not_installed(format!(
                "{} is not a valid WebAssembly component: {e}",
                cfg.path.display()
            ))
        })?;
        let found = contract_version(&self.engine, &component);
        if let Some(found) = &found {
            if !SUPPORTED.contains(&found.as_str()) {
                return Err(not_installed(format!(
                    "{} is built for imbed:plugin@{found}, but this host serves {}: rebuild the plugin against wit/{NEWEST}, or use an imbed release that serves {found}",
                    cfg.path.display(),
                    supported_list()
                )));
            }
        }
        // A component that exports no contract at all is held to the newest: the message then
        // says what it should export.
        let version = found.as_deref().unwrap_or(NEWEST);
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            not_installed(format!(
                "{} imports something imbed does not provide (is it built for {}?): {e:#}",
                cfg.path.display(),
                supported_list()
            ))
        })?;
        let indices = Indices::new(version, &pre).map_err(|e| {
            not_installed(format!(
                "{} does not export imbed:plugin/plugin@{version} as this host expects ({e}): rebuild it against wit/{NEWEST}",
                cfg.path.display()
            ))
        })?;
        let shared = Shared {
            key: key.to_string(),
            settings: cfg.settings.clone(),
            model_dir_name: cfg.grants.model_dir.as_deref().and_then(model_dir_name),
            http_origins: cfg.grants.http.clone(),
            client: self.client.clone(),
            nn: self.nn.plugin(key, cfg),
            log: Arc::new(budget::PluginLogBudget::new(
                key,
                cfg.budgets,
                self.log_drops.clone(),
            )),
        };
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
        let endpoints = if cfg.endpoints.is_empty() {
            vec![Endpoint::new(None, Arc::new(shared), cfg.pool_size)]
        } else {
            // The same component and sandbox for each, told its own backend and granted only
            // that backend's origin.
            cfg.endpoints
                .iter()
                .map(|e| {
                    let mut settings = shared.settings.clone();
                    settings.insert("base_url".to_string(), e.base_url.clone());
                    let own = Shared {
                        settings,
                        http_origins: vec![e.origin.clone()],
                        ..shared.clone()
                    };
                    Endpoint::new(Some(e.base_url.clone()), Arc::new(own), e.concurrency)
                })
                .collect()
        };
        let pool = Pool::new(endpoints, !cfg.endpoints.is_empty(), cfg.breaker);
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
            pool,
            learned_dims: Mutex::new(HashMap::new()),
            from_cache,
            component_sha256: crate::input::hex(&digest),
            load_time: Duration::ZERO,
        };
        let info = plugin.info().await?;
        plugin.id.name = info.name;
        plugin.id.version = info.version;
        plugin.load_time = started.elapsed();
        Ok(plugin)
    }
}
