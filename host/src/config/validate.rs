//! From the raw file to [`Config`]: paths resolved against the file's folder, `${VAR}`
//! expanded, every value checked, errors naming file and line. Also where a config is found
//! (`Config::discover`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::env::{expand_vars, xdg};
use super::located::Located;
use super::raw::*;
use super::*;
use crate::types::SpaceId;

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

/// `postgres://` and `postgresql://` select PostgreSQL; anything else is an SQLite path.
fn is_postgres_url(value: &str) -> bool {
    value.starts_with("postgres://") || value.starts_with("postgresql://")
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

    // Partners are checked once every plugin is known.
    for (key, section) in &raw.plugins {
        let Some(value) = &section.get_ref().shares_space_with else {
            continue;
        };
        for partner in &plugins[key.get_ref()].shares_space_with {
            if !plugins.contains_key(partner) {
                let known: Vec<&str> = plugins
                    .keys()
                    .filter(|k| *k != key.get_ref())
                    .map(String::as_str)
                    .collect();
                return ctx.err(
                    Some(value.span()),
                    format!(
                        "plugin {:?}: shares_space_with names {partner:?}, which has no [plugins.{partner}] section: name the config key of the plugin whose space this one computes too{}",
                        key.get_ref(),
                        if known.is_empty() {
                            String::new()
                        } else {
                            format!(" (configured: {})", known.join(", "))
                        }
                    ),
                );
            }
        }
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
        Some(s) => Some(SpaceId::new(ctx.expand(s)?)),
        None => None,
    };

    let server = validate_server(&raw.server, ctx)?;
    let from_env = ctx
        .env
        .get("IMBED_DATABASE_URL")
        .filter(|u| !u.trim().is_empty());
    let database = match &raw.cache.database {
        Some(db) if db.get_ref().trim().is_empty() => None,
        Some(db) if is_postgres_url(&ctx.expand(db)?) => Some(Database::Postgres(ctx.expand(db)?)),
        Some(db) => Some(Database::Sqlite(ctx.path(db)?)),
        // The key wins over the variable: a config file that names its database means it.
        None => match from_env {
            Some(url) if is_postgres_url(&url) => Some(Database::Postgres(url)),
            Some(url) => {
                return ctx.err(
                    None,
                    format!(
                        "IMBED_DATABASE_URL is {url:?}, not a postgres:// URL: write it as \
                         postgres://user:password@host:5432/database, or unset it"
                    ),
                )
            }
            None => Some(Database::Sqlite(
                PathBuf::from(ctx.env.get("IMBED_HOME").unwrap_or_default()).join("imbed.db"),
            )),
        },
    };
    let ef_search = match &raw.cache.ef_search {
        Some(ef) if !(1..=1000).contains(ef.get_ref()) => {
            return ctx.err(
                Some(ef.span()),
                "ef_search must be between 1 and 1000 (pgvector's hnsw.ef_search)",
            )
        }
        Some(ef) => *ef.get_ref(),
        None => 100,
    };
    let pool_size = match &raw.cache.pool_size {
        Some(n) if *n.get_ref() == 0 => {
            return ctx.err(Some(n.span()), "pool_size must be at least 1")
        }
        Some(n) => *n.get_ref(),
        None => 16,
    };
    let cache = CacheSettings {
        database,
        ef_search,
        halfvec: raw.cache.halfvec.unwrap_or(false),
        exact_rerank: raw.cache.exact_rerank.unwrap_or(false),
        pool_size,
        local_dir: PathBuf::from(ctx.env.get("IMBED_HOME").unwrap_or_default()).join("postgres"),
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

fn validate_models(raw: &RawModels, ctx: &Ctx<'_>) -> Result<ModelSettings, ConfigError> {
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
        normalize_base_url(text.trim())
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
    Ok(ModelSettings {
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
    let mut listed: Vec<(String, Option<std::ops::Range<usize>>)> = Vec::new();
    for (key, value) in &raw.settings {
        if let (POOLED_SETTING, toml::Value::Array(urls)) = (key.as_str(), value.get_ref()) {
            for url in urls {
                let Some(url) = url.as_str() else {
                    return ctx.err(value.span(), format!("plugin {name:?}: base_url takes a URL or a list of URLs, e.g. base_url = [\"http://gpu1:11434\", \"http://gpu2:11434\"]"));
                };
                let url = expand_vars(url, ctx.env).or_else(|m| ctx.err(value.span(), m))?;
                listed.push((url, value.span()));
            }
            if urls.is_empty() {
                return ctx.err(
                    value.span(),
                    format!("plugin {name:?}: base_url is an empty list: give at least one URL"),
                );
            }
            continue;
        }
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

    let mut shares_space_with = Vec::new();
    if let Some(value) = &raw.shares_space_with {
        let bad = || {
            ctx.err(
                Some(value.span()),
                format!("plugin {name:?}: shares_space_with must be a plugin's config key or a list of them, e.g. shares_space_with = \"ollama\""),
            )
        };
        let keys: Vec<&toml::Value> = match value.get_ref() {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for k in keys {
            let Some(k) = k.as_str() else {
                return bad();
            };
            if k == name {
                return ctx.err(
                    Some(value.span()),
                    format!("plugin {name:?}: shares_space_with names the plugin itself; a plugin always writes its own spaces: remove it"),
                );
            }
            if !shares_space_with.iter().any(|s| s == k) {
                shares_space_with.push(k.to_string());
            }
        }
        if shares_space_with.is_empty() {
            return bad();
        }
    }

    let endpoints = validate_endpoints(name, raw, listed, pool_size, &settings, &http, ctx)?;
    let breaker = validate_breaker(name, &raw.limits, ctx)?;

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
        shares_space_with,
        endpoints,
        breaker,
    })
}

/// The setting each pooled endpoint's instances get their endpoint's URL in.
const POOLED_SETTING: &str = "base_url";

/// The endpoints of a pool, from `[[plugins.X.endpoints]]` or a `base_url` list: each a valid
/// base URL, named once, and covered by the plugin's HTTP grants (its instances are granted only
/// their own endpoint, which the config must already allow).
fn validate_endpoints(
    name: &str,
    raw: &RawPlugin,
    listed: Vec<(String, Option<std::ops::Range<usize>>)>,
    default_concurrency: usize,
    settings: &BTreeMap<String, String>,
    http: &[url::Origin],
    ctx: &Ctx<'_>,
) -> Result<Vec<Endpoint>, ConfigError> {
    let mut wanted: Vec<(String, usize, Option<std::ops::Range<usize>>)> = listed
        .into_iter()
        .map(|(url, span)| (url, default_concurrency, span))
        .collect();
    if let Some(first) = raw.endpoints.first() {
        if !wanted.is_empty() || settings.contains_key(POOLED_SETTING) {
            return ctx.err(
                first.span(),
                format!("plugin {name:?}: both [[plugins.{name}.endpoints]] and settings.base_url are set: keep one (each endpoint's base_url is given to the plugin as its setting)"),
            );
        }
    }
    for e in &raw.endpoints {
        let e = e.get_ref();
        let concurrency = match &e.concurrency {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 256 => {
                return ctx.err(
                    Some(n.span()),
                    format!("plugin {name:?}: an endpoint's concurrency must be from 1 to 256"),
                )
            }
            Some(n) => *n.get_ref(),
            None => default_concurrency,
        };
        wanted.push((
            ctx.expand(&e.base_url)?,
            concurrency,
            Some(e.base_url.span()),
        ));
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (url, concurrency, span) in wanted {
        let base_url = normalize_base_url(&url).or_else(|m| {
            ctx.err(
                span.clone(),
                format!("plugin {name:?}: endpoint {url:?} is not a base URL: {m}"),
            )
        })?;
        if endpoints.iter().any(|e| e.base_url == base_url) {
            return ctx.err(
                span,
                format!("plugin {name:?}: endpoint {base_url} is listed twice: raise its concurrency instead"),
            );
        }
        let origin = url::Url::parse(&base_url)
            .map(|u| u.origin())
            .or_else(|e| ctx.err(span.clone(), format!("plugin {name:?}: {e}")))?;
        if !http.contains(&origin) {
            return ctx.err(
                span,
                format!(
                    "plugin {name:?}: endpoint {base_url} is not covered by its http grant: add {:?} to [plugins.{name}.grants] http",
                    origin.ascii_serialization()
                ),
            );
        }
        endpoints.push(Endpoint {
            base_url,
            origin,
            concurrency,
        });
    }
    Ok(endpoints)
}

fn validate_breaker(name: &str, limits: &RawLimits, ctx: &Ctx<'_>) -> Result<Breaker, ConfigError> {
    let mut breaker = Breaker::default();
    if let Some(n) = &limits.breaker_failures {
        if *n.get_ref() == 0 {
            return ctx.err(
                Some(n.span()),
                format!("plugin {name:?}: breaker_failures must be at least 1"),
            );
        }
        breaker.failures = *n.get_ref();
    }
    if let Some(ms) = &limits.breaker_cooldown_ms {
        if *ms.get_ref() == 0 {
            return ctx.err(
                Some(ms.span()),
                format!("plugin {name:?}: breaker_cooldown_ms must be greater than zero"),
            );
        }
        breaker.cooldown = Duration::from_millis(*ms.get_ref());
    }
    Ok(breaker)
}

/// The log and output budgets of `[plugins.X.limits]`: each at least 1 (a cap of 0 would
/// silence a plugin or refuse every answer, which no one means), defaults otherwise.
fn validate_budgets(name: &str, limits: &RawLimits, ctx: &Ctx<'_>) -> Result<Budgets, ConfigError> {
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
    let d = Budgets::default();
    let usize_pick = |value: &Option<Spanned<usize>>, default: usize, key: &str| {
        let as_u64 = value
            .as_ref()
            .map(|v| Spanned::new(v.span(), *v.get_ref() as u64));
        pick(&as_u64, default as u64, key, name, ctx).map(|v| v as usize)
    };
    Ok(Budgets {
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

/// An http(s) base URL without trailing slashes, or what is wrong with it. Shared with
/// `models`, which checks the URLs of registry files and `IMBED_MODEL_MIRROR` the same way.
pub(crate) fn normalize_base_url(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("write it as http(s)://host[:port]/path".to_string());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(
            "a base URL has no ?query or #fragment: file paths are appended to it".to_string(),
        );
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StepKind;

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
        let text = include_str!("../../../config/offline.toml");
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
    fn endpoints_come_from_a_base_url_list_or_tables_and_must_be_granted() {
        let parse = |extra: &str| {
            let text = format!("{MINIMAL}[plugins.hash.limits]\ninstances = 3\nbreaker_failures = 2\n[plugins.hash.grants]\nhttp = [\"http://gpu1:11434\", \"http://gpu2:11434\"]\n{extra}");
            Config::from_toml_str(&text, "pool.toml", None, &Env::isolated())
        };
        let cfg = parse(
            "[plugins.hash.settings]\nbase_url = [\"http://gpu1:11434/\", \"http://gpu2:11434\"]\n",
        )
        .unwrap();
        let p = &cfg.plugins["hash"];
        let urls: Vec<(&str, usize)> = p
            .endpoints
            .iter()
            .map(|e| (e.base_url.as_str(), e.concurrency))
            .collect();
        assert_eq!(urls, [("http://gpu1:11434", 3), ("http://gpu2:11434", 3)]);
        // Each endpoint's instances get their own URL: the list is not a setting of its own.
        assert!(!p.settings.contains_key("base_url"));
        assert_eq!(p.breaker.failures, 2);

        let cfg = parse("[[plugins.hash.endpoints]]\nbase_url = \"http://gpu1:11434\"\nconcurrency = 2\n[[plugins.hash.endpoints]]\nbase_url = \"http://gpu2:11434\"\n").unwrap();
        let c: Vec<usize> = cfg.plugins["hash"]
            .endpoints
            .iter()
            .map(|e| e.concurrency)
            .collect();
        assert_eq!(c, [2, 3]);

        let err = parse("[[plugins.hash.endpoints]]\nbase_url = \"http://gpu3:11434\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("add \"http://gpu3:11434\" to [plugins.hash.grants] http"),
            "{err}"
        );
        let err = parse("[plugins.hash.settings]\nbase_url = \"http://gpu1:11434\"\n[[plugins.hash.endpoints]]\nbase_url = \"http://gpu2:11434\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("keep one"), "{err}");
        // One URL stays a plain setting: no pool, no breaker.
        let cfg = parse("[plugins.hash.settings]\nbase_url = \"http://gpu1:11434\"\n").unwrap();
        assert!(cfg.plugins["hash"].endpoints.is_empty());
        assert_eq!(
            cfg.plugins["hash"].settings["base_url"],
            "http://gpu1:11434"
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
        assert_eq!(cfg.plugins["hash"].budgets, Budgets::default());
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
            Budgets::default().log_lines_per_minute
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
    fn shares_space_with_takes_a_key_or_a_list_and_links_both_ways() {
        let text = format!(
            "{MINIMAL}\n[plugins.a]\nfile = \"a.wasm\"\nshares_space_with = \"hash\"\n\
             [plugins.b]\nfile = \"b.wasm\"\nshares_space_with = [\"a\", \"a\"]\n\
             [plugins.c]\nfile = \"c.wasm\"\n"
        );
        let cfg = Config::from_toml_str(&text, "c.toml", None, &Env::isolated()).unwrap();
        assert_eq!(cfg.plugins["a"].shares_space_with, ["hash"]);
        assert_eq!(cfg.plugins["b"].shares_space_with, ["a"]);
        // One declaration links both keys, and links chain.
        assert_eq!(cfg.space_partners("hash"), ["a", "b"]);
        assert_eq!(cfg.space_partners("b"), ["a", "hash"]);
        assert!(cfg.space_partners("c").is_empty());
    }

    #[test]
    fn shares_space_with_must_name_another_configured_plugin() {
        let err = |extra: &str| {
            let text = format!("{MINIMAL}\n[plugins.a]\nfile = \"a.wasm\"\n{extra}\n");
            Config::from_toml_str(&text, "c.toml", None, &Env::isolated())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("shares_space_with = \"ollama\""),
            "c.toml:12: plugin \"a\": shares_space_with names \"ollama\", which has no [plugins.ollama] section: name the config key of the plugin whose space this one computes too (configured: hash)"
        );
        assert!(err("shares_space_with = \"a\"").contains("names the plugin itself"));
        assert!(err("shares_space_with = 3").contains("must be a plugin's config key"));
        assert!(err("shares_space_with = []").contains("must be a plugin's config key"));
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
    fn a_postgres_url_selects_postgresql_from_the_config_or_imbed_database_url() {
        let url = "postgres://imbed:pw@db:5432/imbed";
        let env = Env::isolated().set("IMBED_DATABASE_URL", url);
        let cfg = Config::from_toml_str(MINIMAL, "c.toml", None, &env).unwrap();
        assert_eq!(cfg.cache.database, Some(Database::Postgres(url.into())));
        assert_eq!((cfg.cache.ef_search, cfg.cache.pool_size), (100, 16));
        // The config's own key wins over the variable.
        let file = format!(
            "{MINIMAL}\n[cache]\ndatabase = \"/x/imbed.db\"\nef_search = 200\nhalfvec = true\n"
        );
        let cfg = Config::from_toml_str(&file, "c.toml", None, &env).unwrap();
        assert_eq!(
            cfg.cache.database,
            Some(Database::Sqlite("/x/imbed.db".into()))
        );
        assert_eq!((cfg.cache.ef_search, cfg.cache.halfvec), (200, true));
        let file = format!("{MINIMAL}\n[cache]\ndatabase = \"postgresql://h/db\"\n");
        let cfg = Config::from_toml_str(&file, "c.toml", None, &Env::isolated()).unwrap();
        assert_eq!(
            cfg.cache.database,
            Some(Database::Postgres("postgresql://h/db".into()))
        );
        let env = Env::isolated().set("IMBED_DATABASE_URL", "mysql://nope");
        let msg = Config::from_toml_str(MINIMAL, "c.toml", None, &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a postgres:// URL"), "{msg}");
        let file = format!("{MINIMAL}\n[cache]\nef_search = 0\n");
        let msg = Config::from_toml_str(&file, "c.toml", None, &Env::isolated())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("ef_search must be between 1 and 1000"),
            "{msg}"
        );
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
