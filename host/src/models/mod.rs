//! Model files for local plugins: a registry of known models, and `pull` (download with resume and
//! SHA-256 checks), `list`, `remove` and `import` (an already-downloaded folder). Uses `config`
//! (where models live) and `input` (HTTP error text); the runtime asks it only for names.
//!
//! Each model lives in `<models dir>/<name>/`, the folder a plugin's `grants.model_dir` points at.
//! Files arrive as `<file>.part`, are hashed while they are written, and are renamed to their
//! final name only once their size and SHA-256 match the registry, so a plugin never sees a
//! half-written or unchecked file under a final name. `imbed-model.json` is written last:
//! `{"name": ..., "files": {"<path>": "<sha256 hex>"}, "source": "<url or import:<path>>",
//! "weights_sha256": ..., "converted": [...]}`. Plugins read it to put the weights' revision into
//! their embedding space id (`weights_sha256`: the same for every format the weights come in),
//! and the host checks the ONNX graphs it lists before loading them.
//!
//! A model's files come in formats: the safetensors the in-sandbox (candle) path reads, and the
//! ONNX graphs the host runs natively (`vision.onnx`, `text.onnx`), each with the files every
//! format needs (config, tokenizer). `pull` fetches the safetensors set unless asked for
//! [`Formats::onnx`] or both; `import` takes a folder holding either, and records a graph that is
//! not the registry's (one converted locally, e.g. by `scripts/onnx/minilm.py`) as converted,
//! with its own SHA-256.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imbed::models::ModelError> {
//! use imbed::models::{Models, NoProgress, Registry};
//!
//! let models = Models::new(Registry::builtin()?, "/srv/imbed/models");
//! let report = models.pull("all-minilm-l6-v2", None, &NoProgress).await?;
//! println!("{} files downloaded into {}", report.downloaded.len(), report.dir.display());
//! # Ok(()) }
//! ```

mod error;
mod files;
mod import;
mod local;
mod pull;
mod registry;
mod report;

pub use error::ModelError;
pub use local::{human_size, Models};
pub use registry::{
    check_base_url, Format, Formats, ModelFile, ModelSettings, ModelSpec, Registry,
};
pub use report::{
    FileOutcome, ImportReport, Manifest, ModelState, ModelStatus, NoProgress, Progress,
    ProgressEvent, PullReport,
};

/// The registry compiled into imbed: [`config/models.toml`](../../config/models.toml).
pub const BUILTIN_REGISTRY: &str = include_str!("../../../config/models.toml");

/// The file written last into a model's folder, naming the files and where they came from.
pub const MANIFEST: &str = "imbed-model.json";

/// Environment variable naming a mirror: files are fetched from `<mirror>/<model>/<path>`.
pub const MIRROR_ENV: &str = "IMBED_MODEL_MIRROR";

/// Held (with an OS file lock) while a pull, import or remove changes a model's folder.
const LOCK_FILE: &str = ".imbed-lock";

/// Read and hash files in pieces of this size.
const CHUNK: usize = 1 << 20;
