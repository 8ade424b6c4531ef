//! What `imbed plugins`, `imbed plugins check` and `imbed doctor` report: each plugin's health
//! and whether each step can answer right now.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::imbed::Imbed;
use super::walk::StepError;
use crate::error::{Error, Result, UsageError};
use crate::input::{self, ValidImage};
use crate::runtime::{Roles, Runtime};
use crate::types::{FailureKind, HealthCheck, HealthStatus, SpaceId, StepKind};

/// The name of the model in a granted model directory, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelName {
    /// The name.
    pub name: String,
    /// `manifest` (its `imbed-model.json`) or `folder` (no manifest: the folder's name).
    pub from: &'static str,
}

impl ModelName {
    pub(super) fn of(dir: &std::path::Path) -> Option<ModelName> {
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
            None => crate::runtime::model_dir_name(dir).map(|name| ModelName {
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
) -> Result<(crate::runtime::ComponentReport, PluginHealth)> {
    let bytes = tokio::fs::read(path).await.map_err(|source| {
        Error::Input(crate::input::InputError::Read {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let runtime = Arc::new(Runtime::new(None, &Default::default(), 0)?);
    let report = runtime.inspect(&bytes).map_err(|e| {
        // The parser's message spans lines (a hex dump of the header); its first line says it.
        UsageError::NotAComponent {
            path: path.to_path_buf(),
            reason: e.lines().next().unwrap_or_default().to_string(),
        }
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
        shares_space_with: Vec::new(),
        endpoints: Vec::new(),
        breaker: Default::default(),
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
    pub space: Option<SpaceId>,
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

/// What a loaded plugin says about whether it can work now (its `health` export): the checks
/// of its backend and models, each with what to do when it fails.
#[derive(Debug, Clone, Serialize)]
pub struct PluginCheck {
    /// The config key.
    pub plugin: String,
    /// The contract version the plugin is built for.
    pub contract: &'static str,
    /// The plugin's checks, in the order to fix them; empty when it reported none or cannot
    /// report (see `reported`).
    pub checks: Vec<HealthCheck>,
    /// False for a plugin whose contract has no health export (0.1.0): only the step probes
    /// speak for it.
    pub reported: bool,
    /// Why the health check itself failed (a bad setting, a crash), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PluginCheck {
    /// The worst status among the checks (`unknown` when the plugin reported nothing).
    pub fn status(&self) -> HealthStatus {
        if self.error.is_some() {
            return HealthStatus::Failing;
        }
        let rank = |s: HealthStatus| match s {
            HealthStatus::Ok => 0,
            HealthStatus::Unknown => 1,
            HealthStatus::Degraded => 2,
            HealthStatus::Failing => 3,
        };
        match self
            .checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| rank(*s))
        {
            Some(s) if self.reported => s,
            _ if self.reported => HealthStatus::Ok,
            _ => HealthStatus::Unknown,
        }
    }
}

impl Imbed {
    /// Ask every loaded plugin whether it can work now (contract 0.2.0's `health`; a 0.1.0
    /// plugin cannot say). The plugins are asked at once: each may contact its backend.
    pub async fn plugin_checks(&self) -> Vec<PluginCheck> {
        let asks = self.inner.plugins.keys().filter_map(|key| {
            let plugin = self.plugin(key).ok()?.clone();
            Some(async move {
                let contract = plugin.contract();
                let mut check = PluginCheck {
                    plugin: key.clone(),
                    contract,
                    checks: Vec::new(),
                    reported: false,
                    error: None,
                };
                match plugin.health().await {
                    Ok(Some(checks)) => {
                        check.checks = checks;
                        check.reported = true;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        check.reported = true;
                        check.error = Some(format!("{}: {}", e.kind, e.message));
                    }
                }
                check
            })
        });
        futures::future::join_all(asks).await
    }

    /// Try every step on its own with a small test image and a test description: which steps
    /// can answer right now, and why the others cannot.
    pub async fn check_steps(&self) -> Vec<StepCheck> {
        let probe = probe_image();
        let mut checks = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            let outcome = match &probe {
                Ok(image) => {
                    self.walk()
                        .image_step(step, image, Some("a test image for imbed doctor"))
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
