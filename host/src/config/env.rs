//! Where `${NAME}` references in the config get their values, and how they are expanded.

use std::collections::BTreeMap;
use std::path::PathBuf;

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

    pub(super) fn home(&self) -> PathBuf {
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

pub(super) fn xdg(env: &Env, var: &str, fallback: &str) -> PathBuf {
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

/// Expands `${NAME}` and `${NAME:-default}` (the default may itself hold references); a `$` not
/// followed by `{` is kept as it is.
pub(super) fn expand_vars(input: &str, env: &Env) -> Result<String, String> {
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
