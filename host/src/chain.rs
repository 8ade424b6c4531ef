//! The priority chain: walk the configured steps in order until one answers, recording why each
//! earlier step did not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use serde::Serialize;

use crate::config::{Config, Step};
use crate::error::{Error, Result};
use crate::input::{self, ImageSource, ValidImage};
use crate::plugin::{CallError, ItemResult, ModelInfo, Plugin, Roles, Runtime};
use crate::store::{self, CachedDescription, ImageMeta, Store, StoreError};
use crate::types::{
    Attempt, Description, DescriptionSource, Embedding, FailureKind, PluginId, Provenance, StepKind,
};

/// One image to embed, with an optional description from the caller (used by `description`
/// steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    /// Where the image comes from.
    pub source: ImageSource,
    /// The caller's own description of the image.
    pub description: Option<String>,
}

impl ImageRequest {
    /// A request for one image with no description.
    pub fn new(source: ImageSource) -> Self {
        ImageRequest {
            source,
            description: None,
        }
    }

    /// Attach the caller's description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

/// The name of the model in a granted model directory, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelName {
    /// The name.
    pub name: String,
    /// `manifest` (its `imbed-model.json`) or `folder` (no manifest: the folder's name).
    pub from: &'static str,
}

impl ModelName {
    fn of(dir: &std::path::Path) -> Option<ModelName> {
        // Only the name, read as leniently as the plugins read it.
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        let manifest = std::fs::read(dir.join(crate::models::MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice::<Named>(&b).ok())
            .filter(|m| !m.name.trim().is_empty());
        match manifest {
            Some(m) => Some(ModelName {
                name: m.name,
                from: "manifest",
            }),
            None => crate::plugin::model_dir_name(dir).map(|name| ModelName {
                name,
                from: "folder",
            }),
        }
    }
}

/// A plugin's state as `imbed plugins` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// The config key.
    pub key: String,
    /// The component file.
    pub path: PathBuf,
    /// HTTP origins granted.
    pub http: Vec<String>,
    /// Environment variables granted.
    pub env: Vec<String>,
    /// Read-only model directory granted (mounted at `/model`).
    pub model_dir: Option<PathBuf>,
    /// What the model in that directory is called: its manifest's name, or (without an
    /// `imbed-model.json`) the folder's own name, which the plugin is told as `model_dir_name`.
    pub model_name: Option<ModelName>,
    /// TCP addresses granted for direct connections.
    pub sockets: Vec<String>,
    /// Memory cap in MiB.
    pub memory_mb: u64,
    /// Deadline per call in milliseconds.
    pub timeout_ms: u128,
    /// Instances that may run at once: the configured `instances`, capped at the core count
    /// for plugins that cannot reach the network (they only compute).
    pub instances: usize,
    /// Loaded or not, and why.
    pub health: PluginHealth,
    /// The `wasi:nn` grants: graphs and their files, the ONNX Runtime library, the native
    /// memory budget and what is counted against it. Absent for plugins granted no graphs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nn: Option<crate::runtime::nn::NnStatus>,
}

/// Check a component file as a plugin: compile it, list what it imports and exports, and load
/// it with nothing granted to see whether it answers. For `imbed plugins check`.
pub async fn check_plugin(
    path: &std::path::Path,
) -> Result<(crate::plugin::ComponentReport, PluginHealth)> {
    let bytes = tokio::fs::read(path).await.map_err(|source| {
        Error::Input(crate::input::InputError::Read {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let runtime = Arc::new(Runtime::new(None, &Default::default(), 0).map_err(Error::Engine)?);
    let report = runtime.inspect(&bytes).map_err(|e| {
        // The parser's message spans lines (a hex dump of the header); its first line says it.
        let first = e.lines().next().unwrap_or_default().to_string();
        Error::Usage(format!(
            "{} is not a valid WebAssembly component: {first}",
            path.display()
        ))
    })?;
    let cfg = crate::config::PluginConfig {
        path: path.to_path_buf(),
        memory_bytes: 512 << 20,
        timeout: std::time::Duration::from_secs(30),
        pool_size: 1,
        warm: false,
        image_max_side: None,
        grants: Default::default(),
        nn_memory_bytes: 0,
        budgets: Default::default(),
        settings: Default::default(),
    };
    let health = match runtime.load("check", &cfg).await {
        Ok(p) => PluginHealth::Ready {
            name: p.id.name.clone(),
            version: p.id.version.clone(),
            roles: p.roles(),
            from_cache: p.from_cache,
            load_ms: p.load_time.as_secs_f64() * 1000.0,
        },
        Err(e) => PluginHealth::Failed {
            kind: e.kind,
            message: e.message,
        },
    };
    Ok((report, health))
}

/// Whether one chain step can answer right now.
#[derive(Debug, Clone, Serialize)]
pub struct StepCheck {
    /// Index in the chain.
    pub step: usize,
    /// Kind of step.
    pub kind: StepKind,
    /// The plugins it uses.
    pub plugins: Vec<String>,
    /// Whether it answered a test image.
    pub ok: bool,
    /// The space it answered in, when it did.
    pub space: Option<String>,
    /// Why it did not, when it did not.
    pub problem: Option<String>,
}

/// Whether a plugin loaded.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum PluginHealth {
    /// Loaded and answered `info`.
    Ready {
        /// The name the plugin reports.
        name: String,
        /// The plugin's version.
        version: String,
        /// What it exports.
        roles: Roles,
        /// Whether the compiled component came from the on-disk cache.
        from_cache: bool,
        /// Time to read, compile or load from cache, and instantiate, in milliseconds.
        load_ms: f64,
    },
    /// Could not be loaded; its steps are skipped.
    Failed {
        /// The category.
        kind: FailureKind,
        /// What went wrong and what to do.
        message: String,
    },
}

enum Slot {
    Ready(Arc<Plugin>),
    Failed(CallError),
}

/// How an [`Imbed`] is set up beyond its config.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// Refuse image URLs that lead to non-public addresses (for untrusted callers).
    pub url_guard: Option<crate::input::UrlGuard>,
    /// The persistent cache: descriptions and vectors are looked up before plugins are called,
    /// and every image's answer is recorded for search.
    pub store: Option<Store>,
}

impl Options {
    /// Guard image URLs with `guard`.
    pub fn url_guard(mut self, guard: crate::input::UrlGuard) -> Self {
        self.url_guard = Some(guard);
        self
    }

    /// Use `store` as the persistent cache.
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }
}

struct Inner {
    config: Config,
    url_guard: Option<crate::input::UrlGuard>,
    store: Option<Store>,
    plugins: BTreeMap<String, Slot>,
    http: reqwest::Client,
    // Declared last: dropped after the plugins that use its engine.
    _runtime: Arc<Runtime>,
}

/// The embedding runtime: loaded plugins and the chain that uses them. Cheap to clone.
#[derive(Clone)]
pub struct Imbed {
    inner: Arc<Inner>,
}

/// What one step produced.
struct Found {
    plugin: PluginId,
    model: ModelInfo,
    vector: Vec<f32>,
    description: Option<Description>,
    /// Every plugin call behind it was answered by the cache.
    cached: bool,
}

/// Why one step did not answer.
struct StepError {
    plugin: Option<String>,
    /// The role the plugin failed in, when a call to it failed.
    role: Option<Role>,
    error: CallError,
}

/// What a step asks of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Describe,
    Text,
    Image,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Describe => "describer",
            Role::Text => "text embedder",
            Role::Image => "image embedder",
        }
    }
}

/// A plugin role that failed in a way that will not change within one request (unreachable,
/// timed out): later steps that need it again are skipped rather than waiting a second time.
struct Dead {
    plugin: String,
    role: Role,
    step: usize,
    kind: FailureKind,
}

/// The plugin roles a step needs, in the order it uses them.
fn needs(step: &Step, text_walk: bool) -> Vec<(&str, Role)> {
    match step {
        Step::DescribeThenEmbed {
            describer,
            embedder,
            ..
        } if !text_walk => {
            vec![
                (embedder.as_str(), Role::Text),
                (describer.as_str(), Role::Describe),
            ]
        }
        Step::DescribeThenEmbed { embedder, .. } | Step::Description { embedder } => {
            vec![(embedder.as_str(), Role::Text)]
        }
        Step::ImageEmbed { plugin } | Step::Hash { plugin } => {
            vec![(
                plugin.as_str(),
                if text_walk { Role::Text } else { Role::Image },
            )]
        }
    }
}

/// The step's outcome if a role it needs already failed for good in this request.
fn skip_if_dead(step: &Step, text_walk: bool, dead: &[Dead]) -> Option<StepError> {
    needs(step, text_walk).into_iter().find_map(|(plugin, role)| {
        dead.iter().find(|d| d.plugin == plugin && d.role == role).map(|d| StepError {
            plugin: Some(plugin.to_string()),
            role: Some(role),
            error: CallError::new(
                d.kind,
                format!(
                    "skipped: plugin {plugin:?} already failed as a {} in step {} of this request ({})",
                    role.name(),
                    d.step,
                    d.kind
                ),
            ),
        })
    })
}

/// Remember a failure that would only repeat if tried again in this request.
fn note_dead(index: usize, outcome: &std::result::Result<Found, StepError>, dead: &mut Vec<Dead>) {
    if let Err(StepError {
        plugin: Some(plugin),
        role: Some(role),
        error,
    }) = outcome
    {
        if matches!(error.kind, FailureKind::Unavailable | FailureKind::Timeout)
            && !dead.iter().any(|d| &d.plugin == plugin && d.role == *role)
        {
            dead.push(Dead {
                plugin: plugin.clone(),
                role: *role,
                step: index,
                kind: error.kind,
            });
        }
    }
}

impl StepError {
    fn of(plugin: &str, error: CallError) -> Self {
        StepError {
            plugin: Some(plugin.to_string()),
            role: None,
            error,
        }
    }

    fn in_role(plugin: &str, role: Role, error: CallError) -> Self {
        StepError {
            plugin: Some(plugin.to_string()),
            role: Some(role),
            error,
        }
    }

    fn not_applicable(message: impl Into<String>) -> Self {
        StepError {
            plugin: None,
            role: None,
            error: CallError::new(FailureKind::NotApplicable, message),
        }
    }
}

impl Imbed {
    /// Plugin log lines dropped past their log budgets since this runtime loaded, by plugin key.
    pub fn dropped_plugin_logs(&self) -> BTreeMap<String, u64> {
        self.inner._runtime.log_drops.snapshot()
    }

    /// Start the engine and load every plugin the config lists. A plugin that fails to load
    /// does not fail this call: its steps are skipped with the reason recorded.
    pub async fn new(config: Config) -> Result<Imbed> {
        Imbed::with_options(config, Options::default()).await
    }

    /// [`Imbed::new`] with [`Options`].
    pub async fn with_options(config: Config, options: Options) -> Result<Imbed> {
        let nn_plugins = config
            .plugins
            .values()
            .filter(|p| !p.grants.nn.is_empty())
            .count();
        let runtime = Arc::new(
            Runtime::new(config.cache_dir.clone(), &config.nn, nn_plugins)
                .map_err(Error::Engine)?,
        );
        let loads = config.plugins.iter().map(|(key, cfg)| {
            let runtime = runtime.clone();
            async move {
                let slot = match runtime.load(key, cfg).await {
                    Ok(p) => Slot::Ready(Arc::new(p)),
                    Err(e) => {
                        tracing::info!(plugin = key.as_str(), "plugin not loaded: {}", e.message);
                        Slot::Failed(e)
                    }
                };
                (key.clone(), slot)
            }
        });
        let plugins: BTreeMap<String, Slot> =
            futures::future::join_all(loads).await.into_iter().collect();
        for (key, slot) in &plugins {
            if let Slot::Ready(plugin) = slot {
                if plugin.config.warm {
                    // In the background: warming may take as long as loading a model, and the
                    // first request should not wait behind it when it needs another plugin.
                    let (plugin, key) = (plugin.clone(), key.clone());
                    tokio::spawn(async move {
                        let results = plugin.warm_all().await;
                        let total = results.len();
                        let mut warmed = 0;
                        for result in results {
                            match result {
                                Ok(()) => warmed += 1,
                                Err(e) => tracing::warn!(
                                    plugin = key.as_str(),
                                    "warming failed: {}",
                                    e.message
                                ),
                            }
                        }
                        tracing::info!(
                            plugin = key.as_str(),
                            "warmed {warmed} of {total} instances"
                        );
                    });
                }
            }
        }
        let user_agent = concat!("imbed/", env!("CARGO_PKG_VERSION"));
        let http = match &options.url_guard {
            Some(guard) => guard.client(user_agent).map_err(Error::Engine)?,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(5))
                .connect_timeout(config.input.download_timeout)
                .user_agent(user_agent)
                .build()
                .map_err(|e| Error::Engine(format!("cannot build the HTTP client: {e}")))?,
        };
        Ok(Imbed {
            inner: Arc::new(Inner {
                url_guard: options.url_guard,
                store: options.store,
                config,
                plugins,
                http,
                _runtime: runtime,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The embedding space each chain step answers images in, as far as it can tell now
    /// (`None` for a step whose plugin is not loaded or whose backend cannot say).
    pub async fn step_spaces(&self) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for step in &self.inner.config.chain.steps {
            let space = match step {
                Step::DescribeThenEmbed { embedder, .. } | Step::Description { embedder } => {
                    match self.plugin(embedder) {
                        Ok(p) => p.text_model().await.ok().map(|m| m.space),
                        Err(_) => None,
                    }
                }
                Step::ImageEmbed { plugin } | Step::Hash { plugin } => match self.plugin(plugin) {
                    Ok(p) => p.image_model().await.ok().map(|m| m.space),
                    Err(_) => None,
                },
            };
            out.push(space);
        }
        out
    }

    /// The persistent cache, when one is in use.
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// Run a cache operation off the async threads (SQLite blocks). A cache failure is logged
    /// and treated as a miss: the cache may make imbed faster, never make it fail.
    async fn cache<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> std::result::Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.inner.store.clone()?;
        match tokio::task::spawn_blocking(move || op(&store)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!("cache: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("cache task failed: {e}");
                None
            }
        }
    }

    /// Every configured plugin and whether it loaded.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.inner
            .plugins
            .iter()
            .map(|(key, slot)| {
                let cfg = &self.inner.config.plugins[key];
                PluginStatus {
                    key: key.clone(),
                    path: cfg.path.clone(),
                    http: cfg
                        .grants
                        .http
                        .iter()
                        .map(|o| o.ascii_serialization())
                        .collect(),
                    env: cfg.grants.env.clone(),
                    model_dir: cfg.grants.model_dir.clone(),
                    model_name: cfg.grants.model_dir.as_deref().and_then(ModelName::of),
                    sockets: cfg.grants.sockets.iter().map(|a| a.to_string()).collect(),
                    memory_mb: cfg.memory_bytes >> 20,
                    timeout_ms: cfg.timeout.as_millis(),
                    instances: match slot {
                        Slot::Ready(p) => p.config.pool_size,
                        Slot::Failed(_) => cfg.pool_size,
                    },
                    nn: match slot {
                        Slot::Ready(p) => p.nn_status(),
                        Slot::Failed(_) => self.inner._runtime.nn_status(key, cfg),
                    },
                    health: match slot {
                        Slot::Ready(p) => PluginHealth::Ready {
                            name: p.id.name.clone(),
                            version: p.id.version.clone(),
                            roles: p.roles(),
                            from_cache: p.from_cache,
                            load_ms: p.load_time.as_secs_f64() * 1000.0,
                        },
                        Slot::Failed(e) => PluginHealth::Failed {
                            kind: e.kind,
                            message: e.message.clone(),
                        },
                    },
                }
            })
            .collect()
    }

    /// Hash the granted wasi-nn graph files of the loaded plugins that were not hashed yet, so
    /// [`Imbed::plugins`] can say whether each is verified (`imbed plugins` does this first;
    /// `plugins` itself never hashes, since the server calls it while answering requests).
    pub async fn verify_nn_graphs(&self) {
        for slot in self.inner.plugins.values() {
            if let Slot::Ready(p) = slot {
                p.verify_nn_files().await;
            }
        }
    }

    fn plugin(&self, key: &str) -> std::result::Result<&Arc<Plugin>, StepError> {
        match self.inner.plugins.get(key) {
            Some(Slot::Ready(p)) => Ok(p),
            Some(Slot::Failed(e)) => Err(StepError::of(key, e.clone())),
            None => Err(StepError::of(
                key,
                CallError::new(
                    FailureKind::NotInstalled,
                    format!("no plugin {key:?} is configured"),
                ),
            )),
        }
    }

    /// Read and validate an image without embedding it.
    pub async fn load_image(&self, source: &ImageSource) -> Result<ValidImage> {
        let limits = self.inner.config.input.clone();
        let guard = self.inner.url_guard.as_ref();
        let bytes = input::read_source(source, &limits, &self.inner.http, guard).await?;
        let label = source.label();
        let validated =
            tokio::task::spawn_blocking(move || input::validate(bytes, &label, &limits))
                .await
                .map_err(|e| Error::Internal(format!("image validation panicked: {e}")))?;
        Ok(validated?)
    }

    /// Embed one image: read and validate it, then walk the chain.
    pub async fn embed_image(&self, request: ImageRequest) -> Result<Embedding> {
        let image = self.load_image(&request.source).await?;
        self.embed_valid_image(&image, request.description.as_deref())
            .await
    }

    /// Embed many images, at most `concurrency` at once. Results come in input order, each on
    /// its own: one bad input does not stop the rest.
    pub fn embed_images(
        &self,
        requests: Vec<ImageRequest>,
        concurrency: usize,
    ) -> BoxStream<'static, Result<Embedding>> {
        let this = self.clone();
        stream::iter(requests)
            .map(move |r| {
                let this = this.clone();
                async move { this.embed_image(r).await }
            })
            .buffered(concurrency.max(1))
            .boxed()
    }

    /// Walk the chain for an image that has already been validated.
    pub async fn embed_valid_image(
        &self,
        image: &ValidImage,
        description: Option<&str>,
    ) -> Result<Embedding> {
        let description = description.map(str::trim).filter(|d| !d.is_empty());
        let mut attempts = Vec::new();
        let mut dead = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            let outcome = match skip_if_dead(step, false, &dead) {
                Some(skip) => Err(skip),
                None => self.image_step(step, image, description).await,
            };
            note_dead(index, &outcome, &mut dead);
            if let Some(embedding) = self.accept(index, step.kind(), outcome, &mut attempts) {
                // Recorded before returning, so a caller that saw the answer (an index run that
                // is then killed) finds it in the cache next time.
                let meta = ImageMeta::of(image);
                let entry = embedding.clone();
                self.cache(move |s| s.put_entry(&meta, &entry)).await;
                return Ok(embedding);
            }
        }
        Err(Error::Exhausted { attempts })
    }

    /// Describe an image with the chain's describers, in chain order, without embedding.
    pub async fn describe(&self, image: &ValidImage, prompt: Option<&str>) -> Result<Description> {
        let mut attempts = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            let Step::DescribeThenEmbed {
                describer,
                prompt: step_prompt,
                ..
            } = step
            else {
                continue;
            };
            let outcome = async {
                let plugin = self.plugin(describer)?;
                let d = plugin
                    .describe(image, prompt.or(step_prompt.as_deref()))
                    .await
                    .map_err(|e| StepError::of(describer, e))?;
                Ok::<_, StepError>(Description {
                    text: d.text,
                    source: DescriptionSource::Model,
                    plugin: Some(plugin.id.clone()),
                    model: Some(d.model),
                    structured: d.structured,
                })
            }
            .await;
            match outcome {
                Ok(d) => return Ok(d),
                Err(e) => attempts.push(Attempt {
                    step: index,
                    step_kind: step.kind(),
                    plugin: e.plugin,
                    kind: e.error.kind,
                    message: e.error.message,
                    inference: e.error.inference,
                }),
            }
        }
        if attempts.is_empty() {
            return Err(Error::Usage(
                "the chain has no describe-then-embed step, so nothing can describe images".into(),
            ));
        }
        Err(Error::Exhausted { attempts })
    }

    /// Try every step on its own with a small test image and a test description: which steps
    /// can answer right now, and why the others cannot.
    pub async fn check_steps(&self) -> Vec<StepCheck> {
        let probe = probe_image();
        let mut checks = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            let outcome = match &probe {
                Ok(image) => {
                    self.image_step(step, image, Some("a test image for imbed doctor"))
                        .await
                }
                Err(e) => Err(StepError::not_applicable(e.clone())),
            };
            let plugins = step.plugins().iter().map(|p| p.to_string()).collect();
            checks.push(match outcome {
                Ok(found) => StepCheck {
                    step: index,
                    kind: step.kind(),
                    plugins,
                    ok: true,
                    space: Some(found.model.space),
                    problem: None,
                },
                Err(e) => StepCheck {
                    step: index,
                    kind: step.kind(),
                    plugins,
                    ok: false,
                    space: None,
                    problem: Some(format!("{}: {}", e.error.kind, e.error.message)),
                },
            });
        }
        checks
    }

    /// Embed a text query into the space of the chain's image results, walking the same chain
    /// with each step's text side.
    pub async fn embed_text(&self, text: &str) -> Result<Embedding> {
        if text.trim().is_empty() {
            return Err(Error::Usage("the text to embed is empty".into()));
        }
        let mut attempts = Vec::new();
        let mut dead = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            let outcome = match skip_if_dead(step, true, &dead) {
                Some(skip) => Err(skip),
                None => self.text_step(step, text).await,
            };
            note_dead(index, &outcome, &mut dead);
            if let Some(embedding) = self.accept(index, step.kind(), outcome, &mut attempts) {
                return Ok(embedding);
            }
        }
        Err(Error::Exhausted { attempts })
    }

    /// Turn a step's outcome into the final embedding, or record why it is not one.
    fn accept(
        &self,
        index: usize,
        step_kind: StepKind,
        outcome: std::result::Result<Found, StepError>,
        attempts: &mut Vec<Attempt>,
    ) -> Option<Embedding> {
        let mut record = |plugin: Option<String>, e: CallError| {
            tracing::debug!(step = index, %step_kind, "step did not answer: {}", e.message);
            attempts.push(Attempt {
                step: index,
                step_kind,
                plugin,
                kind: e.kind,
                message: e.message,
                inference: e.inference,
            });
        };
        match outcome {
            Err(e) => {
                record(e.plugin, e.error);
                None
            }
            Ok(found) => {
                if let Some(required) = &self.inner.config.chain.require_space {
                    if !crate::types::space_meets(&found.model.space, required) {
                        record(
                            Some(found.plugin.key.clone()),
                            space_mismatch(&found.model.space, required),
                        );
                        return None;
                    }
                }
                let dimensions = found.vector.len();
                Some(Embedding {
                    vector: found.vector,
                    provenance: Provenance {
                        step: index,
                        step_kind,
                        plugin: found.plugin,
                        model: found.model.model,
                        space: found.model.space,
                        dimensions,
                        description: found.description,
                        degraded: index > 0,
                        cached: found.cached,
                        attempts: std::mem::take(attempts),
                        inference: found.model.inference,
                    },
                })
            }
        }
    }

    /// With `require_space` set, refuse a step before doing its (possibly slow) work when its
    /// model already says it answers in another space.
    fn precheck(&self, key: &str, model: &ModelInfo) -> std::result::Result<(), StepError> {
        match &self.inner.config.chain.require_space {
            Some(required) if !crate::types::space_meets(&model.space, required) => {
                Err(StepError::of(key, space_mismatch(&model.space, required)))
            }
            _ => Ok(()),
        }
    }

    async fn embed_one_text(
        &self,
        key: &str,
        text: &str,
        description: Description,
    ) -> std::result::Result<Found, StepError> {
        let (plugin, model, mut items) = self.cached_text_batch(key, &[text.to_string()]).await?;
        let (vector, cached) = items.remove(0);
        Ok(Found {
            plugin,
            model,
            vector: vector.map_err(|e| StepError::of(key, e))?,
            description: Some(description),
            cached,
        })
    }

    /// One text embedder, one batch: checks the space first (before any slow work), answers
    /// texts already embedded in that space from the cache, sends the rest to the plugin in one
    /// call and remembers them. Each item says whether the cache answered it.
    async fn cached_text_batch(
        &self,
        key: &str,
        texts: &[String],
    ) -> std::result::Result<(PluginId, ModelInfo, Vec<(ItemResult, bool)>), StepError> {
        let plugin = self.plugin(key)?;
        let model = plugin
            .text_model()
            .await
            .map_err(|e| StepError::in_role(key, Role::Text, e))?;
        self.precheck(key, &model)?;
        let keys: Vec<String> = texts.iter().map(|t| store::text_key(t)).collect();
        let space = model.space.clone();
        let found = {
            let keys = keys.clone();
            self.cache(move |s| {
                keys.iter()
                    .map(|k| s.text_vector(k, &space))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .await
            .unwrap_or_else(|| vec![None; texts.len()])
        };
        let mut out: Vec<Option<(ItemResult, bool)>> = found
            .into_iter()
            .map(|v| {
                v.filter(|v| model.dimensions.is_none_or(|d| d == v.len()))
                    .map(|v| (Ok(v), true))
            })
            .collect();
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        let mut model = model;
        if !missing.is_empty() {
            let batch: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
            let (answered_model, items) = plugin
                .embed_texts(&batch)
                .await
                .map_err(|e| StepError::in_role(key, Role::Text, e))?;
            model = answered_model;
            let mut fresh = Vec::new();
            for (&i, item) in missing.iter().zip(items) {
                if let Ok(v) = &item {
                    fresh.push((keys[i].clone(), v.clone()));
                }
                out[i] = Some((item, false));
            }
            let (space, model_id) = (model.space.clone(), model.model.clone());
            self.cache(move |s| {
                fresh
                    .iter()
                    .try_for_each(|(k, v)| s.put_text_vector(k, &space, &model_id, v))
            })
            .await;
        }
        let items = out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| (Err(CallError::new(FailureKind::Other, "no answer")), false))
            })
            .collect();
        Ok((plugin.id.clone(), model, items))
    }

    async fn embed_one_image(
        &self,
        key: &str,
        image: &ValidImage,
    ) -> std::result::Result<Found, StepError> {
        let plugin = self.plugin(key)?;
        let model = plugin
            .image_model()
            .await
            .map_err(|e| StepError::in_role(key, Role::Image, e))?;
        self.precheck(key, &model)?;
        let (sha, space) = (image.sha256.clone(), model.space.clone());
        if let Some(vector) = self
            .cache(move |s| s.image_vector(&sha, &space))
            .await
            .flatten()
            .filter(|v| model.dimensions.is_none_or(|d| d == v.len()))
        {
            return Ok(Found {
                plugin: plugin.id.clone(),
                model,
                vector,
                description: None,
                cached: true,
            });
        }
        let (model, mut vectors) = plugin
            .embed_images(std::slice::from_ref(image))
            .await
            .map_err(|e| StepError::in_role(key, Role::Image, e))?;
        let vector = vectors.remove(0).map_err(|e| StepError::of(key, e))?;
        let (sha, space, model_id, v) = (
            image.sha256.clone(),
            model.space.clone(),
            model.model.clone(),
            vector.clone(),
        );
        self.cache(move |s| s.put_image_vector(&sha, &space, &model_id, &v))
            .await;
        Ok(Found {
            plugin: plugin.id.clone(),
            model,
            vector,
            description: None,
            cached: false,
        })
    }

    async fn image_step(
        &self,
        step: &Step,
        image: &ValidImage,
        caller_description: Option<&str>,
    ) -> std::result::Result<Found, StepError> {
        match step {
            Step::DescribeThenEmbed {
                describer,
                embedder,
                prompt,
            } => {
                let describe_with = self.plugin(describer)?;
                // Check the embedder first: describing is the slow part, and is wasted when the
                // embedder cannot answer or answers in the wrong space.
                let text_plugin = self.plugin(embedder)?;
                let model = text_plugin
                    .text_model()
                    .await
                    .map_err(|e| StepError::in_role(embedder, Role::Text, e))?;
                self.precheck(embedder, &model)?;
                // A description depends on the image, the vision model and the prompt, not on
                // the embedding model: swapping the embedder reuses it.
                let identity = store::describer_identity(
                    &describe_with.id.name,
                    &describe_with.config.settings,
                );
                let prompt_key = prompt.clone().unwrap_or_default();
                let cached = {
                    let (sha, id, p) = (image.sha256.clone(), identity.clone(), prompt_key.clone());
                    self.cache(move |s| s.description(&sha, &id, &p))
                        .await
                        .flatten()
                };
                let (description, described_from_cache) = match cached {
                    Some(c) => (
                        Description {
                            text: c.text,
                            source: DescriptionSource::Model,
                            plugin: Some(describe_with.id.clone()),
                            model: Some(c.model),
                            structured: c.structured.and_then(|j| serde_json::from_str(&j).ok()),
                        },
                        true,
                    ),
                    None => {
                        let d = describe_with
                            .describe(image, prompt.as_deref())
                            .await
                            .map_err(|e| StepError::in_role(describer, Role::Describe, e))?;
                        let row = CachedDescription {
                            text: d.text.clone(),
                            plugin: describe_with.id.name.clone(),
                            model: d.model.clone(),
                            structured: d
                                .structured
                                .as_ref()
                                .and_then(|st| serde_json::to_string(st).ok()),
                        };
                        let sha = image.sha256.clone();
                        self.cache(move |s| s.put_description(&sha, &identity, &prompt_key, &row))
                            .await;
                        (
                            Description {
                                text: d.text,
                                source: DescriptionSource::Model,
                                plugin: Some(describe_with.id.clone()),
                                model: Some(d.model),
                                structured: d.structured,
                            },
                            false,
                        )
                    }
                };
                let text = description.text.clone();
                let mut found = self.embed_one_text(embedder, &text, description).await?;
                found.cached &= described_from_cache;
                Ok(found)
            }
            Step::ImageEmbed { plugin } | Step::Hash { plugin } => {
                self.embed_one_image(plugin, image).await
            }
            Step::Description { embedder } => match caller_description {
                None => Err(StepError::not_applicable(
                    "no description was given with the image (--description)",
                )),
                Some(text) => {
                    let description = Description {
                        text: text.to_string(),
                        source: DescriptionSource::Caller,
                        plugin: None,
                        model: None,
                        structured: None,
                    };
                    self.embed_one_text(embedder, text, description).await
                }
            },
        }
    }

    /// The plugin that embeds text for `step`, checked to land in the step's own space.
    async fn text_embedder<'a>(&self, step: &'a Step) -> std::result::Result<&'a str, StepError> {
        match step {
            Step::DescribeThenEmbed { embedder, .. } | Step::Description { embedder } => {
                Ok(embedder)
            }
            Step::ImageEmbed { plugin: key } | Step::Hash { plugin: key } => {
                let plugin = self.plugin(key)?;
                if !plugin.roles().text_embedder {
                    return Err(StepError::not_applicable(format!(
                        "plugin {key:?} embeds images only, not text"
                    )));
                }
                if step.kind() == StepKind::ImageEmbed {
                    // Text from an image embedder is only useful when it lands in the image space.
                    let image_space = plugin
                        .image_model()
                        .await
                        .map_err(|e| StepError::of(key, e))?
                        .space;
                    let text_space = plugin
                        .text_model()
                        .await
                        .map_err(|e| StepError::of(key, e))?
                        .space;
                    if image_space != text_space {
                        return Err(StepError::not_applicable(format!(
                            "plugin {key:?} embeds text in {text_space:?}, not in its image space {image_space:?}"
                        )));
                    }
                }
                Ok(key)
            }
        }
    }

    async fn text_step(&self, step: &Step, text: &str) -> std::result::Result<Found, StepError> {
        let key = self.text_embedder(step).await?;
        self.embed_one_text(key, text, query_description(text))
            .await
    }

    /// Embed many texts (queries) in batches: each step gets every text still unanswered in one
    /// call, so a backend such as Ollama sees one request per step, not one per text. Results
    /// come in input order; an item that fails moves on to the next step alone.
    pub async fn embed_texts(&self, texts: &[String]) -> Vec<Result<Embedding>> {
        let mut results: Vec<Option<Result<Embedding>>> = texts
            .iter()
            .map(|t| {
                t.trim()
                    .is_empty()
                    .then(|| Err(Error::Usage("the text to embed is empty".into())))
            })
            .collect();
        let mut attempts: Vec<Vec<Attempt>> = vec![Vec::new(); texts.len()];
        let mut dead = Vec::new();
        let mut pending: Vec<usize> = (0..texts.len()).filter(|&i| results[i].is_none()).collect();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let kind = step.kind();
            let batch: Vec<String> = pending.iter().map(|&i| texts[i].clone()).collect();
            let answered = match skip_if_dead(step, true, &dead) {
                Some(skip) => Err(skip),
                None => {
                    async {
                        let key = self.text_embedder(step).await?;
                        let (plugin, model, items) = self.cached_text_batch(key, &batch).await?;
                        Ok::<_, StepError>((key, plugin, model, items))
                    }
                    .await
                }
            };
            if let Err(e) = &answered {
                let probe = Err(StepError {
                    plugin: e.plugin.clone(),
                    role: e.role,
                    error: e.error.clone(),
                });
                note_dead(index, &probe, &mut dead);
            }
            let mut still = Vec::new();
            match answered {
                Err(e) => {
                    for &i in &pending {
                        let e = StepError {
                            plugin: e.plugin.clone(),
                            role: e.role,
                            error: e.error.clone(),
                        };
                        self.accept(index, kind, Err(e), &mut attempts[i]);
                    }
                    continue;
                }
                Ok((key, plugin, model, items)) => {
                    for (&i, (item, cached)) in pending.iter().zip(items) {
                        let outcome = item
                            .map(|vector| Found {
                                plugin: plugin.clone(),
                                model: model.clone(),
                                vector,
                                description: Some(query_description(&texts[i])),
                                cached,
                            })
                            .map_err(|e| StepError::of(key, e));
                        match self.accept(index, kind, outcome, &mut attempts[i]) {
                            Some(embedding) => results[i] = Some(Ok(embedding)),
                            None => still.push(i),
                        }
                    }
                }
            }
            pending = still;
        }
        results
            .into_iter()
            .zip(attempts)
            .map(|(r, attempts)| r.unwrap_or(Err(Error::Exhausted { attempts })))
            .collect()
    }
}

fn query_description(text: &str) -> Description {
    Description {
        text: text.to_string(),
        source: DescriptionSource::Query,
        plugin: None,
        model: None,
        structured: None,
    }
}

/// A 64x64 gradient: small enough to be quick, real enough for every step.
fn probe_image() -> std::result::Result<ValidImage, String> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    input::validate(
        png,
        "<doctor probe>",
        &crate::config::InputLimits::default(),
    )
    .map_err(|e| e.to_string())
}

fn space_mismatch(space: &str, required: &str) -> CallError {
    CallError::new(
        FailureKind::SpaceMismatch,
        format!("answers in space {space:?}, but the config requires {required:?} ([chain] require_space)"),
    )
}
