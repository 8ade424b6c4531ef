//! The `wasi:nn` capability: plugins hand tensors to named graphs that the host runs natively on
//! ONNX Runtime. Graphs are loaded only by name, from granted, SHA-256-checked files; guests never
//! pass model bytes, pointers or threads.
//!
//! - `bindings`: the generated `wasi:nn` host bindings (private) and their conversions;
//! - `registry`: graph name -> verified file (manifest SHA-256, hashed once per file version);
//! - `backend`: the ONNX Runtime library, sessions, tensors in and out, stoppable runs;
//! - `pool`: the threads runs execute on (never tokio's workers).
//!
//! Memory: the budget per plugin counts, for each loaded graph, the larger of its file size and
//! the growth of the process's resident memory while its session was created (weights, prepacked
//! copies, what the optimiser kept). It is enforced when a graph loads. It does not count the
//! activations and arena growth of runs (ONNX Runtime allocates those inside `Run`), and the
//! resident-memory figure can include allocations other threads made at the same moment.

mod backend;
mod bindings;
mod pool;
mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::{NnSettings, PluginConfig};
use crate::types::Inference;

pub(crate) use bindings::{add_to_linker, NnView};

/// The name recorded in provenance for this backend.
pub(crate) const BACKEND: &str = "onnxruntime";

// ---------------------------------------------------------------------------------------------
// Domain types

/// Element types of `wasi:nn` tensors. Only f16, f32, i32 and i64 reach ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F16,
    F32,
    F64,
    Bf16,
    U8,
    I32,
    I64,
}

impl TensorType {
    fn size(self) -> u64 {
        match self {
            TensorType::U8 => 1,
            TensorType::F16 | TensorType::Bf16 => 2,
            TensorType::F32 | TensorType::I32 => 4,
            TensorType::F64 | TensorType::I64 => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TensorType::F16 => "f16",
            TensorType::F32 => "f32",
            TensorType::F64 => "f64",
            TensorType::Bf16 => "bf16",
            TensorType::U8 => "u8",
            TensorType::I32 => "i32",
            TensorType::I64 => "i64",
        }
    }

    fn supported(self) -> bool {
        matches!(
            self,
            TensorType::F16 | TensorType::F32 | TensorType::I32 | TensorType::I64
        )
    }
}

/// A tensor as a guest built it (unchecked: the WIT constructor cannot fail, so every check
/// happens at `compute`), or as a graph returned it.
#[derive(Debug, Clone)]
pub struct TensorData {
    pub dims: Vec<u32>,
    pub ty: TensorType,
    /// Row-major elements, little-endian.
    pub bytes: Vec<u8>,
}

/// `wasi:nn` error codes, as the host's own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NnErrorCode {
    InvalidArgument,
    InvalidEncoding,
    Timeout,
    RuntimeError,
    UnsupportedOperation,
    TooLarge,
    NotFound,
    Security,
}

/// An error returned to the guest (never a trap).
#[derive(Debug, Clone)]
pub struct NnError {
    pub code: NnErrorCode,
    pub message: String,
}

impl NnError {
    pub(crate) fn new(code: NnErrorCode, message: impl Into<String>) -> Self {
        NnError {
            code,
            message: message.into(),
        }
    }
}

use NnErrorCode as Code;

// ---------------------------------------------------------------------------------------------
// Status for `imbed plugins`

/// The `wasi:nn` side of a plugin, for `imbed plugins`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NnStatus {
    /// Each granted graph and its file.
    pub graphs: Vec<GraphStatus>,
    /// The ONNX Runtime library.
    pub library: LibraryStatus,
    /// Native memory budget of the plugin, in bytes.
    pub memory_budget_bytes: u64,
    /// Native memory counted against it now (loaded graphs), in bytes.
    pub memory_used_bytes: u64,
    /// Intra-op threads per graph session.
    pub threads: usize,
}

/// One granted graph.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphStatus {
    /// The graph name the plugin loads it by.
    pub name: String,
    /// Its file, `<model_dir>/<name>.onnx`.
    pub file: PathBuf,
    /// `loaded`, `verified` (the file has its manifest SHA-256), `present` (not checked yet: it
    /// is checked when first loaded, or by `imbed plugins`), `missing`, `unlisted` (the manifest
    /// does not vouch for it) or `mismatch` (the file does not have the manifest's SHA-256).
    pub state: String,
    /// Native memory counted for it while loaded, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// What to do, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The ONNX Runtime library as imbed resolves it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LibraryStatus {
    /// The file, when one was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Its version, when it was opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Loaded into this process.
    pub loaded: bool,
    /// What is wrong and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The host side, shared by every plugin of one runtime

/// The capability's process-side state: settings, the run pool, the library.
pub(crate) struct NnHost {
    settings: NnSettings,
    /// Intra-op threads for each session.
    threads: usize,
    pool: pool::RunPool,
}

impl NnHost {
    /// `nn_plugins`: how many plugins are granted graphs (the default thread count divides the
    /// cores among them).
    pub(crate) fn new(settings: NnSettings, nn_plugins: usize) -> NnHost {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = settings
            .threads
            .unwrap_or_else(|| (cores / nn_plugins.max(1)).max(1));
        let runs = settings.runs.unwrap_or(cores).max(1);
        NnHost {
            settings,
            threads,
            pool: pool::RunPool::new(runs),
        }
    }

    /// The capability for one plugin (empty grants refuse everything).
    pub(crate) fn plugin(self: &Arc<Self>, key: &str, cfg: &PluginConfig) -> Arc<PluginNn> {
        Arc::new(PluginNn {
            key: key.to_string(),
            grants: cfg.grants.nn.clone(),
            model_dir: cfg.grants.model_dir.clone(),
            budget: cfg.nn_memory_bytes,
            host: self.clone(),
            graphs: tokio::sync::Mutex::new(HashMap::new()),
            loaded: std::sync::Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
        })
    }

    /// The library file, or what to do to get one.
    fn library_path(&self) -> Result<PathBuf, String> {
        backend::resolve_library(
            self.settings.library.as_deref(),
            &self.settings.library_dirs,
        )
    }

    fn library(&self) -> Result<(), NnError> {
        let path = self
            .library_path()
            .map_err(|m| NnError::new(Code::NotFound, m))?;
        backend::load_library(&path)
            .map(|_| ())
            .map_err(|m| NnError::new(Code::RuntimeError, m))
    }

    fn library_status(&self) -> LibraryStatus {
        match self.library_path() {
            Err(problem) => LibraryStatus {
                path: None,
                version: None,
                loaded: false,
                problem: Some(problem),
            },
            Ok(path) => match backend::loaded_library() {
                Some((p, version)) if p == path => LibraryStatus {
                    path: Some(path),
                    version: Some(version),
                    loaded: true,
                    problem: None,
                },
                _ => match backend::probe_library(&path) {
                    Ok(version) => LibraryStatus {
                        path: Some(path),
                        version: Some(version),
                        loaded: false,
                        problem: None,
                    },
                    Err(problem) => LibraryStatus {
                        path: Some(path),
                        version: None,
                        loaded: false,
                        problem: Some(problem),
                    },
                },
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One plugin's capability, shared by all its instances

/// A loaded graph: one session shared by every instance of the plugin.
pub struct LoadedGraph {
    name: String,
    graph: backend::Graph,
    /// The file version it was loaded from.
    size: u64,
    mtime: Option<SystemTime>,
    /// Native memory counted for it.
    charge: u64,
}

/// The `wasi:nn` grants, budget and loaded graphs of one plugin.
pub(crate) struct PluginNn {
    key: String,
    grants: Vec<String>,
    model_dir: Option<PathBuf>,
    budget: u64,
    host: Arc<NnHost>,
    /// Loaded graphs by name, kept for the plugin's lifetime: a guest that loads its graph in
    /// every call (or every new instance) gets the same session, not a new one each time.
    graphs: tokio::sync::Mutex<HashMap<String, Arc<LoadedGraph>>>,
    /// Charges of live graphs by name, for the status.
    loaded: std::sync::Mutex<HashMap<String, u64>>,
    /// Native memory counted now.
    used: AtomicU64,
}

impl PluginNn {
    fn file(&self, name: &str) -> Option<PathBuf> {
        self.model_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.onnx")))
    }

    /// `load-by-name`: the grant, the manifest, the budget, then one session per file version.
    pub(crate) async fn load_by_name(&self, name: &str) -> Result<Arc<LoadedGraph>, NnError> {
        let key = &self.key;
        if self.grants.is_empty() {
            return Err(NnError::new(
                Code::Security,
                format!("plugin {key:?} is not granted wasi-nn: add nn = [\"{name}\"] (and a model_dir) to [plugins.{key}.grants]"),
            ));
        }
        if !self.grants.iter().any(|g| g == name) {
            return Err(NnError::new(
                Code::Security,
                format!(
                    "graph {name:?} is not granted to plugin {key:?} (granted: {}): add it to [plugins.{key}.grants] nn",
                    self.grants.join(", ")
                ),
            ));
        }
        let Some(path) = self.file(name) else {
            return Err(NnError::new(
                Code::Security,
                format!("plugin {key:?} has no model_dir grant to find graph {name:?} in"),
            ));
        };
        self.host.library()?;

        let mut graphs = self.graphs.lock().await;
        let meta = tokio::fs::metadata(&path).await.map_err(|e| {
            NnError::new(
                Code::NotFound,
                format!(
                    "graph file {} for graph {name:?} is not there ({e}): put the model's ONNX files in [plugins.{key}.grants] model_dir: `imbed models pull <model> --format onnx` (names in `imbed models list`) or `imbed models import`",
                    path.display()
                ),
            )
        })?;
        let (size, mtime) = (meta.len(), meta.modified().ok());
        if let Some(g) = graphs.get(name) {
            if g.size == size && g.mtime == mtime {
                return Ok(g.clone());
            }
        }
        let expected = registry::manifest_sha256(&path, name)?;
        // A new version of the file replaces the old session (instances that still hold the
        // old one keep it until they drop it; it is no longer counted).
        if let Some(old) = graphs.remove(name) {
            self.used.fetch_sub(old.charge, Ordering::Relaxed);
            self.loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
        }
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(size) > self.budget {
            return Err(self.over_budget(name, size, used));
        }
        let threads = self.host.threads;
        let (graph, charge) = {
            let path = path.clone();
            let name = name.to_string();
            tokio::task::spawn_blocking(move || -> Result<(backend::Graph, u64), NnError> {
                let bytes = std::fs::read(&path).map_err(|e| {
                    NnError::new(
                        Code::NotFound,
                        format!("cannot read graph file {}: {e}", path.display()),
                    )
                })?;
                registry::verify(&path, &name, size, mtime, &bytes, &expected)?;
                let before = registry::resident_bytes();
                let graph = backend::Graph::from_bytes(&bytes, threads)
                    .map_err(|e| NnError::new(e.code, format!("graph {name:?}: {}", e.message)))?;
                let grown = registry::resident_bytes().saturating_sub(before);
                Ok((graph, grown.max(size)))
            })
            .await
            .map_err(|e| NnError::new(Code::RuntimeError, format!("loading panicked: {e}")))??
        };
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(charge) > self.budget {
            return Err(self.over_budget(name, charge, used));
        }
        self.used.fetch_add(charge, Ordering::Relaxed);
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), charge);
        let loaded = Arc::new(LoadedGraph {
            name: name.to_string(),
            graph,
            size,
            mtime,
            charge,
        });
        graphs.insert(name.to_string(), loaded.clone());
        tracing::info!(
            plugin = key.as_str(),
            graph = name,
            "loaded graph {} ({} MiB counted against the plugin's native memory budget)",
            path.display(),
            charge >> 20
        );
        Ok(loaded)
    }

    fn over_budget(&self, name: &str, need: u64, used: u64) -> NnError {
        let key = &self.key;
        NnError::new(
            Code::TooLarge,
            format!(
                "graph {name:?} needs {} of native memory, and plugin {key:?} has {} of its {} budget in use: raise [plugins.{key}.limits] nn_memory_mb",
                mib(need),
                mib(used),
                mib(self.budget)
            ),
        )
    }

    /// Check a guest's inputs against `graph` (nothing reaches ONNX Runtime before this).
    pub(crate) fn check(
        &self,
        graph: &LoadedGraph,
        inputs: Vec<(String, TensorData)>,
    ) -> Result<backend::Checked, NnError> {
        graph
            .graph
            .check_inputs(inputs, self.host.settings.max_tensor_bytes)
    }

    /// Run `graph` on the pool; past `deadline` the run is told to stop and `timeout` returned.
    pub(crate) async fn compute(
        &self,
        graph: Arc<LoadedGraph>,
        checked: backend::Checked,
        deadline: Instant,
    ) -> Result<Vec<(String, TensorData)>, NnError> {
        let max = self.host.settings.max_tensor_bytes;
        let options = Arc::new(backend::Stop::new()?);
        // Told to stop if this future is dropped (the plugin call's outer timeout) as well as
        // at the deadline: a run nobody waits for must not keep a core busy.
        let guard = StopOnDrop(options.clone());
        let job = {
            let graph = graph.clone();
            let options = options.clone();
            move || {
                if Instant::now() >= deadline {
                    return Err(NnError::new(
                        Code::Timeout,
                        "the plugin call's deadline passed before the run started",
                    ));
                }
                graph.graph.run(checked, &options, max)
            }
        };
        let rx = self.host.pool.submit(job);
        let result = match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NnError::new(
                Code::RuntimeError,
                "the run was lost (its thread ended)",
            )),
            Err(_) => {
                options.stop();
                Err(NnError::new(
                    Code::Timeout,
                    format!(
                        "graph {:?} ran past the plugin call's deadline and was stopped (raise [plugins.{}.limits] timeout_ms if it needs longer)",
                        graph.name, self.key
                    ),
                ))
            }
        };
        // A finished run's stop flag is harmless to set: the guard may fire now.
        drop(guard);
        result
    }

    /// For `imbed plugins`; `None` for a plugin granted no graphs. Never hashes (see
    /// [`PluginNn::verify_files`]): the server calls this on request threads.
    pub(crate) fn status(&self) -> Option<NnStatus> {
        if self.grants.is_empty() {
            return None;
        }
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let graphs = self
            .grants
            .iter()
            .map(|name| {
                let file = self.file(name).unwrap_or_default();
                let (state, problem) = match loaded.get(name) {
                    Some(_) => ("loaded".to_string(), None),
                    None => registry::file_state(&file, name),
                };
                GraphStatus {
                    name: name.clone(),
                    file,
                    state,
                    memory_bytes: loaded.get(name).copied(),
                    problem,
                }
            })
            .collect();
        Some(NnStatus {
            graphs,
            library: self.host.library_status(),
            memory_budget_bytes: self.budget,
            memory_used_bytes: self.used.load(Ordering::Relaxed),
            threads: self.host.threads,
        })
    }

    /// Hash every granted graph file not hashed yet, so `status` can say `verified`.
    pub(crate) async fn verify_files(&self) {
        let files: Vec<(String, PathBuf)> = self
            .grants
            .iter()
            .filter_map(|n| self.file(n).map(|f| (n.clone(), f)))
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for (name, file) in files {
                registry::verify_file(&file, &name);
            }
        })
        .await;
    }
}

struct StopOnDrop(Arc<backend::Stop>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

// ---------------------------------------------------------------------------------------------
// Per instance

/// One instance's view of the capability, kept in its store.
pub(crate) struct InstanceNn {
    pub(crate) plugin: Arc<PluginNn>,
    /// What ran natively during the current call.
    pub(crate) used: Option<Inference>,
}

impl InstanceNn {
    pub(crate) fn new(plugin: Arc<PluginNn>) -> Self {
        InstanceNn { plugin, used: None }
    }
}
