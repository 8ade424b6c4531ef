//! [`Imbed`]: the loaded plugins and what a caller asks of them; set up with [`ImbedOptions`].

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};

use super::status::{ModelName, PluginHealth, PluginStatus};
use super::walk::Walk;
use crate::config::{Config, Step};
use crate::error::{EngineError, Error, Internal, Result};
use crate::input::{self, ImageSource, ValidImage};
use crate::runtime::{CallError, EndpointStatus, Plugin, Runtime};
use crate::store::Cache;
use crate::types::{Description, Embedding, FailureKind, Purpose, SpaceId};

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

pub(super) enum Slot {
    Ready(Arc<Plugin>),
    Failed(CallError),
}

/// How an [`Imbed`] is set up beyond its config.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImbedOptions {
    /// Refuse image URLs that lead to non-public addresses (for untrusted callers).
    pub url_guard: Option<crate::input::UrlGuard>,
    /// The persistent cache: descriptions and vectors are looked up before plugins are called,
    /// and every image's answer is recorded for search.
    pub store: Option<Cache>,
}

impl ImbedOptions {
    /// Guard image URLs with `guard`.
    pub fn url_guard(mut self, guard: crate::input::UrlGuard) -> Self {
        self.url_guard = Some(guard);
        self
    }

    /// Use `store` as the persistent cache.
    pub fn store(mut self, store: Cache) -> Self {
        self.store = Some(store);
        self
    }
}

pub(super) struct Inner {
    pub(super) config: Config,
    pub(super) url_guard: Option<crate::input::UrlGuard>,
    pub(super) store: Option<Cache>,
    pub(super) plugins: BTreeMap<String, Slot>,
    pub(super) http: reqwest::Client,
    /// Space claims the store granted this runtime lately, by (space, plugin key): see
    /// `cached.rs`. A reload builds a new runtime, so a changed config starts afresh.
    pub(super) claims: super::cached::GrantedClaims,
    /// Whether the first step's backend answers (`backend_capacity`).
    pub(super) first_step: super::capacity::FirstStep,
    // Declared last: dropped after the plugins that use its engine.
    _runtime: Arc<Runtime>,
}

/// Bring endpoints that the breaker took out back through their health probe, after the
/// cool-down. Ends when the plugin is dropped (a reload builds new plugins).
fn spawn_prober(plugin: &Arc<Plugin>) {
    let weak = Arc::downgrade(plugin);
    let tick = (plugin.pool.breaker.cooldown / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(plugin) = weak.upgrade() else {
                break;
            };
            for at in plugin.pool.due_for_probe() {
                plugin.probe(at).await;
            }
        }
    });
}

/// The embedding runtime: loaded plugins and the chain that uses them. Cheap to clone.
#[derive(Clone)]
pub struct Imbed {
    pub(super) inner: Arc<Inner>,
}

impl Imbed {
    /// Start the engine and load every plugin the config lists. A plugin that fails to load
    /// does not fail this call: its steps are skipped with the reason recorded.
    pub async fn new(config: Config) -> Result<Imbed> {
        Imbed::with_options(config, ImbedOptions::default()).await
    }

    /// [`Imbed::new`] with [`ImbedOptions`].
    pub async fn with_options(config: Config, options: ImbedOptions) -> Result<Imbed> {
        let nn_plugins = config
            .plugins
            .values()
            .filter(|p| !p.grants.nn.is_empty())
            .count();
        let runtime = Arc::new(Runtime::new(
            config.cache_dir.clone(),
            &config.nn,
            nn_plugins,
        )?);
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
                if plugin.pool.pooled {
                    spawn_prober(plugin);
                }
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
            Some(guard) => guard
                .client(user_agent)
                .map_err(|source| EngineError::HttpClient {
                    what: "guarded",
                    source,
                })?,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(5))
                .connect_timeout(config.input.download_timeout)
                .user_agent(user_agent)
                .build()
                .map_err(|source| EngineError::HttpClient {
                    what: "download",
                    source,
                })?,
        };
        Ok(Imbed {
            inner: Arc::new(Inner {
                url_guard: options.url_guard,
                store: options.store,
                config,
                plugins,
                http,
                claims: Default::default(),
                first_step: Default::default(),
                _runtime: runtime,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Plugin log lines dropped past their log budgets since this runtime loaded, by plugin key.
    pub fn dropped_plugin_logs(&self) -> BTreeMap<String, u64> {
        self.inner._runtime.log_drops.snapshot()
    }

    /// The embedding space each chain step answers images in, as far as it can tell now
    /// (`None` for a step whose plugin is not loaded or whose backend cannot say).
    pub async fn step_spaces(&self) -> Vec<Option<SpaceId>> {
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

    /// The endpoints of each pooled plugin (`[[plugins.X.endpoints]]` or a `base_url` list):
    /// whether each is in the pool, and its requests in flight.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<EndpointStatus>> {
        self.inner
            .plugins
            .iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Ready(p) if p.pool.pooled => Some((key.clone(), p.pool.status())),
                _ => None,
            })
            .collect()
    }

    /// The persistent cache, when one is in use.
    pub fn store(&self) -> Option<&Cache> {
        self.inner.store.as_ref()
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

    /// The loaded plugin under `key`, or why there is none.
    pub(super) fn plugin(&self, key: &str) -> std::result::Result<&Arc<Plugin>, CallError> {
        match self.inner.plugins.get(key) {
            Some(Slot::Ready(p)) => Ok(p),
            Some(Slot::Failed(e)) => Err(e.clone()),
            None => Err(CallError::new(
                FailureKind::NotInstalled,
                format!("no plugin {key:?} is configured"),
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
                .map_err(|_| Error::Internal(Internal::Panicked("image validation")))?;
        Ok(validated?)
    }

    /// Walk the chain for an image that has already been validated.
    pub async fn embed_valid_image(
        &self,
        image: &ValidImage,
        description: Option<&str>,
    ) -> Result<Embedding> {
        let result = self.walk().image(image, description, true).await;
        self.note_first_step(&result);
        result
    }

    /// Walk the chain for an image without recording the answer in the cache: the work
    /// queue records it in the transaction that completes the job. Descriptions and vectors
    /// are still cached as they are made (they are keyed by content, so writing one twice is
    /// harmless).
    pub(crate) async fn embed_unrecorded(&self, image: &ValidImage) -> Result<Embedding> {
        let result = self.walk().image(image, None, false).await;
        self.note_first_step(&result);
        result
    }

    /// Describe an image with the chain's describers, in chain order, without embedding.
    pub async fn describe(&self, image: &ValidImage, prompt: Option<&str>) -> Result<Description> {
        self.walk().describe(image, prompt).await
    }

    /// Embed a text query into the space of the chain's image results, walking the same chain
    /// with each step's text side. The text is a query (an asymmetric model gets its query
    /// prefix); [`Imbed::embed_text_for`] embeds it for another purpose.
    pub async fn embed_text(&self, text: &str) -> Result<Embedding> {
        self.embed_text_for(text, Purpose::Query).await
    }

    /// [`Imbed::embed_text`] for `purpose`.
    pub async fn embed_text_for(&self, text: &str, purpose: Purpose) -> Result<Embedding> {
        self.walk().text(text, purpose).await
    }

    /// Embed many texts (queries) in batches: each step gets every text still unanswered in one
    /// call, so a backend such as Ollama sees one request per step, not one per text. Results
    /// come in input order; an item that fails moves on to the next step alone.
    pub async fn embed_texts(&self, texts: &[String]) -> Vec<Result<Embedding>> {
        self.embed_texts_for(texts, Purpose::Query).await
    }

    /// [`Imbed::embed_texts`] for `purpose` (the compatible routes embed as given: `none`).
    pub async fn embed_texts_for(
        &self,
        texts: &[String],
        purpose: Purpose,
    ) -> Vec<Result<Embedding>> {
        self.walk().texts(texts, purpose).await
    }

    /// A walk over this runtime's chain, with its plugins and cache as the backend.
    pub(super) fn walk(&self) -> Walk<'_, Imbed> {
        Walk::new(self, &self.inner.config.chain)
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
}
