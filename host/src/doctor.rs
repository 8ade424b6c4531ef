//! `imbed doctor`: the troubleshooting guide as a command. Checks that Ollama is reachable and
//! has the configured models, that plugins load, that model files are present, and which chain
//! steps can answer right now.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::chain::{Imbed, PluginStatus, StepCheck};

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the config came from.
    pub config: String,
    /// Each plugin's load state.
    pub plugins: Vec<PluginStatus>,
    /// Each Ollama server the config talks to.
    pub ollama: Vec<OllamaCheck>,
    /// Each granted model directory.
    pub model_dirs: Vec<ModelDirCheck>,
    /// Each chain step, tried on a small test image.
    pub steps: Vec<StepCheck>,
}

impl Report {
    /// Whether at least one step can answer.
    pub fn can_answer(&self) -> bool {
        self.steps.iter().any(|s| s.ok)
    }
}

/// One Ollama server.
#[derive(Debug, Clone, Serialize)]
pub struct OllamaCheck {
    /// The plugin section that uses it.
    pub plugin: String,
    /// Its base URL.
    pub base_url: String,
    /// The server's version, when it answered.
    pub version: Option<String>,
    /// Why it could not be reached, with what to do.
    pub error: Option<String>,
    /// The configured models.
    pub models: Vec<ModelCheck>,
}

/// One configured Ollama model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCheck {
    /// `vision` or `embed`.
    pub role: String,
    /// The model name as configured.
    pub name: String,
    /// Whether the server has it.
    pub present: bool,
    /// What the server says it can do (`vision`, `embedding`, ...), when it says.
    pub capabilities: Vec<String>,
    /// What to do, when something is wrong.
    pub fix: Option<String>,
}

/// One granted model directory.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDirCheck {
    /// The plugin section.
    pub plugin: String,
    /// The directory.
    pub dir: PathBuf,
    /// Whether it exists.
    pub exists: bool,
    /// The files in it.
    pub files: Vec<String>,
    /// The registry model this folder holds (by folder name), when it is one.
    pub model: Option<String>,
    /// That model's state by the registry's sizes and manifest (no hashing: `imbed models list
    /// --verify` hashes).
    pub state: Option<crate::models::ModelState>,
    /// What is missing or wrong, and what to do (`imbed models pull <name>`).
    pub problems: Vec<String>,
}

fn with_latest(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

async fn check_ollama(
    plugin: &str,
    settings: &std::collections::BTreeMap<String, String>,
) -> OllamaCheck {
    let base = settings
        .get("base_url")
        .cloned()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let mut check = OllamaCheck {
        plugin: plugin.into(),
        base_url: base.clone(),
        version: None,
        error: None,
        models: vec![],
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            check.error = Some(format!("cannot build an HTTP client: {e}"));
            return check;
        }
    };
    let get = |path: &str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let r = client
                .get(&url)
                .send()
                .await
                .map_err(|e| crate::input::describe_reqwest(&e))?;
            let status = r.status();
            let bytes = r
                .bytes()
                .await
                .map_err(|e| crate::input::describe_reqwest(&e))?;
            let body: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{url} did not answer JSON: {e}"))?;
            if !status.is_success() {
                return Err(format!("{url} answered {status}"));
            }
            Ok::<Value, String>(body)
        }
    };
    match get("/api/version").await {
        Ok(v) => check.version = v.get("version").and_then(Value::as_str).map(str::to_string),
        Err(e) => {
            check.error = Some(format!(
                "cannot reach Ollama at {base} ({e}): start it with `ollama serve`, or set OLLAMA_BASE_URL to where it runs"
            ));
            return check;
        }
    }
    let tags = match get("/api/tags").await {
        Ok(t) => t,
        Err(e) => {
            check.error = Some(format!("cannot list models: {e}"));
            return check;
        }
    };
    let available: Vec<(String, Vec<String>)> = tags
        .get("models")
        .and_then(Value::as_array)
        .map(|models| {
            models
                .iter()
                .filter_map(|m| {
                    let name = m.get("name").and_then(Value::as_str)?.to_string();
                    let caps = m
                        .get("capabilities")
                        .and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok())
                        .unwrap_or_default();
                    Some((name, caps))
                })
                .collect()
        })
        .unwrap_or_default();
    for (role, key, needed) in [
        ("vision", "vision_model", "vision"),
        ("embed", "embed_model", "embedding"),
    ] {
        let Some(name) = settings.get(key) else {
            continue;
        };
        let found = available
            .iter()
            .find(|(n, _)| with_latest(n) == with_latest(name));
        let (present, capabilities) = match found {
            Some((_, caps)) => (true, caps.clone()),
            None => (false, vec![]),
        };
        let fix = if !present {
            Some(format!("run `ollama pull {name}`"))
        } else if !capabilities.is_empty() && !capabilities.iter().any(|c| c == needed) {
            Some(format!(
                "\"{name}\" cannot do {role} (it can: {}): set {key} to a {role} model",
                capabilities.join(", ")
            ))
        } else {
            None
        };
        check.models.push(ModelCheck {
            role: role.into(),
            name: name.clone(),
            present,
            capabilities,
            fix,
        });
    }
    check
}

/// Run every check.
pub async fn run(imbed: &Imbed) -> Report {
    let config = imbed.config();
    let mut ollama = Vec::new();
    for (key, p) in &config.plugins {
        let looks_like_ollama = key.contains("ollama")
            || p.path
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.contains("ollama"));
        if looks_like_ollama && p.settings.contains_key("base_url") {
            ollama.push(check_ollama(key, &p.settings).await);
        }
    }
    // The registry knows each model's files: a folder named after a registry model is checked
    // against it, the way `imbed models list` does.
    let registry = crate::models::Models::from_config(config, &crate::config::Env::isolated())
        .map(|m| m.registry().clone())
        .ok();
    let mut model_dirs: Vec<ModelDirCheck> = config
        .plugins
        .iter()
        .filter_map(|(key, p)| p.grants.model_dir.as_ref().map(|d| (key, d)))
        .map(|(key, dir)| {
            let files = std::fs::read_dir(dir)
                .map(|entries| {
                    let mut names: Vec<String> = entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    names
                })
                .unwrap_or_default();
            ModelDirCheck {
                plugin: key.clone(),
                dir: dir.clone(),
                exists: dir.is_dir(),
                files,
                model: None,
                state: None,
                problems: vec![],
            }
        })
        .collect();
    if let Some(registry) = registry {
        for check in &mut model_dirs {
            let name = check.dir.file_name().and_then(|n| n.to_str());
            let (Some(spec), Some(parent)) =
                (name.and_then(|n| registry.get(n).ok()), check.dir.parent())
            else {
                continue;
            };
            let models = crate::models::Models::new(registry.clone(), parent);
            if let Ok(status) = models.status(spec, false, &crate::models::NoProgress).await {
                check.model = Some(spec.name.clone());
                check.state = Some(status.state);
                check.problems = status.problems;
            }
        }
    }
    Report {
        config: config.source.clone(),
        plugins: imbed.plugins(),
        ollama,
        model_dirs,
        steps: imbed.check_steps().await,
    }
}
