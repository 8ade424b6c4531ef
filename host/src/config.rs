//! Typed configuration: the TOML file is parsed into raw structs (unknown keys rejected with file
//! and line), then validated into [`Config`], which the rest of the library uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::types::StepKind;

/// The default configuration, compiled into the binary so `imbed` works without a config file.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// A configuration problem, located in its file where possible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file (or `<default>` for the embedded default).
        file: String,
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parses but a value does not make sense.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: String,
        /// Line, from 1, when known.
        line: Option<usize>,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Where environment variables for `${NAME}` references in the config come from.
///
/// Lookup order: explicit values set with [`Env::set`], the process environment (unless
/// [`Env::isolated`]), then a `.env` file, then imbed's built-in defaults (`IMBED_HOME`,
/// `IMBED_CACHE`). The process environment is never modified.
#[derive(Debug, Clone, Default)]
pub struct Env {
    explicit: BTreeMap<String, String>,
    dotenv: BTreeMap<String, String>,
    isolated: bool,
}

impl Env {
    /// The process environment plus `.env` in the current directory, if there is one.
    pub fn from_process() -> Self {
        let mut env = Env::default();
        if let Ok(iter) = dotenvy::from_path_iter(".env") {
            for (k, v) in iter.flatten() {
                env.dotenv.insert(k, v);
            }
        }
        env
    }

    /// Only explicitly set values (and built-in defaults): for tests and embedding applications
    /// that must not depend on the environment they run in.
    pub fn isolated() -> Self {
        Env {
            isolated: true,
            ..Env::default()
        }
    }

    /// Set a value that wins over every other source.
    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.explicit.insert(name.into(), value.into());
        self
    }

    /// Look a variable up.
    pub fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.explicit.get(name) {
            return Some(v.clone());
        }
        if !self.isolated {
            if let Ok(v) = std::env::var(name) {
                return Some(v);
            }
        }
        if let Some(v) = self.dotenv.get(name) {
            return Some(v.clone());
        }
        match name {
            "IMBED_HOME" => Some(default_data_dir(self).display().to_string()),
            "IMBED_CACHE" => Some(default_cache_dir(self).display().to_string()),
            _ => None,
        }
    }

    fn home(&self) -> PathBuf {
        let var = |n: &str| {
            self.explicit
                .get(n)
                .cloned()
                .or_else(|| (!self.isolated).then(|| std::env::var(n).ok()).flatten())
        };
        var("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

fn xdg(env: &Env, var: &str, fallback: &str) -> PathBuf {
    let from_env = env.explicit.get(var).cloned().or_else(|| {
        if env.isolated {
            None
        } else {
            std::env::var(var).ok().filter(|v| !v.is_empty())
        }
    });
    from_env
        .map(PathBuf::from)
        .unwrap_or_else(|| env.home().join(fallback))
}

/// `$XDG_DATA_HOME/imbed`: installed plugins and model files.
fn default_data_dir(env: &Env) -> PathBuf {
    xdg(env, "XDG_DATA_HOME", ".local/share").join("imbed")
}

/// `$XDG_CACHE_HOME/imbed`: compiled plugins.
fn default_cache_dir(env: &Env) -> PathBuf {
    xdg(env, "XDG_CACHE_HOME", ".cache").join("imbed")
}

/// Limits applied to every input image before any plugin sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLimits {
    /// Largest encoded image accepted, in bytes.
    pub max_bytes: u64,
    /// Largest width × height accepted, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest width or height accepted.
    pub max_side: u32,
    /// Deadline for downloading an image from a URL.
    pub download_timeout: Duration,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_bytes: 64 << 20,
            max_pixels: 50_000_000,
            max_side: 30_000,
            download_timeout: Duration::from_secs(30),
        }
    }
}

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
    pub require_space: Option<String>,
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
    pub budgets: crate::Budgets,
    /// The plugin's own settings, as strings (numbers and booleans in their TOML spelling,
    /// arrays and tables as JSON).
    pub settings: BTreeMap<String, String>,
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
    pub models: crate::models::ModelSettings,
    /// `[nn]`: the native inference backend of the `wasi:nn` capability.
    pub nn: NnSettings,
}

/// `[cache]`: the database of descriptions, vectors and indexed files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The SQLite file; `None` (`database = ""`) turns the cache off. It lives under
    /// `IMBED_HOME`, not the cache directory: it holds hours of vision-model work that a cache
    /// cleaner should not throw away.
    pub database: Option<PathBuf>,
}

/// A value with its place in the file when TOML knows it.
///
/// `toml::Spanned` fails on a table that has no span of its own, which is every table TOML
/// creates implicitly: `[[chain.steps]]` without a `[chain]` line, `limits.warm = true` dotted
/// keys, `[plugins.x.limits]` before `[plugins.x]`. Those are the same data as the explicit
/// spellings, so they must deserialize the same; `Located` takes the span when the deserializer
/// offers one (the `serde_spanned` protocol `toml::Spanned` uses) and the plain value otherwise.
struct Located<T> {
    span: Option<std::ops::Range<usize>>,
    value: T,
}

impl<T> Located<T> {
    fn get_ref(&self) -> &T {
        &self.value
    }

    fn span(&self) -> Option<std::ops::Range<usize>> {
        self.span.clone()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde_spanned::__unstable as spanned;
        deserializer.deserialize_struct(
            spanned::NAME,
            &[
                spanned::START_FIELD,
                spanned::END_FIELD,
                spanned::VALUE_FIELD,
            ],
            LocatedVisitor(std::marker::PhantomData),
        )
    }
}

struct LocatedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for LocatedVisitor<T> {
    type Value = Located<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Located<T>, A::Error> {
        use serde::de::value::MapAccessDeserializer;
        use serde_spanned::__unstable as spanned;
        let Some(first) = map.next_key::<String>()? else {
            // An empty table: nothing to replay.
            let value = T::deserialize(MapAccessDeserializer::new(map))?;
            return Ok(Located { span: None, value });
        };
        if first != spanned::START_FIELD {
            // A table without a span: the key read to find out is handed back to `T`.
            let value = T::deserialize(MapAccessDeserializer::new(Replay {
                first: Some(first),
                rest: map,
            }))?;
            return Ok(Located { span: None, value });
        }
        let start: usize = map.next_value()?;
        expect_key(&mut map, spanned::END_FIELD)?;
        let end: usize = map.next_value()?;
        expect_key(&mut map, spanned::VALUE_FIELD)?;
        let value: T = map.next_value()?;
        Ok(Located {
            span: Some(start..end),
            value,
        })
    }

    // Scalars and arrays always come with spans from the TOML parser; these keep `Located`
    // correct for any other deserializer too.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Located<T>, A::Error> {
        let value = T::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Located { span: None, value })
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Located<T>, E> {
        use serde::de::IntoDeserializer;
        let value = T::deserialize(v.into_deserializer())?;
        Ok(Located { span: None, value })
    }
}

fn expect_key<'de, A: serde::de::MapAccess<'de>>(
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    match map.next_key::<String>()? {
        Some(k) if k == name => Ok(()),
        _ => Err(serde::de::Error::custom(format!(
            "spanned value without {name}"
        ))),
    }
}

/// A map whose first key was already read: yields that key again, then the rest.
struct Replay<A> {
    first: Option<String>,
    rest: A,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::IntoDeserializer;
        match self.first.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => self.rest.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.rest.next_value_seed(seed)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    plugin_dir: Option<Spanned<String>>,
    cache_dir: Option<Spanned<String>>,
    #[serde(default)]
    input: RawInput,
    chain: Located<RawChain>,
    #[serde(default)]
    plugins: BTreeMap<Spanned<String>, Located<RawPlugin>>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    models: RawModels,
    #[serde(default)]
    nn: RawNn,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNn {
    library: Option<Spanned<String>>,
    threads: Option<Spanned<usize>>,
    runs: Option<Spanned<usize>>,
    max_tensor_mb: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModels {
    dir: Option<Spanned<String>>,
    mirror: Option<Spanned<String>>,
    registry: Option<Spanned<String>>,
    #[serde(default)]
    urls: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    database: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    api_keys: Vec<Spanned<String>>,
    max_body_mb: Option<usize>,
    max_in_flight: Option<Spanned<usize>>,
    request_timeout_ms: Option<u64>,
    #[serde(default)]
    url_allow: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInput {
    max_bytes: Option<Spanned<u64>>,
    max_pixels: Option<Spanned<u64>>,
    max_side: Option<Spanned<u32>>,
    download_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    require_space: Option<Spanned<String>>,
    #[serde(default)]
    steps: Vec<Located<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    kind: Spanned<String>,
    describer: Option<Spanned<String>>,
    embedder: Option<Spanned<String>>,
    plugin: Option<Spanned<String>>,
    prompt: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    file: Spanned<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    grants: RawGrants,
    #[serde(default)]
    settings: BTreeMap<String, Located<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mb: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    instances: Option<Spanned<usize>>,
    warm: Option<bool>,
    image_max_side: Option<Spanned<u32>>,
    nn_memory_mb: Option<Spanned<u64>>,
    log_lines_per_call: Option<Spanned<u32>>,
    log_bytes_per_call: Option<Spanned<u64>>,
    log_lines_per_minute: Option<Spanned<u32>>,
    log_bytes_per_minute: Option<Spanned<u64>>,
    log_line_max_bytes: Option<Spanned<usize>>,
    description_max_bytes: Option<Spanned<usize>>,
    structured_max_fields: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    #[serde(default)]
    http: Vec<Spanned<String>>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
    model_dir: Option<Spanned<String>>,
    #[serde(default)]
    sockets: Vec<Spanned<String>>,
    #[serde(default)]
    nn: Vec<Spanned<String>>,
}

/// Validation context: turns byte spans into line numbers and expands `${VAR}`.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    base: Option<&'a Path>,
    env: &'a Env,
}

impl Ctx<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            file: self.file.to_string(),
            line: span.map(|s| self.line(s)),
            message: message.into(),
        })
    }

    fn expand(&self, value: &Spanned<String>) -> Result<String, ConfigError> {
        expand_vars(value.get_ref(), self.env)
            .or_else(|message| self.err(Some(value.span()), message))
    }

    fn path(&self, value: &Spanned<String>) -> Result<PathBuf, ConfigError> {
        let expanded = self.expand(value)?;
        let expanded = match expanded.strip_prefix("~/") {
            Some(rest) => self.env.home().join(rest),
            None => PathBuf::from(expanded),
        };
        Ok(match self.base {
            Some(base) if expanded.is_relative() => base.join(expanded),
            _ => expanded,
        })
    }
}

/// Expands `${NAME}` and `${NAME:-default}` (the default may itself hold references); a `$` not
/// followed by `{` is kept as it is.
fn expand_vars(input: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let mut depth = 1;
        let mut end = None;
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
                depth += 1;
                i += 1;
            } else if bytes[i] == b'}' {
                depth -= 1;
                if depth == 0 {
                    end = Some(i);
                    break;
                }
            }
            i += 1;
        }
        let end = end.ok_or_else(|| format!("unclosed `${{` in {input:?}: write `${{NAME}}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{inner}}}` is not a variable reference: names use A-Z, 0-9 and _"
            ));
        }
        match env.get(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => match default {
                Some(d) => out.push_str(&expand_vars(d, env)?),
                None => {
                    return Err(format!(
                        "environment variable {name} is not set: set it, add it to .env, or write `${{{name}:-default}}`"
                    ))
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_plugin_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Config {
    /// Config keys of the plugins granted `dir` as their model directory. After `imbed models
    /// pull` into a folder no plugin is granted, the files sit there unused; the CLI says so.
    pub fn plugins_granted_model_dir(&self, dir: &Path) -> Vec<&str> {
        let same = |granted: &Path| {
            granted == dir
                || matches!(
                    (granted.canonicalize(), dir.canonicalize()),
                    (Ok(a), Ok(b)) if a == b
                )
        };
        self.plugins
            .iter()
            .filter(|(_, p)| p.grants.model_dir.as_deref().is_some_and(same))
            .map(|(key, _)| key.as_str())
            .collect()
    }

    /// Parse and validate a config from TOML text. `file` names it in errors; relative paths in
    /// it resolve against `base` (the config file's folder), or the current directory when `None`.
    pub fn from_toml_str(
        text: &str,
        file: &str,
        base: Option<&Path>,
        env: &Env,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                    (line, column)
                })
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let ctx = Ctx {
            file,
            text,
            base,
            env,
        };
        validate(raw, &ctx)
    }

    /// Read and validate a config file.
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        Config::from_toml_str(&text, &path.display().to_string(), base, env)
    }

    /// The embedded default config.
    pub fn default_config(env: &Env) -> Result<Config, ConfigError> {
        Config::from_toml_str(DEFAULT_CONFIG, "<default>", None, env)
    }

    /// Find the config the CLI uses: `explicit` if given, else `$IMBED_CONFIG`, else
    /// `./imbed.toml`, else `$XDG_CONFIG_HOME/imbed/config.toml`, else the embedded default.
    pub fn discover(explicit: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::load(path, env);
        }
        if let Some(path) = env.get("IMBED_CONFIG").filter(|p| !p.is_empty()) {
            return Config::load(Path::new(&path), env);
        }
        let local = Path::new("imbed.toml");
        if local.is_file() {
            return Config::load(local, env);
        }
        let user = xdg(env, "XDG_CONFIG_HOME", ".config").join("imbed/config.toml");
        if user.is_file() {
            return Config::load(&user, env);
        }
        Config::default_config(env)
    }
}

fn validate(raw: RawConfig, ctx: &Ctx<'_>) -> Result<Config, ConfigError> {
    let plugin_dir = match &raw.plugin_dir {
        Some(dir) => ctx.path(dir)?,
        None => PathBuf::from(ctx.env.get("IMBED_HOME").unwrap_or_default()).join("plugins"),
    };
    let cache_dir = match &raw.cache_dir {
        Some(dir) if dir.get_ref().is_empty() => None,
        Some(dir) => Some(ctx.path(dir)?),
        None => Some(PathBuf::from(
            ctx.env.get("IMBED_CACHE").unwrap_or_default(),
        )),
    };

    let defaults = InputLimits::default();
    for (key, value) in [
        (
            "max_bytes",
            raw.input
                .max_bytes
                .as_ref()
                .map(|v| (*v.get_ref(), v.span())),
        ),
        (
            "max_pixels",
            raw.input
                .max_pixels
                .as_ref()
                .map(|v| (*v.get_ref(), v.span())),
        ),
        (
            "max_side",
            raw.input
                .max_side
                .as_ref()
                .map(|v| (u64::from(*v.get_ref()), v.span())),
        ),
    ] {
        if let Some((0, span)) = value {
            return ctx.err(
                Some(span),
                format!("[input] {key} must be greater than zero"),
            );
        }
    }
    let input = InputLimits {
        max_bytes: raw
            .input
            .max_bytes
            .map(Spanned::into_inner)
            .unwrap_or(defaults.max_bytes),
        max_pixels: raw
            .input
            .max_pixels
            .map(Spanned::into_inner)
            .unwrap_or(defaults.max_pixels),
        max_side: raw
            .input
            .max_side
            .map(Spanned::into_inner)
            .unwrap_or(defaults.max_side),
        download_timeout: raw
            .input
            .download_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.download_timeout),
    };

    let mut plugins = BTreeMap::new();
    for (key, section) in &raw.plugins {
        let name = key.get_ref();
        if !valid_plugin_key(name) {
            return ctx.err(
                Some(key.span()),
                format!(
                    "plugin name {name:?} is not allowed: use lowercase letters, digits, - and _"
                ),
            );
        }
        plugins.insert(
            name.clone(),
            validate_plugin(name, section.get_ref(), &plugin_dir, ctx)?,
        );
    }

    let chain = raw.chain.get_ref();
    if chain.steps.is_empty() {
        // A chain TOML made implicitly (`chain.require_space = ...`) has no span of its own.
        let span = raw
            .chain
            .span()
            .or_else(|| chain.require_space.as_ref().map(|s| s.span()));
        return ctx.err(
            span,
            "the chain has no steps: add at least one [[chain.steps]] table",
        );
    }
    let mut steps = Vec::new();
    for (index, step) in chain.steps.iter().enumerate() {
        steps.push(validate_step(index, step, &plugins, ctx)?);
    }
    let require_space = match &chain.require_space {
        Some(s) if s.get_ref().trim().is_empty() => {
            return ctx.err(
                Some(s.span()),
                "require_space is empty: name a space or remove the key",
            )
        }
        Some(s) => Some(ctx.expand(s)?),
        None => None,
    };

    let server = validate_server(&raw.server, ctx)?;
    let cache = CacheSettings {
        database: match &raw.cache.database {
            Some(db) if db.get_ref().trim().is_empty() => None,
            Some(db) => Some(ctx.path(db)?),
            None => {
                Some(PathBuf::from(ctx.env.get("IMBED_HOME").unwrap_or_default()).join("imbed.db"))
            }
        },
    };

    let models = validate_models(&raw.models, ctx)?;
    let nn = validate_nn(&raw.nn, ctx)?;

    Ok(Config {
        server,
        cache,
        models,
        nn,
        source: ctx.file.to_string(),
        cache_dir,
        input,
        chain: ChainConfig {
            require_space,
            steps,
        },
        plugins,
    })
}

fn validate_nn(raw: &RawNn, ctx: &Ctx<'_>) -> Result<NnSettings, ConfigError> {
    let defaults = NnSettings::default();
    let library = match &raw.library {
        Some(l) if !ctx.expand(l)?.trim().is_empty() => Some(ctx.path(l)?),
        _ => ["IMBED_ONNXRUNTIME", "ORT_DYLIB_PATH"]
            .iter()
            .find_map(|var| ctx.env.get(var).filter(|v| !v.trim().is_empty()))
            .map(PathBuf::from),
    };
    let positive = |v: &Option<Spanned<usize>>, key: &str| -> Result<Option<usize>, ConfigError> {
        match v {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1024 => {
                ctx.err(Some(n.span()), format!("[nn] {key} must be from 1 to 1024"))
            }
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    };
    let max_tensor_bytes = match &raw.max_tensor_mb {
        Some(m) if *m.get_ref() == 0 || *m.get_ref() > 65_536 => {
            return ctx.err(Some(m.span()), "[nn] max_tensor_mb must be from 1 to 65536")
        }
        Some(m) => *m.get_ref() << 20,
        None => defaults.max_tensor_bytes,
    };
    Ok(NnSettings {
        library,
        library_dirs: vec![PathBuf::from(ctx.env.get("IMBED_HOME").unwrap_or_default()).join("lib")],
        threads: positive(&raw.threads, "threads")?,
        runs: positive(&raw.runs, "runs")?,
        max_tensor_bytes,
    })
}

fn validate_models(
    raw: &RawModels,
    ctx: &Ctx<'_>,
) -> Result<crate::models::ModelSettings, ConfigError> {
    let dir = match &raw.dir {
        Some(d) => ctx.path(d)?,
        None => PathBuf::from(ctx.env.get("IMBED_HOME").unwrap_or_default()).join("models"),
    };
    // An empty value means "not set", so `mirror = "${IMBED_MODEL_MIRROR:-}"` works.
    let url = |value: &Spanned<String>, what: &str| -> Result<Option<String>, ConfigError> {
        let text = ctx.expand(value)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        crate::models::check_base_url(text.trim())
            .map(Some)
            .or_else(|e| ctx.err(Some(value.span()), format!("[models] {what}: {e}")))
    };
    let mirror = match &raw.mirror {
        Some(m) => url(m, "mirror")?,
        None => None,
    };
    let mut urls = BTreeMap::new();
    for (name, value) in &raw.urls {
        if let Some(u) = url(value, &format!("urls.{name}"))? {
            urls.insert(name.clone(), u);
        }
    }
    let registry = raw.registry.as_ref().map(|r| ctx.path(r)).transpose()?;
    Ok(crate::models::ModelSettings {
        dir,
        mirror,
        urls,
        registry,
    })
}

fn validate_server(raw: &RawServer, ctx: &Ctx<'_>) -> Result<ServerSettings, ConfigError> {
    let defaults = ServerSettings::default();
    let mut api_keys = Vec::new();
    for key in &raw.api_keys {
        let k = ctx.expand(key)?;
        if k.trim().len() < 8 {
            return ctx.err(
                Some(key.span()),
                "an api key must have at least 8 characters",
            );
        }
        api_keys.push(k.trim().to_string());
    }
    // Keys can also come from the environment, so they need not sit in the file.
    if let Some(from_env) = ctx.env.get("IMBED_API_KEYS") {
        api_keys.extend(
            from_env
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string),
        );
    }
    let mut url_allow = crate::input::UrlGuard::default();
    for entry in &raw.url_allow {
        let e = ctx.expand(entry)?;
        match e.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => url_allow.allow_ips.push(ip),
            Err(_) if !e.trim().is_empty() && !e.contains('/') => {
                url_allow.allow_hosts.push(e.trim().to_string())
            }
            Err(_) => {
                return ctx.err(
                    Some(entry.span()),
                    format!("url_allow entry {e:?} must be a host name or an IP address"),
                )
            }
        }
    }
    let max_in_flight = match &raw.max_in_flight {
        Some(n) if *n.get_ref() == 0 => {
            return ctx.err(Some(n.span()), "[server] max_in_flight must be at least 1")
        }
        Some(n) => *n.get_ref(),
        None => defaults.max_in_flight,
    };
    Ok(ServerSettings {
        listen: raw
            .listen
            .as_ref()
            .map(|l| ctx.expand(l))
            .transpose()?
            .unwrap_or(defaults.listen),
        api_keys,
        max_body_bytes: raw
            .max_body_mb
            .map(|m| m << 20)
            .unwrap_or(defaults.max_body_bytes),
        max_in_flight,
        request_timeout: raw
            .request_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.request_timeout),
        url_allow,
    })
}

fn validate_plugin(
    name: &str,
    raw: &RawPlugin,
    plugin_dir: &Path,
    ctx: &Ctx<'_>,
) -> Result<PluginConfig, ConfigError> {
    let file = PathBuf::from(ctx.expand(&raw.file)?);
    let path = if file.is_absolute() {
        file
    } else {
        plugin_dir.join(file)
    };

    let memory_mb = raw
        .limits
        .memory_mb
        .as_ref()
        .map(|m| (*m.get_ref(), m.span()))
        .unwrap_or((512, 0..0));
    if !(1..=65_536).contains(&memory_mb.0) {
        return ctx.err(
            Some(memory_mb.1),
            format!("plugin {name:?}: memory_mb must be from 1 to 65536"),
        );
    }
    let timeout_ms = raw
        .limits
        .timeout_ms
        .as_ref()
        .map(|t| (*t.get_ref(), t.span()))
        .unwrap_or((30_000, 0..0));
    if timeout_ms.0 == 0 {
        return ctx.err(
            Some(timeout_ms.1),
            format!("plugin {name:?}: timeout_ms must be greater than zero"),
        );
    }
    let pool_size = match &raw.limits.instances {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > 256 => {
            return ctx.err(
                Some(n.span()),
                format!("plugin {name:?}: instances must be from 1 to 256"),
            )
        }
        Some(n) => *n.get_ref(),
        None => 2,
    };
    let image_max_side = match &raw.limits.image_max_side {
        Some(n) if *n.get_ref() < 32 => {
            return ctx.err(
                Some(n.span()),
                format!("plugin {name:?}: image_max_side must be at least 32"),
            )
        }
        Some(n) => Some(*n.get_ref()),
        None => None,
    };

    let mut http = Vec::new();
    for origin in &raw.grants.http {
        let text = ctx.expand(origin)?;
        let parsed = url::Url::parse(&text).or_else(|e| {
            ctx.err(Some(origin.span()), format!("plugin {name:?}: http grant {text:?} is not a URL ({e}): write it as http://host:port"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return ctx.err(
                Some(origin.span()),
                format!(
                    "plugin {name:?}: http grant {text:?} must be an http:// or https:// origin"
                ),
            );
        }
        if parsed.path() != "/" || parsed.query().is_some() {
            return ctx.err(
                Some(origin.span()),
                format!("plugin {name:?}: http grant {text:?} has a path; grants are whole origins (scheme://host:port)"),
            );
        }
        http.push(parsed.origin());
    }
    let mut env = Vec::new();
    for var in &raw.grants.env {
        let v = var.get_ref();
        if v.is_empty() || v.contains('=') {
            return ctx.err(
                Some(var.span()),
                format!("plugin {name:?}: {v:?} is not an environment variable name"),
            );
        }
        env.push(v.clone());
    }
    let mut sockets = Vec::new();
    for addr in &raw.grants.sockets {
        let text = ctx.expand(addr)?;
        match text.parse::<std::net::SocketAddr>() {
            Ok(a) => sockets.push(a),
            Err(_) => {
                return ctx.err(
                    Some(addr.span()),
                    format!("plugin {name:?}: socket grant {text:?} is not an address: write it as ip:port, e.g. 127.0.0.1:5432"),
                )
            }
        }
    }
    let model_dir = raw
        .grants
        .model_dir
        .as_ref()
        .map(|d| ctx.path(d))
        .transpose()?;
    let mut nn = Vec::new();
    for graph in &raw.grants.nn {
        let g = graph.get_ref();
        let valid = g.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && g.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !g.contains("..");
        if !valid {
            return ctx.err(
                Some(graph.span()),
                format!("plugin {name:?}: nn graph name {g:?} is not allowed: use letters, digits, -, _ and . (graph N is the file <model_dir>/N.onnx)"),
            );
        }
        if !nn.contains(g) {
            nn.push(g.clone());
        }
    }
    if let (Some(first), None) = (raw.grants.nn.first(), &model_dir) {
        return ctx.err(
            Some(first.span()),
            format!("plugin {name:?}: the nn grant needs a model_dir grant (graph N is the file <model_dir>/N.onnx)"),
        );
    }
    let nn_memory_mb = raw
        .limits
        .nn_memory_mb
        .as_ref()
        .map(|m| (*m.get_ref(), m.span()))
        .unwrap_or((4096, 0..0));
    if !(1..=1_048_576).contains(&nn_memory_mb.0) {
        return ctx.err(
            Some(nn_memory_mb.1),
            format!("plugin {name:?}: nn_memory_mb must be from 1 to 1048576"),
        );
    }
    let budgets = validate_budgets(name, &raw.limits, ctx)?;

    let mut settings = BTreeMap::new();
    for (key, value) in &raw.settings {
        let rendered = match value.get_ref() {
            toml::Value::String(s) => {
                expand_vars(s, ctx.env).or_else(|m| ctx.err(value.span(), m))?
            }
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            other => serde_json::to_string(other).unwrap_or_default(),
        };
        settings.insert(key.clone(), rendered);
    }

    Ok(PluginConfig {
        path,
        memory_bytes: memory_mb.0 << 20,
        timeout: Duration::from_millis(timeout_ms.0),
        pool_size,
        warm: raw.limits.warm.unwrap_or(false),
        image_max_side,
        grants: Grants {
            http,
            env,
            model_dir,
            sockets,
            nn,
        },
        nn_memory_bytes: nn_memory_mb.0 << 20,
        budgets,
        settings,
    })
}

/// The log and output budgets of `[plugins.X.limits]`: each at least 1 (a cap of 0 would
/// silence a plugin or refuse every answer, which no one means), defaults otherwise.
fn validate_budgets(
    name: &str,
    limits: &RawLimits,
    ctx: &Ctx<'_>,
) -> Result<crate::Budgets, ConfigError> {
    fn pick<T: Copy + Into<u64>>(
        value: &Option<Spanned<T>>,
        default: T,
        key: &str,
        name: &str,
        ctx: &Ctx<'_>,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) if (*v.get_ref()).into() == 0 => ctx.err(
                Some(v.span()),
                format!("plugin {name:?}: {key} must be at least 1"),
            ),
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        }
    }
    let d = crate::Budgets::default();
    let usize_pick = |value: &Option<Spanned<usize>>, default: usize, key: &str| {
        let as_u64 = value
            .as_ref()
            .map(|v| Spanned::new(v.span(), *v.get_ref() as u64));
        pick(&as_u64, default as u64, key, name, ctx).map(|v| v as usize)
    };
    Ok(crate::Budgets {
        log_lines_per_call: pick(
            &limits.log_lines_per_call,
            d.log_lines_per_call,
            "log_lines_per_call",
            name,
            ctx,
        )?,
        log_bytes_per_call: pick(
            &limits.log_bytes_per_call,
            d.log_bytes_per_call,
            "log_bytes_per_call",
            name,
            ctx,
        )?,
        log_lines_per_minute: pick(
            &limits.log_lines_per_minute,
            d.log_lines_per_minute,
            "log_lines_per_minute",
            name,
            ctx,
        )?,
        log_bytes_per_minute: pick(
            &limits.log_bytes_per_minute,
            d.log_bytes_per_minute,
            "log_bytes_per_minute",
            name,
            ctx,
        )?,
        log_line_max_bytes: usize_pick(
            &limits.log_line_max_bytes,
            d.log_line_max_bytes,
            "log_line_max_bytes",
        )?,
        description_max_bytes: usize_pick(
            &limits.description_max_bytes,
            d.description_max_bytes,
            "description_max_bytes",
        )?,
        structured_max_fields: usize_pick(
            &limits.structured_max_fields,
            d.structured_max_fields,
            "structured_max_fields",
        )?,
    })
}

fn validate_step(
    index: usize,
    raw: &Located<RawStep>,
    plugins: &BTreeMap<String, PluginConfig>,
    ctx: &Ctx<'_>,
) -> Result<Step, ConfigError> {
    let step = raw.get_ref();
    let kind = step.kind.get_ref().as_str();
    let reference =
        |field: &'static str, value: &Option<Spanned<String>>| -> Result<String, ConfigError> {
            let value = match value {
                Some(v) => v,
                None => {
                    // The step's own line, or its `kind`'s when TOML gave the table no span.
                    return ctx.err(
                        Some(raw.span().unwrap_or_else(|| step.kind.span())),
                        format!("step {index} ({kind}) needs `{field} = \"<plugin>\"`"),
                    );
                }
            };
            let name = value.get_ref();
            if !plugins.contains_key(name) {
                return ctx.err(
                    Some(value.span()),
                    format!(
                        "step {index} names plugin {name:?}, which has no [plugins.{name}] section"
                    ),
                );
            }
            Ok(name.clone())
        };
    let forbid = |field: &str, value: &Option<Spanned<String>>| -> Result<(), ConfigError> {
        match value {
            Some(v) => ctx.err(
                Some(v.span()),
                format!("`{field}` does not belong in a {kind} step"),
            ),
            None => Ok(()),
        }
    };
    Ok(match kind {
        "describe-then-embed" => {
            forbid("plugin", &step.plugin)?;
            Step::DescribeThenEmbed {
                describer: reference("describer", &step.describer)?,
                embedder: reference("embedder", &step.embedder)?,
                prompt: step.prompt.as_ref().map(|p| ctx.expand(p)).transpose()?,
            }
        }
        "image-embed" | "hash" => {
            forbid("describer", &step.describer)?;
            forbid("embedder", &step.embedder)?;
            forbid("prompt", &step.prompt)?;
            let plugin = reference("plugin", &step.plugin)?;
            if kind == "hash" { Step::Hash { plugin } } else { Step::ImageEmbed { plugin } }
        }
        "description" => {
            forbid("describer", &step.describer)?;
            forbid("plugin", &step.plugin)?;
            forbid("prompt", &step.prompt)?;
            Step::Description { embedder: reference("embedder", &step.embedder)? }
        }
        other => {
            return ctx.err(
                Some(step.kind.span()),
                format!("unknown step kind {other:?}: use describe-then-embed, image-embed, description or hash"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[chain]
[[chain.steps]]
kind = "hash"
plugin = "hash"

[plugins.hash]
file = "hash.wasm"
"#;

    #[test]
    fn the_embedded_default_is_valid_and_follows_the_seed_chain() {
        let cfg = Config::default_config(&Env::isolated().set("HOME", "/home/u")).unwrap();
        let kinds: Vec<_> = cfg.chain.steps.iter().map(Step::kind).collect();
        assert_eq!(
            kinds,
            [
                StepKind::DescribeThenEmbed,
                StepKind::ImageEmbed,
                StepKind::Description,
                StepKind::Hash
            ]
        );
        let ollama = &cfg.plugins["ollama"];
        assert_eq!(ollama.settings["base_url"], "http://localhost:11434");
        assert_eq!(ollama.settings["vision_model"], "llava");
        assert_eq!(ollama.settings["embed_model"], "nomic-embed-text");
        assert_eq!(ollama.grants.http.len(), 1);
        assert_eq!(
            cfg.plugins["hash"].path,
            Path::new("/home/u/.local/share/imbed/plugins/hash.wasm")
        );
    }

    #[test]
    fn the_offline_example_is_valid_and_grants_no_network() {
        let text = include_str!("../../config/offline.toml");
        let cfg = Config::from_toml_str(text, "offline.toml", None, &Env::isolated()).unwrap();
        assert!(cfg.plugins.values().all(|p| p.grants.http.is_empty()));
        let kinds: Vec<_> = cfg.chain.steps.iter().map(|s| s.kind()).collect();
        assert_eq!(
            kinds,
            [StepKind::ImageEmbed, StepKind::Description, StepKind::Hash]
        );
    }

    #[test]
    fn environment_overrides_the_seed_variables() {
        let env = Env::isolated()
            .set("OLLAMA_BASE_URL", "http://gpu-box:11434")
            .set("OLLAMA_VISION_MODEL", "llama3.2-vision")
            .set("OLLAMA_EMBED_MODEL", "mxbai-embed-large");
        let cfg = Config::default_config(&env).unwrap();
        let ollama = &cfg.plugins["ollama"];
        assert_eq!(ollama.settings["base_url"], "http://gpu-box:11434");
        assert_eq!(ollama.settings["vision_model"], "llama3.2-vision");
        assert_eq!(ollama.settings["embed_model"], "mxbai-embed-large");
        assert_eq!(
            ollama.grants.http[0].ascii_serialization(),
            "http://gpu-box:11434"
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_file_and_line() {
        let text = MINIMAL.replace(
            "file = \"hash.wasm\"",
            "file = \"hash.wasm\"\nmemroy_mb = 3",
        );
        let err = Config::from_toml_str(&text, "my.toml", None, &Env::isolated()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("my.toml:9:"), "{msg}");
        assert!(msg.contains("memroy_mb"), "{msg}");
    }

    #[test]
    fn log_and_output_budgets_default_and_are_read_from_limits() {
        let cfg = Config::from_toml_str(MINIMAL, "my.toml", None, &Env::isolated()).unwrap();
        assert_eq!(cfg.plugins["hash"].budgets, crate::Budgets::default());
        let text = format!(
            "{MINIMAL}[plugins.hash.limits]\nlog_lines_per_call = 7\nlog_bytes_per_minute = 9000\nlog_line_max_bytes = 80\ndescription_max_bytes = 1000\nstructured_max_fields = 3\n"
        );
        let cfg = Config::from_toml_str(&text, "my.toml", None, &Env::isolated()).unwrap();
        let b = cfg.plugins["hash"].budgets;
        assert_eq!(b.log_lines_per_call, 7);
        assert_eq!(b.log_bytes_per_minute, 9000);
        assert_eq!(b.log_line_max_bytes, 80);
        assert_eq!(b.description_max_bytes, 1000);
        assert_eq!(b.structured_max_fields, 3);
        assert_eq!(
            b.log_lines_per_minute,
            crate::Budgets::default().log_lines_per_minute
        );
        let text = format!("{MINIMAL}[plugins.hash.limits]\ndescription_max_bytes = 0\n");
        let err = Config::from_toml_str(&text, "my.toml", None, &Env::isolated()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("my.toml:10:"), "{msg}");
        assert!(
            msg.contains("description_max_bytes must be at least 1"),
            "{msg}"
        );
    }

    #[test]
    fn a_step_naming_a_missing_plugin_is_reported_with_its_line() {
        let text = MINIMAL.replace("plugin = \"hash\"", "plugin = \"clip\"");
        let msg = Config::from_toml_str(&text, "c.toml", None, &Env::isolated())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "c.toml:5: step 0 names plugin \"clip\", which has no [plugins.clip] section"
        );
    }

    #[test]
    fn unknown_step_kinds_and_misplaced_fields_are_errors() {
        let text = MINIMAL.replace("kind = \"hash\"", "kind = \"magic\"");
        let msg = Config::from_toml_str(&text, "c.toml", None, &Env::isolated())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("c.toml:4: unknown step kind \"magic\""),
            "{msg}"
        );
        let text = MINIMAL.replace(
            "plugin = \"hash\"",
            "plugin = \"hash\"\nembedder = \"hash\"",
        );
        let msg = Config::from_toml_str(&text, "c.toml", None, &Env::isolated())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`embedder` does not belong in a hash step"),
            "{msg}"
        );
    }

    #[test]
    fn http_grants_must_be_origins() {
        let text = format!("{MINIMAL}[plugins.hash.grants]\nhttp = [\"http://h:1/api\"]\n");
        let msg = Config::from_toml_str(&text, "c.toml", None, &Env::isolated())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("c.toml:10:") && msg.contains("has a path"),
            "{msg}"
        );
    }

    #[test]
    fn variables_expand_with_defaults_and_missing_ones_are_named() {
        let env = Env::isolated().set("A", "x");
        assert_eq!(expand_vars("${A}/${B:-y}/$z", &env).unwrap(), "x/y/$z");
        let err = expand_vars("${NOPE}", &env).unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(expand_vars("${A", &env).is_err());
        assert_eq!(expand_vars("${NOPE:-${A}/p}", &env).unwrap(), "x/p");
    }

    #[test]
    fn settings_render_as_strings() {
        let text = format!("{MINIMAL}[plugins.hash.settings]\ndimensions = 128\nnormal = true\nname = \"${{A:-q}}\"\n");
        let cfg = Config::from_toml_str(
            &text,
            "c.toml",
            Some(Path::new("/etc/imbed")),
            &Env::isolated(),
        )
        .unwrap();
        let s = &cfg.plugins["hash"].settings;
        assert_eq!(
            (
                s["dimensions"].as_str(),
                s["normal"].as_str(),
                s["name"].as_str()
            ),
            ("128", "true", "q")
        );
    }

    #[test]
    fn nn_grants_need_a_model_dir_and_plain_graph_names() {
        let parse = |grants: &str, extra: &str| {
            let text = format!("{MINIMAL}[plugins.hash.grants]\n{grants}\n{extra}");
            Config::from_toml_str(&text, "c.toml", None, &Env::isolated())
        };
        let msg = parse("nn = [\"text\"]", "").unwrap_err().to_string();
        assert!(
            msg.contains("the nn grant needs a model_dir grant"),
            "{msg}"
        );
        let msg = parse("nn = [\"../x\"]\nmodel_dir = \"/m\"", "")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nn graph name \"../x\" is not allowed"),
            "{msg}"
        );
        let cfg = parse(
            "nn = [\"vision\", \"text\", \"text\"]\nmodel_dir = \"/m\"",
            "[nn]\nlibrary = \"/opt/libonnxruntime.so.1.22.1\"\nthreads = 3\nmax_tensor_mb = 8\n",
        )
        .unwrap();
        assert_eq!(cfg.plugins["hash"].grants.nn, ["vision", "text"]);
        assert_eq!(cfg.plugins["hash"].nn_memory_bytes, 4096 << 20);
        assert_eq!(
            cfg.nn.library.as_deref(),
            Some(Path::new("/opt/libonnxruntime.so.1.22.1"))
        );
        assert_eq!(
            (cfg.nn.threads, cfg.nn.max_tensor_bytes),
            (Some(3), 8 << 20)
        );
        let msg = parse("", "[nn]\nthreads = 0\n").unwrap_err().to_string();
        assert!(msg.contains("[nn] threads must be from 1 to 1024"), "{msg}");
        let msg = parse("", "[nn]\nlibary = \"x\"\n").unwrap_err().to_string();
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn the_onnx_runtime_library_comes_from_the_environment_when_the_config_names_none() {
        let env = Env::isolated().set("IMBED_ONNXRUNTIME", "/x/libonnxruntime.so.1.22.1");
        let cfg = Config::from_toml_str(MINIMAL, "c.toml", None, &env).unwrap();
        assert_eq!(
            cfg.nn.library.as_deref(),
            Some(Path::new("/x/libonnxruntime.so.1.22.1"))
        );
        let cfg = Config::from_toml_str(MINIMAL, "c.toml", None, &Env::isolated()).unwrap();
        assert_eq!(cfg.nn.library, None);
    }

    #[test]
    fn a_chain_without_its_header_line_is_the_same_chain() {
        // The report in issue #13: valid TOML, refused with "expected a borrowed string".
        let headerless = MINIMAL.replacen("[chain]\n", "", 1);
        let a = Config::from_toml_str(MINIMAL, "c.toml", None, &Env::isolated()).unwrap();
        let b = Config::from_toml_str(&headerless, "c.toml", None, &Env::isolated()).unwrap();
        assert_eq!(a, b);
        let dotted = "[[chain.steps]]\nkind = \"hash\"\nplugin = \"hash\"\n[plugins]\nhash.file = \"hash.wasm\"\nhash.limits.warm = true\n";
        let c = Config::from_toml_str(dotted, "c.toml", None, &Env::isolated()).unwrap();
        assert!(c.plugins["hash"].warm);
    }

    #[test]
    fn a_missing_plugin_field_in_a_headerless_step_names_its_line() {
        let text = "[[chain.steps]]\nkind = \"hash\"\n[plugins.hash]\nfile = \"h.wasm\"\n";
        let msg = Config::from_toml_str(text, "c.toml", None, &Env::isolated())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("c.toml:1: step 0 (hash) needs `plugin"),
            "{msg}"
        );
    }
}

/// The same config data written in many valid TOML spellings must validate to the same
/// [`Config`]; a fault in any spelling must be reported with its file and line.
#[cfg(test)]
mod spellings {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;

    #[derive(Debug, Clone)]
    enum Setting {
        Str(String),
        Int(i64),
        Bool(bool),
        Table(Vec<(String, String)>),
    }

    #[derive(Debug, Clone)]
    struct Plugin {
        name: String,
        file: String,
        memory_mb: Option<u64>,
        instances: Option<usize>,
        warm: Option<bool>,
        http: Vec<String>,
        model_dir: Option<String>,
        settings: Vec<(String, Setting)>,
        /// A key that does not exist, for the fault cases.
        unknown_limit: bool,
    }

    #[derive(Debug, Clone)]
    struct StepModel {
        kind: &'static str,
        /// (key, value) pairs, in the order they are written.
        fields: Vec<(&'static str, String)>,
    }

    #[derive(Debug, Clone)]
    struct Model {
        require_space: Option<String>,
        steps: Vec<StepModel>,
        plugins: Vec<Plugin>,
        max_bytes: Option<u64>,
        listen: Option<String>,
    }

    /// How to write each part.
    #[derive(Debug, Clone)]
    struct Spelling {
        /// 0: `[chain]` + `[[chain.steps]]`; 1: `[[chain.steps]]` alone (require_space dotted
        /// at the top); 2: `[chain]` with `steps = [{...}]`; 3: top-level `chain = {...}`;
        /// 4: top-level dotted `chain.steps = [...]`.
        chain: u8,
        /// Per plugin: 0 sub-table headers; 1 dotted keys; 2 inline tables; 3 sub-tables
        /// before the plugin's own header; 4 the whole plugin inline under `[plugins]`.
        plugins: Vec<u8>,
        /// 0 `[input]`; 1 top-level dotted; 2 top-level inline.
        input: u8,
        /// Chain before the plugins or after.
        chain_first: bool,
        /// Write each table's keys in reverse.
        reverse_keys: bool,
    }

    fn q(s: &str) -> String {
        format!("{s:?}")
    }

    fn setting_value(v: &Setting) -> String {
        match v {
            Setting::Str(s) => q(s),
            Setting::Int(i) => i.to_string(),
            Setting::Bool(b) => b.to_string(),
            Setting::Table(kv) => inline(kv.iter().map(|(k, v)| (k.clone(), q(v))).collect()),
        }
    }

    fn inline(pairs: Vec<(String, String)>) -> String {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("{{ {} }}", body.join(", "))
    }

    fn ordered<T>(mut v: Vec<T>, reverse: bool) -> Vec<T> {
        if reverse {
            v.reverse();
        }
        v
    }

    fn limits(p: &Plugin) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(m) = p.memory_mb {
            out.push(("memory_mb".to_string(), m.to_string()));
        }
        if let Some(n) = p.instances {
            out.push(("instances".to_string(), n.to_string()));
        }
        if let Some(w) = p.warm {
            out.push(("warm".to_string(), w.to_string()));
        }
        if p.unknown_limit {
            out.push(("memroy_mb".to_string(), "3".to_string()));
        }
        out
    }

    fn grants(p: &Plugin) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !p.http.is_empty() {
            let list: Vec<String> = p.http.iter().map(|h| q(h)).collect();
            out.push(("http".to_string(), format!("[{}]", list.join(", "))));
        }
        if let Some(d) = &p.model_dir {
            out.push(("model_dir".to_string(), q(d)));
        }
        out
    }

    /// Render the model. Top-level key/value lines must come before the first header.
    fn render(m: &Model, s: &Spelling) -> String {
        let mut top: Vec<String> = Vec::new();
        let mut chain_part: Vec<String> = Vec::new();
        let mut plugin_part: Vec<String> = Vec::new();
        let mut rest: Vec<String> = Vec::new();
        let step_pairs = |st: &StepModel| -> Vec<(String, String)> {
            let mut v = vec![("kind".to_string(), q(st.kind))];
            v.extend(st.fields.iter().map(|(k, val)| (k.to_string(), q(val))));
            ordered(v, s.reverse_keys)
        };
        let steps_inline = || -> String {
            let items: Vec<String> = m.steps.iter().map(|st| inline(step_pairs(st))).collect();
            format!("[{}]", items.join(", "))
        };
        match s.chain {
            0 | 1 => {
                if let Some(rs) = &m.require_space {
                    if s.chain == 0 {
                        chain_part.push("[chain]".into());
                        chain_part.push(format!("require_space = {}", q(rs)));
                    } else {
                        top.push(format!("chain.require_space = {}", q(rs)));
                    }
                } else if s.chain == 0 {
                    chain_part.push("[chain]".into());
                }
                for st in &m.steps {
                    chain_part.push("[[chain.steps]]".into());
                    for (k, v) in step_pairs(st) {
                        chain_part.push(format!("{k} = {v}"));
                    }
                }
            }
            2 => {
                chain_part.push("[chain]".into());
                if let Some(rs) = &m.require_space {
                    chain_part.push(format!("require_space = {}", q(rs)));
                }
                chain_part.push(format!("steps = {}", steps_inline()));
            }
            3 => {
                let mut pairs = vec![("steps".to_string(), steps_inline())];
                if let Some(rs) = &m.require_space {
                    pairs.push(("require_space".to_string(), q(rs)));
                }
                top.push(format!(
                    "chain = {}",
                    inline(ordered(pairs, s.reverse_keys))
                ));
            }
            _ => {
                if let Some(rs) = &m.require_space {
                    top.push(format!("chain.require_space = {}", q(rs)));
                }
                top.push(format!("chain.steps = {}", steps_inline()));
            }
        }

        let mut inline_plugins: Vec<String> = Vec::new();
        for (p, how) in m.plugins.iter().zip(&s.plugins) {
            let settings: Vec<(String, String)> = p
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), setting_value(v)))
                .collect();
            let header = format!("[plugins.{}]", p.name);
            let file = format!("file = {}", q(&p.file));
            let sub = |part: &mut Vec<String>, name: &str, pairs: Vec<(String, String)>| {
                if !pairs.is_empty() {
                    part.push(format!("[plugins.{}.{name}]", p.name));
                    for (k, v) in ordered(pairs, s.reverse_keys) {
                        part.push(format!("{k} = {v}"));
                    }
                }
            };
            match how {
                0 | 3 => {
                    let mut subs = Vec::new();
                    sub(&mut subs, "limits", limits(p));
                    sub(&mut subs, "grants", grants(p));
                    // Table-valued settings as their own headers, after the scalars.
                    let (tables, scalars): (Vec<_>, Vec<_>) = p
                        .settings
                        .iter()
                        .partition(|(_, v)| matches!(v, Setting::Table(_)));
                    sub(
                        &mut subs,
                        "settings",
                        scalars
                            .iter()
                            .map(|(k, v)| (k.clone(), setting_value(v)))
                            .collect(),
                    );
                    for (k, v) in tables {
                        if let Setting::Table(kv) = v {
                            subs.push(format!("[plugins.{}.settings.{k}]", p.name));
                            for (kk, vv) in kv {
                                subs.push(format!("{kk} = {}", q(vv)));
                            }
                        }
                    }
                    if *how == 0 {
                        plugin_part.push(header);
                        plugin_part.push(file);
                        plugin_part.extend(subs);
                    } else {
                        plugin_part.extend(subs);
                        plugin_part.push(header);
                        plugin_part.push(file);
                    }
                }
                1 => {
                    plugin_part.push(header);
                    let mut lines = vec![file];
                    for (k, v) in limits(p) {
                        lines.push(format!("limits.{k} = {v}"));
                    }
                    for (k, v) in grants(p) {
                        lines.push(format!("grants.{k} = {v}"));
                    }
                    for (k, v) in &p.settings {
                        match v {
                            Setting::Table(kv) => {
                                for (kk, vv) in kv {
                                    lines.push(format!("settings.{k}.{kk} = {}", q(vv)));
                                }
                            }
                            other => lines.push(format!("settings.{k} = {}", setting_value(other))),
                        }
                    }
                    plugin_part.extend(ordered(lines, s.reverse_keys));
                }
                2 => {
                    plugin_part.push(header);
                    let mut lines = vec![file];
                    if !limits(p).is_empty() {
                        lines.push(format!("limits = {}", inline(limits(p))));
                    }
                    if !grants(p).is_empty() {
                        lines.push(format!("grants = {}", inline(grants(p))));
                    }
                    if !settings.is_empty() {
                        lines.push(format!("settings = {}", inline(settings.clone())));
                    }
                    plugin_part.extend(ordered(lines, s.reverse_keys));
                }
                _ => {
                    let mut pairs = vec![("file".to_string(), q(&p.file))];
                    if !limits(p).is_empty() {
                        pairs.push(("limits".to_string(), inline(limits(p))));
                    }
                    if !grants(p).is_empty() {
                        pairs.push(("grants".to_string(), inline(grants(p))));
                    }
                    if !settings.is_empty() {
                        pairs.push(("settings".to_string(), inline(settings.clone())));
                    }
                    inline_plugins.push(format!(
                        "{} = {}",
                        p.name,
                        inline(ordered(pairs, s.reverse_keys))
                    ));
                }
            }
        }
        if !inline_plugins.is_empty() {
            // One `[plugins]` header for every plugin written inline; it must come before the
            // `[plugins.x]` headers would define `plugins` implicitly... either order is valid.
            let mut part = vec!["[plugins]".to_string()];
            part.extend(inline_plugins);
            part.extend(plugin_part);
            plugin_part = part;
        }

        if let Some(n) = m.max_bytes {
            match s.input {
                0 => rest.extend(["[input]".to_string(), format!("max_bytes = {n}")]),
                1 => top.push(format!("input.max_bytes = {n}")),
                _ => top.push(format!("input = {{ max_bytes = {n} }}")),
            }
        }
        if let Some(l) = &m.listen {
            rest.extend(["[server]".to_string(), format!("listen = {}", q(l))]);
        }

        let mut out = top;
        if s.chain_first {
            out.extend(chain_part);
            out.extend(plugin_part);
        } else {
            out.extend(plugin_part);
            out.extend(chain_part);
        }
        out.extend(rest);
        out.join("\n") + "\n"
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_]{0,6}"
    }

    fn setting() -> impl Strategy<Value = Setting> {
        prop_oneof![
            // Printable ASCII but `$`: a setting's `${NAME}` is expanded from the environment,
            // so a generated `${` would be a (correctly refused) reference, not a spelling.
            "[ -#%-~]{0,12}".prop_map(Setting::Str),
            any::<i32>().prop_map(|i| Setting::Int(i64::from(i))),
            any::<bool>().prop_map(Setting::Bool),
            proptest::collection::btree_map(word(), "[a-z ]{0,8}", 1..3)
                .prop_map(|m| Setting::Table(m.into_iter().collect())),
        ]
    }

    fn plugin(name: String) -> impl Strategy<Value = Plugin> {
        (
            "[a-z]{1,8}\\.wasm",
            proptest::option::of(1u64..4096),
            proptest::option::of(1usize..8),
            proptest::option::of(any::<bool>()),
            proptest::collection::vec(
                select(vec!["http://localhost:11434", "https://api.example.com"]),
                0..2,
            ),
            proptest::option::of("/models/[a-z]{1,6}"),
            proptest::collection::btree_map(word(), setting(), 0..4),
        )
            .prop_map(
                move |(file, memory_mb, instances, warm, http, model_dir, settings)| Plugin {
                    name: name.clone(),
                    file,
                    memory_mb,
                    instances,
                    warm,
                    http: http
                        .into_iter()
                        .map(str::to_string)
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    model_dir,
                    settings: settings.into_iter().collect(),
                    unknown_limit: false,
                },
            )
    }

    fn model() -> impl Strategy<Value = Model> {
        (1usize..4)
            .prop_flat_map(|n| {
                let plugins: Vec<_> = (0..n).map(|i| plugin(format!("p{i}"))).collect();
                (plugins, Just(n))
            })
            .prop_flat_map(|(plugins, n)| {
                let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
                let step = (
                    0u8..4,
                    select(names.clone()),
                    select(names),
                    proptest::option::of("[a-z ]{1,10}"),
                )
                    .prop_map(|(kind, a, b, prompt)| match kind {
                        0 => StepModel {
                            kind: "describe-then-embed",
                            fields: [
                                ("describer", Some(a)),
                                ("embedder", Some(b)),
                                ("prompt", prompt),
                            ]
                            .into_iter()
                            .filter_map(|(k, v)| v.map(|v| (k, v)))
                            .collect(),
                        },
                        1 => StepModel {
                            kind: "image-embed",
                            fields: vec![("plugin", a)],
                        },
                        2 => StepModel {
                            kind: "description",
                            fields: vec![("embedder", a)],
                        },
                        _ => StepModel {
                            kind: "hash",
                            fields: vec![("plugin", a)],
                        },
                    });
                (
                    Just(plugins),
                    proptest::collection::vec(step, 1..4),
                    proptest::option::of("[a-z]{1,5}/[a-z]{1,5}"),
                    proptest::option::of(1u64..1_000_000),
                    proptest::option::of(select(vec!["127.0.0.1:9000", "0.0.0.0:80"])),
                )
            })
            .prop_map(|(plugins, steps, require_space, max_bytes, listen)| Model {
                require_space,
                steps,
                plugins,
                max_bytes,
                listen: listen.map(str::to_string),
            })
    }

    fn spelling(n_plugins: usize) -> impl Strategy<Value = Spelling> {
        (
            0u8..5,
            proptest::collection::vec(0u8..5, n_plugins),
            0u8..3,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(chain, plugins, input, chain_first, reverse_keys)| Spelling {
                    chain,
                    plugins,
                    input,
                    chain_first,
                    reverse_keys,
                },
            )
    }

    fn canonical(n: usize) -> Spelling {
        Spelling {
            chain: 0,
            plugins: vec![0; n],
            input: 0,
            chain_first: true,
            reverse_keys: false,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            "spelled.toml",
            Some(Path::new("/cfg")),
            &Env::isolated(),
        )
    }

    /// A fault planted in the model, and the text that marks the line it must be reported on.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        UnknownLimit,
        ZeroMemory,
        MissingPlugin,
        UnknownKind,
    }

    fn plant(m: &mut Model, fault: Fault, which: usize) -> &'static str {
        let p = which % m.plugins.len();
        let st = which % m.steps.len();
        match fault {
            Fault::UnknownLimit => {
                m.plugins[p].unknown_limit = true;
                "memroy_mb"
            }
            Fault::ZeroMemory => {
                m.plugins[p].memory_mb = Some(0);
                "memory_mb = 0"
            }
            Fault::MissingPlugin => {
                m.steps[st] = StepModel {
                    kind: "hash",
                    fields: vec![("plugin", "nope".into())],
                };
                "\"nope\""
            }
            Fault::UnknownKind => {
                m.steps[st] = StepModel {
                    kind: "magic",
                    fields: vec![("plugin", "p0".into())],
                };
                "\"magic\""
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

        #[test]
        fn every_spelling_means_the_same(
            (m, s) in model().prop_flat_map(|m| { let n = m.plugins.len(); (Just(m), spelling(n)) })
        ) {
            let reference = render(&m, &canonical(m.plugins.len()));
            let want = parse(&reference);
            prop_assert!(want.is_ok(), "canonical spelling refused: {:?}\n{}", want.err().map(|e| e.to_string()), reference);
            let text = render(&m, &s);
            let got = parse(&text);
            prop_assert!(got.is_ok(), "refused: {}\n---\n{}", got.as_ref().err().map(|e| e.to_string()).unwrap_or_default(), text);
            prop_assert_eq!(got.unwrap(), want.unwrap(), "\n{}", text);
        }

        #[test]
        fn a_fault_in_any_spelling_names_file_and_line(
            (mut m, s) in model().prop_flat_map(|m| { let n = m.plugins.len(); (Just(m), spelling(n)) }),
            fault in select(vec![Fault::UnknownLimit, Fault::ZeroMemory, Fault::MissingPlugin, Fault::UnknownKind]),
            which in 0usize..8,
        ) {
            let marker = plant(&mut m, fault, which);
            let text = render(&m, &s);
            let line = text.lines().position(|l| l.contains(marker)).map(|i| i + 1);
            prop_assert!(line.is_some(), "marker {} not rendered:\n{}", marker, text);
            let msg = match parse(&text) {
                Ok(_) => { prop_assert!(false, "accepted a config with {:?}:\n{}", fault, text); unreachable!() }
                Err(e) => e.to_string(),
            };
            let prefix = format!("spelled.toml:{}:", line.unwrap());
            prop_assert!(msg.starts_with(&prefix), "{:?}: {} (want {})\n---\n{}", fault, msg, prefix, text);
            let says = match fault {
                Fault::UnknownLimit => "memroy_mb",
                Fault::ZeroMemory => "memory_mb must be from 1",
                Fault::MissingPlugin => "no [plugins.nope] section",
                Fault::UnknownKind => "use describe-then-embed, image-embed, description or hash",
            };
            prop_assert!(msg.contains(says), "{}", msg);
        }
    }
}
