//! `imbed doctor`: the troubleshooting guide as a command. Checks that plugins load, asks each
//! whether it can work now (its backend reachable, its models there: the plugin knows its
//! backend, the host does not), checks that model files are present, and which chain steps can
//! answer right now.

use std::path::PathBuf;

use serde::Serialize;

use crate::chain::{Imbed, PluginCheck, PluginStatus, StepCheck};

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the config came from.
    pub config: String,
    /// Each plugin's load state.
    pub plugins: Vec<PluginStatus>,
    /// What each loaded plugin says about its backend and models.
    pub health: Vec<PluginCheck>,
    /// Each granted model directory.
    pub model_dirs: Vec<ModelDirCheck>,
    /// Each chain step, tried on a small test image.
    pub steps: Vec<StepCheck>,
    /// The endpoints of each pooled plugin, after the steps were tried: in the pool or out,
    /// and the requests in flight.
    pub endpoints: std::collections::BTreeMap<String, Vec<crate::EndpointStatus>>,
}

impl Report {
    /// Whether at least one step can answer.
    pub fn can_answer(&self) -> bool {
        self.steps.iter().any(|s| s.ok)
    }
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

/// Run every check.
pub async fn run(imbed: &Imbed) -> Report {
    let config = imbed.config();
    let health = imbed.plugin_checks().await;
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
        health,
        model_dirs,
        steps: imbed.check_steps().await,
        endpoints: imbed.endpoints(),
    }
}
