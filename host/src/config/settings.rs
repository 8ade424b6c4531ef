//! The validated configuration the rest of the library uses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::input::InputLimits;
use crate::types::{SpaceId, StepKind};

/// One step of the priority chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// A describer writes a description, a text embedder embeds it.
    DescribeThenEmbed {
        /// Config key of the describer plugin.
        describer: String,
        /// Config key of the text embedder plugin.
        embedder: String,
        /// Prompt for the describer; the plugin's own default when `None`.
        prompt: Option<String>,
    },
    /// An image embedder embeds the image itself.
    ImageEmbed {
        /// Config key of the image embedder plugin.
        plugin: String,
    },
    /// A text embedder embeds the caller's description; skipped when there is none.
    Description {
        /// Config key of the text embedder plugin.
        embedder: String,
    },
    /// The last resort: a plugin (the hash plugin) embeds the image itself.
    Hash {
        /// Config key of the plugin.
        plugin: String,
    },
}

impl Step {
    /// The kind of this step.
    pub fn kind(&self) -> StepKind {
        match self {
            Step::DescribeThenEmbed { .. } => StepKind::DescribeThenEmbed,
            Step::ImageEmbed { .. } => StepKind::ImageEmbed,
            Step::Description { .. } => StepKind::Description,
            Step::Hash { .. } => StepKind::Hash,
        }
    }

    /// The config keys of the plugins this step uses.
    pub fn plugins(&self) -> Vec<&str> {
        match self {
            Step::DescribeThenEmbed {
                describer,
                embedder,
                ..
            } => vec![describer, embedder],
            Step::ImageEmbed { plugin } | Step::Hash { plugin } => vec![plugin],
            Step::Description { embedder } => vec![embedder],
        }
    }
}

/// The priority chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    /// When set, only results in this embedding space are accepted; a step that answers in
    /// another space counts as failed and the chain moves on.
    pub require_space: Option<SpaceId>,
    /// The steps, tried in order.
    pub steps: Vec<Step>,
}

/// What a plugin is allowed to reach. Everything not listed is denied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// HTTP origins (`scheme://host[:port]`) the plugin may send requests to.
    pub http: Vec<url::Origin>,
    /// Environment variables passed through from the host's environment, by name.
    pub env: Vec<String>,
    /// A directory the plugin may read (not write), mounted at `/model`.
    pub model_dir: Option<PathBuf>,
    /// TCP addresses (`ip:port`) the plugin may connect to directly with WASI sockets. Prefer
    /// `http`: there the host checks every request; a raw socket carries anything.
    pub sockets: Vec<std::net::SocketAddr>,
    /// Graphs the plugin may run natively through `wasi:nn`, by name: graph `N` is the file
    /// `<model_dir>/N.onnx`, used only when the folder's manifest vouches for it.
    pub nn: Vec<String>,
}

/// One plugin's section.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The component file.
    pub path: PathBuf,
    /// Memory cap for one instance, in bytes.
    pub memory_bytes: u64,
    /// Deadline for one call.
    pub timeout: Duration,
    /// How many instances may run at once; as many are kept for reuse.
    pub pool_size: usize,
    /// Call the plugin's `warm` at start (loads models before the first request).
    pub warm: bool,
    /// Images sent to this plugin are downsized so their longer side is at most this many
    /// pixels. Describers default to 1024 (vision models see a few hundred pixels at most, and a
    /// 20 MB photo need not travel whole); other roles get the image as it is unless set.
    pub image_max_side: Option<u32>,
    /// What the plugin may reach.
    pub grants: Grants,
    /// Native memory budget for the plugin's `wasi:nn` graphs (`limits.nn_memory_mb`), in bytes.
    pub nn_memory_bytes: u64,
    /// Caps on the plugin's log lines and on the size of what it returns (`limits.log_*`,
    /// `limits.description_max_bytes`, `limits.structured_max_fields`).
    pub budgets: Budgets,
    /// The plugin's own settings, as strings (numbers and booleans in their TOML spelling,
    /// arrays and tables as JSON).
    pub settings: BTreeMap<String, String>,
    /// Config keys of plugins whose embedding spaces this one may write into
    /// (`shares_space_with`): they compute the same vectors (one backend under two keys, an
    /// OpenAI-compatible server serving Ollama's model). See [`Config::space_partners`].
    pub shares_space_with: Vec<String>,
    /// The backend endpoints the plugin's calls are spread over (`[[plugins.X.endpoints]]`, or a
    /// list in `settings.base_url`); empty: the plugin reaches what its settings say, as one
    /// endpoint with `pool_size` instances and no circuit breaker.
    pub endpoints: Vec<Endpoint>,
    /// When a pooled endpoint is taken out and when it is probed again (`limits.breaker_*`).
    pub breaker: Breaker,
}

/// One backend of a pooled plugin. Its instances get `base_url` as their `base_url` setting
/// and may reach only its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The backend's base URL, handed to the plugin as its `base_url` setting.
    pub base_url: String,
    /// The origin of `base_url`: the only HTTP grant this endpoint's instances get.
    pub origin: url::Origin,
    /// Requests in flight to this endpoint at most (match the box's `OLLAMA_NUM_PARALLEL`).
    pub concurrency: usize,
}

/// The circuit breaker of a pooled plugin's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive failures that say the backend is unavailable (connection refused, 503,
    /// timeout) after which an endpoint is taken out (`limits.breaker_failures`, default 3).
    pub failures: u32,
    /// How long a taken-out endpoint rests before its health probe may bring it back
    /// (`limits.breaker_cooldown_ms`, default 10 s).
    pub cooldown: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: 3,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// Per-plugin caps on what the plugin sends back to the host, from `[plugins.X.limits]`;
/// enforced by the runtime (`runtime/budget.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Log lines one call may write (`log_lines_per_call`).
    pub log_lines_per_call: u32,
    /// Log bytes one call may write (`log_bytes_per_call`).
    pub log_bytes_per_call: u64,
    /// Log lines all instances of the plugin may write per minute (`log_lines_per_minute`).
    pub log_lines_per_minute: u32,
    /// Log bytes all instances of the plugin may write per minute (`log_bytes_per_minute`).
    pub log_bytes_per_minute: u64,
    /// Longest single log message; longer ones are cut with a marker (`log_line_max_bytes`).
    pub log_line_max_bytes: usize,
    /// Longest description text, in bytes (`description_max_bytes`).
    pub description_max_bytes: usize,
    /// Most structured fields (objects plus tags plus visible text) in one description
    /// (`structured_max_fields`).
    pub structured_max_fields: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            log_lines_per_call: 100,
            log_bytes_per_call: 64 << 10,
            log_lines_per_minute: 1000,
            log_bytes_per_minute: 1 << 20,
            log_line_max_bytes: 4096,
            // Embedding models read a few thousand tokens at most; a real description is a few
            // kilobytes. 32 KiB leaves room for verbose models without letting a plugin hand
            // the embedder megabytes.
            description_max_bytes: 32 << 10,
            structured_max_fields: 256,
        }
    }
}

/// Settings of `imbed serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: String,
    /// Bearer tokens that may call the API; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Requests handled at once; more are refused with 503 at once rather than queued.
    pub max_in_flight: usize,
    /// Deadline of one request, passed down the chain: work for a caller who has gone is dropped.
    pub request_timeout: Duration,
    /// Non-public hosts and addresses that image URLs may still reach.
    pub url_allow: crate::input::UrlGuard,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            api_keys: Vec::new(),
            max_body_bytes: 32 << 20,
            max_in_flight: 64,
            request_timeout: Duration::from_secs(120),
            url_allow: Default::default(),
        }
    }
}

/// `[nn]`: the native backend (ONNX Runtime) behind the `wasi:nn` capability.
#[derive(Debug, Clone, PartialEq)]
pub struct NnSettings {
    /// The library file: `[nn] library`, else `$IMBED_ONNXRUNTIME`, else `$ORT_DYLIB_PATH`.
    /// `None`: the default locations.
    pub library: Option<PathBuf>,
    /// Default locations searched for `libonnxruntime.so.<release>` (`$IMBED_HOME/lib`, where
    /// `./imbed.sh` installs it); `target/onnxruntime` of the build's checkout comes after.
    pub library_dirs: Vec<PathBuf>,
    /// Intra-op threads per graph session (`[nn] threads`); `None`: the cores divided among the
    /// plugins granted graphs.
    pub threads: Option<usize>,
    /// Native runs at once (`[nn] runs`); `None`: one per core.
    pub runs: Option<usize>,
    /// Largest tensor a plugin may pass in or get back (`[nn] max_tensor_mb`), in bytes.
    pub max_tensor_bytes: u64,
}

impl Default for NnSettings {
    fn default() -> Self {
        NnSettings {
            library: None,
            library_dirs: Vec::new(),
            threads: None,
            runs: None,
            max_tensor_bytes: 256 << 20,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where this config came from (a path, or `<default>`).
    pub source: String,
    /// Where compiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Limits on input images.
    pub input: InputLimits,
    /// The priority chain.
    pub chain: ChainConfig,
    /// Plugins by config key.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `imbed serve` settings.
    pub server: ServerSettings,
    /// The persistent cache of descriptions and vectors.
    pub cache: CacheSettings,
    /// `[models]`: where model files live and where `imbed models pull` fetches them.
    pub models: ModelSettings,
    /// `[nn]`: the native inference backend of the `wasi:nn` capability.
    pub nn: NnSettings,
}

impl Config {
    /// The config keys that share embedding spaces with `key`: a space owned by one of them
    /// takes vectors from `key`. One `shares_space_with` declaration links both keys (either
    /// may have written first, depending on chain order and on which backend was up), and
    /// links chain: keys that name a common partner share with each other too.
    pub fn space_partners(&self, key: &str) -> Vec<String> {
        let mut group = vec![key.to_string()];
        let mut i = 0;
        while i < group.len() {
            let current = group[i].clone();
            let neighbours = self.plugins.iter().flat_map(|(k, p)| {
                if *k == current {
                    p.shares_space_with.clone()
                } else if p.shares_space_with.contains(&current) {
                    vec![k.clone()]
                } else {
                    Vec::new()
                }
            });
            for n in neighbours.collect::<Vec<_>>() {
                if !group.contains(&n) {
                    group.push(n);
                }
            }
            i += 1;
        }
        group.remove(0);
        group.sort();
        group
    }
}

/// `[cache]`: the database of descriptions, vectors and indexed files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Where it lives; `None` (`database = ""`) turns the cache off. By default an SQLite file
    /// under `IMBED_HOME`, not the cache directory: it holds hours of vision-model work that a
    /// cache cleaner should not throw away.
    pub database: Option<Database>,
    /// PostgreSQL: HNSW candidates per search (`hnsw.ef_search`, 1 to 1000; default 100).
    pub ef_search: u32,
    /// PostgreSQL: index vectors as `halfvec` (half the memory) at any size, not only above
    /// 2,000 dimensions.
    pub halfvec: bool,
    /// PostgreSQL: re-rank the index's candidates by the exact inner product.
    pub exact_rerank: bool,
    /// PostgreSQL: connections per imbed process.
    pub pool_size: usize,
    /// PostgreSQL: this machine's folder for what is not shared (the search page's
    /// thumbnails, made again on demand): `$IMBED_HOME/postgres`.
    pub local_dir: PathBuf,
}

/// The database behind the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file: `database = "/path/imbed.db"`.
    Sqlite(PathBuf),
    /// A PostgreSQL database with pgvector: `database = "postgres://…"` or
    /// `IMBED_DATABASE_URL`.
    Postgres(String),
}

/// The `[models]` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelSettings {
    /// Where model folders live (default `${IMBED_HOME}/models`).
    pub dir: PathBuf,
    /// A mirror: files are fetched from `<mirror>/<model>/<path>`.
    pub mirror: Option<String>,
    /// Per-model base URLs: the model's files are fetched from `<url>/<path>`.
    pub urls: BTreeMap<String, String>,
    /// An extra registry file whose models are added to (or replace) the built-in ones.
    pub registry: Option<PathBuf>,
}
