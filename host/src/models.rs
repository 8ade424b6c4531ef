//! Model files for local plugins: a registry of known models, and `pull` (download with resume and
//! SHA-256 checks), `list`, `remove` and `import` (an already-downloaded folder).
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Config, Env};
use crate::input::describe_reqwest;

/// The registry compiled into imbed: [`config/models.toml`](../../config/models.toml).
pub const BUILTIN_REGISTRY: &str = include_str!("../../config/models.toml");

/// The file written last into a model's folder, naming the files and where they came from.
pub const MANIFEST: &str = "imbed-model.json";

/// Environment variable naming a mirror: files are fetched from `<mirror>/<model>/<path>`.
pub const MIRROR_ENV: &str = "IMBED_MODEL_MIRROR";

/// Held (with an OS file lock) while a pull, import or remove changes a model's folder.
const LOCK_FILE: &str = ".imbed-lock";

/// Read and hash files in pieces of this size.
const CHUNK: usize = 1 << 20;

/// Something went wrong with a model's files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No model of this name is in the registry.
    #[error("unknown model {name:?}: known models are {}", known.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names the registry knows.
        known: Vec<String>,
    },
    /// A registry file does not parse or has a bad entry.
    #[error("model registry {origin}: {message}")]
    Registry {
        /// The registry (a path, or `<built-in>`).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A download URL (a mirror, `--from`, a per-model `url`) is not usable.
    #[error("{url:?} is not a usable download URL: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A file or folder could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "read", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server could not be reached or the request failed before any answer.
    #[error("cannot download {url}: {message}: check the network, or use a mirror (IMBED_MODEL_MIRROR, [models] mirror, or --from URL)")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}{}", status_hint(*.status))]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The connection broke during a download; the part already received is kept.
    #[error("download of {file} was interrupted at {done} of {size} bytes ({message}); the part received is kept in {}: run `imbed models pull {model}` again to resume", part.display())]
    Interrupted {
        /// The model.
        model: String,
        /// The file, relative to the model's folder.
        file: String,
        /// Bytes received so far (including earlier attempts).
        done: u64,
        /// Expected size.
        size: u64,
        /// The partial file, resumed by the next pull.
        part: PathBuf,
        /// Where from, and what broke.
        message: String,
    },
    /// A file's size or SHA-256 is not what the registry says; it was deleted.
    #[error("{file} of model {model} from {from} does not match the registry: {detail}; the file was deleted — check the source (mirror, --from URL or folder), then try again")]
    Corrupt {
        /// The model.
        model: String,
        /// The file, relative to the model's folder.
        file: String,
        /// Where it came from (a URL or a path).
        from: String,
        /// Expected versus actual size and SHA-256.
        detail: String,
    },
    /// A folder given to `import` lacks files or has files that do not match the registry;
    /// nothing was changed.
    #[error("cannot import model {model} from {}: {}; nothing was changed", folder.display(), problems.join("; "))]
    ImportRejected {
        /// The model.
        model: String,
        /// The folder.
        folder: PathBuf,
        /// Each missing or mismatching file.
        problems: Vec<String>,
    },
    /// Another process is pulling, importing or removing the same model.
    #[error("another imbed is changing model {model} right now (lock {}): wait for it to finish, then try again", lock.display())]
    Busy {
        /// The model.
        model: String,
        /// The lock file.
        lock: PathBuf,
    },
}

impl ModelError {
    /// True for mistakes in what the caller asked (an unknown name, a bad URL, a bad registry),
    /// as opposed to failures of the network or the files.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ModelError::UnknownModel { .. }
                | ModelError::BadUrl { .. }
                | ModelError::Registry { .. }
        )
    }

    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        404 => ": the file is not there — check the mirror or --from URL (files are looked up as <mirror>/<model>/<path>)",
        401 | 403 => ": access denied — the server wants credentials imbed does not send; use a mirror",
        429 => ": too many requests — wait a little, then pull again (it resumes)",
        500..=599 => ": the server failed — try again later or use a mirror",
        _ => "",
    }
}

/// Which format a file belongs to; files of no format are needed by every format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Format {
    /// The weights the plugins' in-sandbox path (candle) reads.
    Safetensors,
    /// Graphs the host runs natively for the plugin (wasi-nn on ONNX Runtime).
    Onnx,
}

impl Format {
    /// Its name in the registry, the manifest and `--format`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Onnx => "onnx",
        }
    }
}

/// The formats a pull fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    /// The safetensors set.
    pub safetensors: bool,
    /// The ONNX graphs.
    pub onnx: bool,
}

impl Default for Formats {
    /// The safetensors set: what every host can run.
    fn default() -> Self {
        Formats {
            safetensors: true,
            onnx: false,
        }
    }
}

impl Formats {
    /// The ONNX graphs only (with the files every format needs).
    pub fn onnx() -> Self {
        Formats {
            safetensors: false,
            onnx: true,
        }
    }

    /// Every format.
    pub fn all() -> Self {
        Formats {
            safetensors: true,
            onnx: true,
        }
    }

    /// Does this selection include `file`?
    pub fn includes(&self, file: &ModelFile) -> bool {
        match file.format {
            None => true,
            Some(Format::Safetensors) => self.safetensors,
            Some(Format::Onnx) => self.onnx,
        }
    }
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelFile {
    /// Path relative to the model's folder, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// The format it belongs to; `None`: every format needs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Where the registry fetches it from when that is not `<source>/<path>` (a file published
    /// in another repository, such as a public ONNX export, under another name). Mirrors and
    /// `--from` still use `<path>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A model the registry knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSpec {
    /// Name, also the folder name under the models directory.
    pub name: String,
    /// Config key of the plugin it is for.
    pub plugin: String,
    /// One line for people.
    pub description: String,
    /// Base URL: each file is fetched from `<source>/<path>`.
    pub source: String,
    /// The files, all required.
    pub files: Vec<ModelFile>,
}

impl ModelSpec {
    /// Total size of the files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The SHA-256 of the reference weights: the safetensors file (tagged so, else the first
    /// `*.safetensors`). Written into every manifest, so a plugin names the same space whichever
    /// format of the weights it runs.
    pub fn weights_sha256(&self) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.format == Some(Format::Safetensors))
            .or_else(|| self.files.iter().find(|f| f.path.ends_with(".safetensors")))
            .map(|f| f.sha256.as_str())
    }

    /// The formats the registry has files for.
    pub fn formats(&self) -> Vec<Format> {
        let mut out: Vec<Format> = Vec::new();
        for f in self.files.iter().filter_map(|f| f.format) {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    fn files_of(&self, format: Format) -> impl Iterator<Item = &ModelFile> {
        self.files.iter().filter(move |f| f.format == Some(format))
    }
}

/// The models `imbed models` knows about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registry {
    models: Vec<ModelSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    plugin: String,
    #[serde(default)]
    description: String,
    source: String,
    files: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    size: u64,
    sha256: String,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    url: Option<String>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// A relative path that stays inside the model's folder and needs no escaping in a URL.
fn valid_file_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with('.'))
        && path != MANIFEST
        && !path.ends_with(".part")
}

fn valid_sha256(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Check an http(s) base URL and drop trailing slashes.
pub fn check_base_url(url: &str) -> Result<String, ModelError> {
    let bad = |message: &str| ModelError::BadUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("{e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(bad("write it as http(s)://host[:port]/path"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(
            "a base URL has no ?query or #fragment: file paths are appended to it",
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl Registry {
    /// The registry compiled into imbed.
    pub fn builtin() -> Result<Registry, ModelError> {
        Registry::from_toml_str(BUILTIN_REGISTRY, "<built-in>")
    }

    /// Parse a registry (the format of `config/models.toml`); `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Registry, ModelError> {
        let err = |message: String| ModelError::Registry {
            origin: origin.to_string(),
            message,
        };
        let raw: RawRegistry = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut models: Vec<ModelSpec> = Vec::new();
        for m in raw.models {
            if !valid_name(&m.name) {
                return Err(err(format!(
                    "model name {:?} is not allowed: use lowercase letters, digits, -, _ and .",
                    m.name
                )));
            }
            if models.iter().any(|x| x.name == m.name) {
                return Err(err(format!("model {:?} is listed twice", m.name)));
            }
            let source = check_base_url(&m.source)
                .map_err(|e| err(format!("model {:?}: source: {e}", m.name)))?;
            if m.files.is_empty() {
                return Err(err(format!("model {:?} lists no files", m.name)));
            }
            let mut files: Vec<ModelFile> = Vec::new();
            for f in m.files {
                if !valid_file_path(&f.path) {
                    return Err(err(format!(
                        "model {:?}: file path {:?} is not allowed: a relative path of letters, digits, -, _, . and /, without `..`, hidden parts, or the names {MANIFEST} and *.part",
                        m.name, f.path
                    )));
                }
                if files.iter().any(|x| x.path == f.path) {
                    return Err(err(format!(
                        "model {:?}: file {:?} is listed twice",
                        m.name, f.path
                    )));
                }
                let sha256 = f.sha256.to_ascii_lowercase();
                if !valid_sha256(&sha256) {
                    return Err(err(format!(
                        "model {:?}: file {:?}: sha256 must be 64 hex digits, not {:?} (a file whose SHA-256 is not known cannot be listed)",
                        m.name, f.path, f.sha256
                    )));
                }
                let url = match &f.url {
                    Some(u) => Some(check_base_url(u).map_err(|e| {
                        err(format!("model {:?}: file {:?}: url: {e}", m.name, f.path))
                    })?),
                    None => None,
                };
                files.push(ModelFile {
                    path: f.path,
                    size: f.size,
                    sha256,
                    format: f.format,
                    url,
                });
            }
            models.push(ModelSpec {
                name: m.name,
                plugin: m.plugin,
                description: m.description,
                source,
                files,
            });
        }
        Ok(Registry { models })
    }

    /// Read a registry file.
    pub fn load(path: &Path) -> Result<Registry, ModelError> {
        // A registry named in the config that cannot be read is a config mistake, like a bad one.
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Registry {
            origin: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        Registry::from_toml_str(&text, &path.display().to_string())
    }

    /// Add `other`'s models; one with the name of a model already here replaces it.
    pub fn merge(&mut self, other: Registry) {
        for m in other.models {
            match self.models.iter_mut().find(|x| x.name == m.name) {
                Some(slot) => *slot = m,
                None => self.models.push(m),
            }
        }
    }

    /// All models, in registry order.
    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// A model by name; an unknown name is an error that lists the known ones.
    pub fn get(&self, name: &str) -> Result<&ModelSpec, ModelError> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ModelError::UnknownModel {
                name: name.to_string(),
                known: self.models.iter().map(|m| m.name.clone()).collect(),
            })
    }
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

/// What `imbed-model.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The model's name.
    pub name: String,
    /// Each file's path and SHA-256 (lowercase hex).
    pub files: BTreeMap<String, String>,
    /// The base URL the files came from, or `import:<folder>`.
    pub source: String,
    /// The SHA-256 of the reference weights (the registry's safetensors), whichever formats
    /// are here: plugins name their space after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    /// Graphs that are not the registry's files but were converted from the same weights and
    /// imported (their SHA-256 in `files` is their own, recorded at import).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub converted: Vec<String>,
}

impl Manifest {
    /// The registry's files of `formats`.
    fn for_spec(spec: &ModelSpec, formats: Formats, source: String) -> Manifest {
        Manifest {
            name: spec.name.clone(),
            files: spec
                .files
                .iter()
                .filter(|f| formats.includes(f))
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect(),
            source,
            weights_sha256: spec.weights_sha256().map(str::to_string),
            converted: Vec::new(),
        }
    }

    /// Does it describe registry files only (converted graphs with their own SHA-256), every
    /// file all formats need, and every file of each format it lists any of?
    fn matches(&self, spec: &ModelSpec) -> bool {
        let listed_right = self.files.iter().all(|(path, sha)| {
            spec.files.iter().any(|f| {
                f.path == *path
                    && (f.sha256 == *sha
                        || (f.format == Some(Format::Onnx) && self.converted.contains(path)))
            })
        });
        let formats_whole = spec.files.iter().all(|f| {
            let wanted = match f.format {
                None => true,
                Some(format) => spec
                    .files_of(format)
                    .any(|g| self.files.contains_key(&g.path)),
            };
            !wanted || self.files.contains_key(&f.path)
        });
        self.name == spec.name
            && listed_right
            && formats_whole
            // Manifests written before formats existed have no weights_sha256.
            && (self.weights_sha256.is_none()
                || self.weights_sha256.as_deref() == spec.weights_sha256())
    }
}

/// What happens during a pull, an import or a verification, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressEvent<'a> {
    /// An existing file is being hashed.
    Checking {
        /// The file, relative to the model's folder.
        file: &'a str,
        /// Its size.
        size: u64,
    },
    /// A download starts; `offset` > 0 means a partial file is being resumed.
    Downloading {
        /// The file.
        file: &'a str,
        /// Where from.
        url: &'a str,
        /// Its expected size.
        size: u64,
        /// Bytes already there.
        offset: u64,
    },
    /// A file is being copied or linked from an import folder.
    Importing {
        /// The file.
        file: &'a str,
        /// Its size.
        size: u64,
    },
    /// Bytes of the current file done so far (downloaded, hashed or copied).
    Advanced {
        /// The file.
        file: &'a str,
        /// Bytes done.
        done: u64,
    },
    /// The current file is finished.
    Finished {
        /// The file.
        file: &'a str,
        /// How it ended.
        outcome: FileOutcome,
    },
}

/// How one file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FileOutcome {
    /// Downloaded and verified.
    Downloaded,
    /// Already there with the right SHA-256.
    AlreadyPresent,
    /// Imported by a hard link (same file system) and verified.
    Linked,
    /// Imported by a copy and verified.
    Copied,
    /// Hashed and matches the registry.
    Verified,
    /// Hashed and does not match the registry (or is missing).
    Mismatch,
}

/// Receives [`ProgressEvent`]s; the CLI draws a progress bar with it, the library stays UI-free.
pub trait Progress: Send + Sync {
    /// Called for each event, from the task doing the work: keep it quick.
    fn event(&self, event: ProgressEvent<'_>);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: ProgressEvent<'_>) {}
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullReport {
    /// The model.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// The base URL the files were fetched from.
    pub source: String,
    /// Files downloaded now.
    pub downloaded: Vec<String>,
    /// Of those, the ones that continued a partial download.
    pub resumed: Vec<String>,
    /// Files that were already there and verified.
    pub already_present: Vec<String>,
    /// Bytes received over the network.
    pub bytes_downloaded: u64,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// The model.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// The folder imported from.
    pub from: PathBuf,
    /// Each file and how it was placed.
    pub files: Vec<(String, FileOutcome)>,
}

/// Whether a model is ready for its plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ModelState {
    /// Every file is there with the right size (and, when verified, the right SHA-256), and
    /// the manifest matches the registry.
    Complete,
    /// Some files (or the manifest) are missing, or a download was interrupted.
    Incomplete,
    /// A file has the wrong size or SHA-256, or the manifest names other files.
    Corrupt,
    /// Nothing is there.
    Absent,
}

/// One model in `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelStatus {
    /// The model.
    pub name: String,
    /// The plugin it is for.
    pub plugin: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Ready or not.
    pub state: ModelState,
    /// Whether the files were hashed (`--verify`) rather than only sized.
    pub verified: bool,
    /// Bytes of the registry's files present (partial downloads included).
    pub size_on_disk: u64,
    /// Bytes the complete model takes.
    pub size: u64,
    /// Where the files came from, from the manifest.
    pub source: Option<String>,
    /// The formats whose files are here (or partly here): `safetensors`, `onnx`.
    pub formats: Vec<Format>,
    /// What is missing or wrong, each with what to do.
    pub problems: Vec<String>,
}

/// Model management over one models directory and registry.
#[derive(Debug, Clone)]
pub struct Models {
    registry: Registry,
    dir: PathBuf,
    env_mirror: Option<String>,
    config_mirror: Option<String>,
    urls: BTreeMap<String, String>,
    /// The HTTP client, or why it could not be built (reported by the first download).
    client: Result<reqwest::Client, String>,
}

impl Models {
    /// Manage the models of `registry` under `dir`, fetching from each model's registry source.
    pub fn new(registry: Registry, dir: impl Into<PathBuf>) -> Models {
        let client = reqwest::Client::builder()
            .user_agent(concat!("imbed/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // No overall deadline: a 600 MB file on a slow line takes long. A connection that
            // goes quiet for this long is broken, and the next pull resumes it.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| describe_reqwest(&e));
        Models {
            registry,
            dir: dir.into(),
            env_mirror: None,
            config_mirror: None,
            urls: BTreeMap::new(),
            client,
        }
    }

    /// From a config: its `[models]` section, the built-in registry plus the config's extra
    /// registry file, and [`MIRROR_ENV`] from `env`.
    pub fn from_config(config: &Config, env: &Env) -> Result<Models, ModelError> {
        let settings = &config.models;
        let mut registry = Registry::builtin()?;
        if let Some(extra) = &settings.registry {
            registry.merge(Registry::load(extra)?);
        }
        let mut models = Models::new(registry, &settings.dir).with_mirror(settings.mirror.clone());
        if let Some(m) = env.get(MIRROR_ENV).filter(|m| !m.trim().is_empty()) {
            models.env_mirror = Some(check_base_url(m.trim())?);
        }
        for (name, url) in &settings.urls {
            models = models.with_model_url(name, url)?;
        }
        Ok(models)
    }

    /// Fetch every model from `<mirror>/<model>/<path>` (the config's `[models] mirror`).
    pub fn with_mirror(mut self, mirror: Option<String>) -> Models {
        self.config_mirror = mirror.map(|m| m.trim_end_matches('/').to_string());
        self
    }

    /// Like [`Models::with_mirror`], but winning over a per-model URL: the environment
    /// variable's place in the order.
    pub fn with_env_mirror(mut self, mirror: Option<String>) -> Models {
        self.env_mirror = mirror.map(|m| m.trim_end_matches('/').to_string());
        self
    }

    /// Fetch model `name` from `<url>/<path>`.
    pub fn with_model_url(mut self, name: &str, url: &str) -> Result<Models, ModelError> {
        self.registry.get(name)?;
        self.urls.insert(name.to_string(), check_base_url(url)?);
        Ok(self)
    }

    /// The registry in use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The models directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A model's folder (whether or not the name is known).
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The base URL a model's files would be fetched from. The first that is set wins: `from`
    /// (the `--from` flag), [`MIRROR_ENV`] (`<mirror>/<model>`), the config's per-model URL,
    /// the config's mirror (`<mirror>/<model>`), the registry's source.
    pub fn source_for(&self, name: &str, from: Option<&str>) -> Result<String, ModelError> {
        let spec = self.registry.get(name)?;
        if let Some(from) = from {
            return check_base_url(from);
        }
        if let Some(m) = &self.env_mirror {
            return Ok(format!("{m}/{name}"));
        }
        if let Some(u) = self.urls.get(name) {
            return Ok(u.clone());
        }
        if let Some(m) = &self.config_mirror {
            return Ok(format!("{m}/{name}"));
        }
        Ok(spec.source.clone())
    }

    /// Download a model's missing files, verify everything, write the manifest. Files already
    /// there are hashed and kept when they match; a partial download (`<file>.part`) is resumed
    /// with a Range request when the server supports it. A file that does not match the
    /// registry is deleted and the pull fails, naming it.
    pub async fn pull(
        &self,
        name: &str,
        from: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<PullReport, ModelError> {
        self.pull_formats(name, from, Formats::default(), progress)
            .await
    }

    /// [`Models::pull`] of the files of `formats` (and those every format needs). Files of
    /// other formats already in the folder and in its manifest stay listed.
    pub async fn pull_formats(
        &self,
        name: &str,
        from: Option<&str>,
        formats: Formats,
        progress: &dyn Progress,
    ) -> Result<PullReport, ModelError> {
        let spec = self.registry.get(name)?.clone();
        let source = self.source_for(name, from)?;
        // A file published elsewhere (its own `url`) comes from there unless a mirror or
        // `--from` says otherwise.
        let from_registry = source == spec.source;
        let dir = self.model_dir(name);
        create_dir_all(&dir).await?;
        let _lock = lock(&dir, name).await?;

        let mut report = PullReport {
            name: name.to_string(),
            dir: dir.clone(),
            source: source.clone(),
            downloaded: Vec::new(),
            resumed: Vec::new(),
            already_present: Vec::new(),
            bytes_downloaded: 0,
        };
        let mut todo = Vec::new();
        for file in spec.files.iter().filter(|f| formats.includes(f)) {
            let path = dir.join(&file.path);
            if is_file(&path).await {
                if check_existing(&path, file, FileOutcome::AlreadyPresent, progress).await? {
                    // A leftover part of an earlier attempt is of no use any more.
                    remove_file(&part_path(&path)).await?;
                    report.already_present.push(file.path.clone());
                    continue;
                }
                // A wrong file under a final name must not stay there for a plugin to load.
                remove_file(&path).await?;
            }
            todo.push(file);
        }
        let old = read_manifest(&dir).await;
        let mut manifest = Manifest::for_spec(&spec, formats, source.clone());
        if let Some(old) = &old {
            for (path, sha) in &old.files {
                let known = spec.files.iter().any(|f| f.path == *path);
                if known && !manifest.files.contains_key(path) && is_file(&dir.join(path)).await {
                    manifest.files.insert(path.clone(), sha.clone());
                    if old.converted.contains(path) {
                        manifest.converted.push(path.clone());
                    }
                }
            }
        }
        if todo.is_empty() && old.as_ref() == Some(&manifest) {
            return Ok(report);
        }
        // The manifest vouches for the folder; it goes first and comes back last.
        remove_manifest(&dir).await?;
        for file in todo {
            let url = match &file.url {
                Some(url) if from_registry => url.clone(),
                _ => format!("{source}/{}", file.path),
            };
            let (received, resumed) = self
                .download(&spec, file, &url, &dir.join(&file.path), progress)
                .await?;
            report.bytes_downloaded += received;
            if resumed {
                report.resumed.push(file.path.clone());
            }
            report.downloaded.push(file.path.clone());
        }
        write_manifest(&dir, &manifest).await?;
        Ok(report)
    }

    /// Download one file into `<final>.part`, verify it, rename it into place. Returns the
    /// bytes received and whether an earlier partial download was continued.
    async fn download(
        &self,
        spec: &ModelSpec,
        file: &ModelFile,
        url: &str,
        final_path: &Path,
        progress: &dyn Progress,
    ) -> Result<(u64, bool), ModelError> {
        if let Some(parent) = final_path.parent() {
            create_dir_all(parent).await?;
        }
        let part = part_path(final_path);
        let mut offset = match tokio::fs::metadata(&part).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(ModelError::io("read", &part, e)),
        };
        if offset > file.size {
            remove_file(&part).await?;
            offset = 0;
        }
        // The whole file is verified at the end, so the part already there is hashed first.
        let mut hasher = Sha256::new();
        if offset > 0 {
            progress.event(ProgressEvent::Checking {
                file: &file.path,
                size: offset,
            });
            hash_into(&part, &mut hasher, &file.path, progress).await?;
        }
        let mut received = 0u64;
        if offset < file.size {
            progress.event(ProgressEvent::Downloading {
                file: &file.path,
                url,
                size: file.size,
                offset,
            });
            let response = self.request(url, offset).await?;
            let response = match (offset, response) {
                (0, r) => r,
                (_, Ranged::Partial(r)) => Ranged::Partial(r),
                // The server ignores Range or refuses it: start over.
                (_, _) => {
                    offset = 0;
                    hasher = Sha256::new();
                    self.request(url, 0).await?
                }
            };
            let response = match response {
                Ranged::Full(r) | Ranged::Partial(r) => r,
                Ranged::Unsatisfiable => {
                    return Err(ModelError::Status {
                        url: url.to_string(),
                        status: 416,
                    })
                }
            };
            if let Some(len) = response.content_length() {
                if offset + len != file.size {
                    // Refuse early rather than download hundreds of MB of the wrong file.
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(ModelError::Corrupt {
                        model: spec.name.clone(),
                        file: file.path.clone(),
                        from: url.to_string(),
                        detail: format!(
                            "the server announces {} bytes, the registry says {}",
                            offset + len,
                            file.size
                        ),
                    });
                }
            }
            let mut out = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(offset > 0)
                .truncate(offset == 0)
                .open(&part)
                .await
                .map_err(|e| ModelError::io("create", &part, e))?;
            let mut done = offset;
            let mut response = response;
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        // Keep what arrived, durably, so the next pull resumes from it.
                        let _ = out.flush().await;
                        let _ = out.sync_all().await;
                        return Err(ModelError::Interrupted {
                            model: spec.name.clone(),
                            file: file.path.clone(),
                            done,
                            size: file.size,
                            part,
                            message: format!("from {url}: {}", describe_reqwest(&e)),
                        });
                    }
                };
                if done + chunk.len() as u64 > file.size {
                    drop(out);
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(ModelError::Corrupt {
                        model: spec.name.clone(),
                        file: file.path.clone(),
                        from: url.to_string(),
                        detail: format!(
                            "the server sent more than the {} bytes the registry says",
                            file.size
                        ),
                    });
                }
                out.write_all(&chunk)
                    .await
                    .map_err(|e| ModelError::io("write", &part, e))?;
                hasher.update(&chunk);
                done += chunk.len() as u64;
                received += chunk.len() as u64;
                progress.event(ProgressEvent::Advanced {
                    file: &file.path,
                    done,
                });
            }
            out.flush()
                .await
                .map_err(|e| ModelError::io("write", &part, e))?;
            out.sync_all()
                .await
                .map_err(|e| ModelError::io("write", &part, e))?;
            if done < file.size {
                return Err(ModelError::Interrupted {
                    model: spec.name.clone(),
                    file: file.path.clone(),
                    done,
                    size: file.size,
                    part,
                    message: format!("{url} ended the file early"),
                });
            }
        }
        let actual = crate::input::hex(&hasher.finalize());
        if actual != file.sha256 {
            remove_file(&part).await?;
            return Err(ModelError::Corrupt {
                model: spec.name.clone(),
                file: file.path.clone(),
                from: url.to_string(),
                detail: format!(
                    "SHA-256 is {actual}, the registry says {}{}",
                    file.sha256,
                    if offset > 0 {
                        " (the download continued an earlier partial file; the next pull starts from zero)"
                    } else {
                        ""
                    }
                ),
            });
        }
        rename(&part, final_path).await?;
        progress.event(ProgressEvent::Finished {
            file: &file.path,
            outcome: FileOutcome::Downloaded,
        });
        // `offset` is where this pull started writing: zero when it started over.
        Ok((received, offset > 0))
    }

    /// GET `url`, from byte `offset` on when it is not zero.
    async fn request(&self, url: &str, offset: u64) -> Result<Ranged, ModelError> {
        let client = self.client.as_ref().map_err(|e| ModelError::Http {
            url: url.to_string(),
            message: format!("cannot set up the HTTP client: {e}"),
        })?;
        let mut req = client.get(url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = req.send().await.map_err(|e| ModelError::Http {
            url: url.to_string(),
            message: describe_reqwest(&e),
        })?;
        let status = response.status().as_u16();
        match status {
            200 => Ok(Ranged::Full(response)),
            206 if offset > 0 => {
                // Only a range that starts where the part ends can be appended to it.
                let starts_right = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
                if starts_right {
                    Ok(Ranged::Partial(response))
                } else {
                    Ok(Ranged::Unsatisfiable)
                }
            }
            416 if offset > 0 => Ok(Ranged::Unsatisfiable),
            _ => Err(ModelError::Status {
                url: url.to_string(),
                status,
            }),
        }
    }

    /// Which registry models are present and complete. With `verify`, every file is hashed;
    /// otherwise sizes and the manifest are checked.
    pub async fn list(
        &self,
        verify: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<ModelStatus>, ModelError> {
        let mut out = Vec::new();
        for spec in self.registry.models() {
            out.push(self.status(spec, verify, progress).await?);
        }
        Ok(out)
    }

    /// The state of one model; see [`Models::list`].
    pub async fn status(
        &self,
        spec: &ModelSpec,
        verify: bool,
        progress: &dyn Progress,
    ) -> Result<ModelStatus, ModelError> {
        let dir = self.model_dir(&spec.name);
        let manifest = read_manifest(&dir).await;
        // A format is looked at when any of its files is here (or partly, or in the manifest);
        // a folder with none is checked for the default set, which is what `pull` fetches.
        let mut formats = Vec::new();
        for format in spec.formats() {
            let mut here = false;
            for f in spec.files_of(format) {
                let path = dir.join(&f.path);
                here |= is_file(&path).await
                    || is_file(&part_path(&path)).await
                    || manifest
                        .as_ref()
                        .is_some_and(|m| m.files.contains_key(&f.path));
            }
            if here {
                formats.push(format);
            }
        }
        let wanted = if formats.is_empty() {
            Formats::default()
        } else {
            Formats {
                safetensors: formats.contains(&Format::Safetensors),
                onnx: formats.contains(&Format::Onnx),
            }
        };
        let mut status = ModelStatus {
            name: spec.name.clone(),
            plugin: spec.plugin.clone(),
            dir: dir.clone(),
            state: ModelState::Absent,
            verified: verify,
            size_on_disk: 0,
            size: spec
                .files
                .iter()
                .filter(|f| wanted.includes(f))
                .map(|f| f.size)
                .sum(),
            source: None,
            formats,
            problems: Vec::new(),
        };
        let pull = match wanted {
            Formats {
                safetensors: false,
                onnx: true,
            } => format!("run `imbed models pull {} --format onnx`", spec.name),
            Formats {
                safetensors: true,
                onnx: true,
            } => format!("run `imbed models pull {} --format all`", spec.name),
            _ => format!("run `imbed models pull {}`", spec.name),
        };
        let (mut missing, mut corrupt, mut anything) = (false, false, false);
        for registry_file in spec.files.iter().filter(|f| wanted.includes(f)) {
            let path = dir.join(&registry_file.path);
            // A converted graph is checked against the SHA-256 recorded when it was imported.
            let converted = manifest
                .as_ref()
                .filter(|m| m.converted.contains(&registry_file.path))
                .and_then(|m| m.files.get(&registry_file.path));
            let file = &match (converted, tokio::fs::metadata(&path).await) {
                (Some(sha), Ok(m)) => ModelFile {
                    size: m.len(),
                    sha256: sha.clone(),
                    ..registry_file.clone()
                },
                _ => registry_file.clone(),
            };
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => {
                    anything = true;
                    status.size_on_disk += m.len();
                    if m.len() != file.size {
                        corrupt = true;
                        status.problems.push(format!(
                            "{} is {} bytes, the registry says {}: {pull}",
                            file.path,
                            m.len(),
                            file.size
                        ));
                    } else if verify
                        && !check_existing(&path, file, FileOutcome::Verified, progress).await?
                    {
                        corrupt = true;
                        let whose = if converted.is_some() {
                            "the SHA-256 recorded when it was imported"
                        } else {
                            "the registry's SHA-256"
                        };
                        status.problems.push(format!(
                            "{} does not have {whose} {}: {pull}",
                            file.path, file.sha256
                        ));
                    }
                }
                _ => {
                    missing = true;
                    match tokio::fs::metadata(part_path(&path)).await {
                        Ok(m) => {
                            anything = true;
                            status.size_on_disk += m.len();
                            status.problems.push(format!(
                                "{} is partly downloaded ({} of {} bytes): {pull} to resume",
                                file.path,
                                m.len(),
                                file.size
                            ));
                        }
                        Err(_) => status
                            .problems
                            .push(format!("{} is missing: {pull}", file.path)),
                    }
                }
            }
        }
        match manifest {
            Some(m) => {
                anything = true;
                if !m.matches(spec) {
                    corrupt = true;
                    status.problems.push(format!(
                        "{MANIFEST} names other files or versions than the registry: {pull}"
                    ));
                }
                status.source = Some(m.source);
            }
            None if anything && !missing && !corrupt => {
                missing = true;
                status.problems.push(format!(
                    "{MANIFEST} is missing (an interrupted pull or import?): {pull}"
                ));
            }
            None => {}
        }
        status.state = if !anything {
            status.problems.clear();
            ModelState::Absent
        } else if corrupt {
            ModelState::Corrupt
        } else if missing {
            ModelState::Incomplete
        } else {
            ModelState::Complete
        };
        Ok(status)
    }

    /// Delete a model's folder. Returns false when there was nothing to delete.
    pub async fn remove(&self, name: &str) -> Result<bool, ModelError> {
        self.registry.get(name)?;
        let dir = self.model_dir(name);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(false);
        }
        // Held until the folder is gone, so a pull that starts meanwhile waits (or reports the
        // folder busy) instead of having its files deleted under it.
        let _lock = lock(&dir, name).await?;
        // Without its manifest the folder no longer claims to be a model, even if the
        // removal stops half-way.
        remove_manifest(&dir).await?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| ModelError::io("remove", &dir, e))?;
        Ok(true)
    }

    /// Take a model's files from a folder already on this machine. The files every format needs
    /// and each format's files that are in `folder` (all of a format, or none of it; at least
    /// one format) must be there under their paths with the registry's size and SHA-256, or
    /// nothing is changed — except ONNX graphs, which may be converted from the same weights
    /// (`scripts/onnx`): one that is not the registry's file is taken as it is and recorded as
    /// converted, with its own SHA-256, so the host can still check it before loading it.
    /// Files are hard-linked when the folder is on the same file system, copied otherwise, each
    /// through a `.part` name and verified again in place; the manifest's source is
    /// `import:<folder>`.
    pub async fn import(
        &self,
        name: &str,
        folder: &Path,
        progress: &dyn Progress,
    ) -> Result<ImportReport, ModelError> {
        let spec = self.registry.get(name)?.clone();
        let folder = tokio::fs::canonicalize(folder)
            .await
            .map_err(|e| ModelError::io("open the folder", folder, e))?;
        if !tokio::fs::metadata(&folder)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Err(ModelError::ImportRejected {
                model: name.to_string(),
                folder,
                problems: vec!["it is not a folder".into()],
            });
        }
        // First every file, so that a folder with one bad file changes nothing.
        let mut problems = Vec::new();
        let mut formats = Formats {
            safetensors: false,
            onnx: false,
        };
        for format in spec.formats() {
            let mut here = Vec::new();
            let mut absent = Vec::new();
            for f in spec.files_of(format) {
                if is_file(&folder.join(&f.path)).await {
                    here.push(f.path.as_str());
                } else {
                    absent.push(f.path.as_str());
                }
            }
            match (here.is_empty(), absent.is_empty()) {
                (true, _) => {}
                (false, true) => match format {
                    Format::Safetensors => formats.safetensors = true,
                    Format::Onnx => formats.onnx = true,
                },
                (false, false) => problems.push(format!(
                    "{} is there but {} is missing: add the rest of the {} files or remove these",
                    here.join(", "),
                    absent.join(", "),
                    format.name()
                )),
            }
        }
        if !spec.formats().is_empty()
            && !formats.safetensors
            && !formats.onnx
            && problems.is_empty()
        {
            let sets: Vec<String> = spec
                .formats()
                .into_iter()
                .map(|format| {
                    let files: Vec<&str> = spec.files_of(format).map(|f| f.path.as_str()).collect();
                    format!("{} ({})", format.name(), files.join(", "))
                })
                .collect();
            problems.push(format!(
                "it has the files of no format: {}",
                sets.join(" or ")
            ));
        }
        // The files to take, each with what it must hash to.
        let mut plan: Vec<ModelFile> = Vec::new();
        let mut converted = Vec::new();
        for file in spec.files.iter().filter(|f| formats.includes(f)) {
            let src = folder.join(&file.path);
            let graph = file.format == Some(Format::Onnx);
            match tokio::fs::metadata(&src).await {
                Ok(m) if m.is_file() && (m.len() == file.size || graph) => {
                    progress.event(ProgressEvent::Checking {
                        file: &file.path,
                        size: m.len(),
                    });
                    let mut hasher = Sha256::new();
                    let len = hash_into(&src, &mut hasher, &file.path, progress).await?;
                    let sha = crate::input::hex(&hasher.finalize());
                    let matches = len == file.size && sha == file.sha256;
                    progress.event(ProgressEvent::Finished {
                        file: &file.path,
                        outcome: if matches || graph {
                            FileOutcome::Verified
                        } else {
                            FileOutcome::Mismatch
                        },
                    });
                    if matches {
                        plan.push(file.clone());
                    } else if graph {
                        converted.push(file.path.clone());
                        plan.push(ModelFile {
                            size: len,
                            sha256: sha,
                            ..file.clone()
                        });
                    } else {
                        problems.push(format!(
                            "{} does not have the registry's SHA-256 {}",
                            file.path, file.sha256
                        ));
                    }
                }
                Ok(m) if m.is_file() => problems.push(format!(
                    "{} is {} bytes, the registry says {}",
                    file.path,
                    m.len(),
                    file.size
                )),
                _ => problems.push(format!("{} is missing", file.path)),
            }
        }
        if !problems.is_empty() {
            return Err(ModelError::ImportRejected {
                model: name.to_string(),
                folder,
                problems,
            });
        }

        let dir = self.model_dir(name);
        create_dir_all(&dir).await?;
        let _lock = lock(&dir, name).await?;
        remove_manifest(&dir).await?;
        let mut report = ImportReport {
            name: name.to_string(),
            dir: dir.clone(),
            from: folder.clone(),
            files: Vec::new(),
        };
        for file in &plan {
            let src = folder.join(&file.path);
            let dst = dir.join(&file.path);
            if same_file(&src, &dst).await {
                report
                    .files
                    .push((file.path.clone(), FileOutcome::AlreadyPresent));
                continue;
            }
            if let Some(parent) = dst.parent() {
                create_dir_all(parent).await?;
            }
            let part = part_path(&dst);
            let _ = tokio::fs::remove_file(&part).await;
            progress.event(ProgressEvent::Importing {
                file: &file.path,
                size: file.size,
            });
            // A link shares the source's bytes: hash them again where they now are, in case
            // the source changed since the check above.
            let (outcome, sha) = if tokio::fs::hard_link(&src, &part).await.is_ok() {
                let mut hasher = Sha256::new();
                hash_into(&part, &mut hasher, &file.path, progress).await?;
                (FileOutcome::Linked, crate::input::hex(&hasher.finalize()))
            } else {
                (
                    FileOutcome::Copied,
                    copy_hashing(&src, &part, &file.path, progress).await?,
                )
            };
            if sha != file.sha256 {
                remove_file(&part).await?;
                return Err(ModelError::Corrupt {
                    model: name.to_string(),
                    file: file.path.clone(),
                    from: src.display().to_string(),
                    detail: format!(
                        "SHA-256 is {sha}, {} {} (did the file change during the import?)",
                        if converted.contains(&file.path) {
                            "it was"
                        } else {
                            "the registry says"
                        },
                        file.sha256
                    ),
                });
            }
            rename(&part, &dst).await?;
            progress.event(ProgressEvent::Finished {
                file: &file.path,
                outcome,
            });
            report.files.push((file.path.clone(), outcome));
        }
        let mut manifest =
            Manifest::for_spec(&spec, formats, format!("import:{}", folder.display()));
        for file in &plan {
            manifest
                .files
                .insert(file.path.clone(), file.sha256.clone());
        }
        manifest.converted = converted;
        write_manifest(&dir, &manifest).await?;
        Ok(report)
    }
}

enum Ranged {
    /// 200: the whole file.
    Full(reqwest::Response),
    /// 206 from the requested offset.
    Partial(reqwest::Response),
    /// 416, or a 206 for another range.
    Unsatisfiable,
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// An exclusive lock on the model's folder for as long as the returned file is open.
///
/// A lock just released can look held for a moment: a child process forked by another thread
/// shares the lock's open file until it execs. So a held lock is retried briefly before the
/// folder is reported busy; a real concurrent pull holds it far longer.
async fn lock(dir: &Path, name: &str) -> Result<std::fs::File, ModelError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ModelError::io("create", &path, e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ModelError::Busy {
                    model: name.to_string(),
                    lock: path,
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ModelError::io("lock", &path, e)),
        }
    }
}

async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.is_file())
        .unwrap_or(false)
}

async fn create_dir_all(dir: &Path) -> Result<(), ModelError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ModelError::io("create", dir, e))
}

async fn remove_file(path: &Path) -> Result<(), ModelError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ModelError::io("remove", path, e)),
    }
}

/// Rename within one folder, then make the rename itself durable.
async fn rename(from: &Path, to: &Path) -> Result<(), ModelError> {
    tokio::fs::rename(from, to)
        .await
        .map_err(|e| ModelError::io("rename into place", to, e))?;
    sync_dir(to.parent().unwrap_or(Path::new("."))).await
}

async fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    #[cfg(unix)]
    {
        let d = tokio::fs::File::open(dir)
            .await
            .map_err(|e| ModelError::io("open", dir, e))?;
        d.sync_all()
            .await
            .map_err(|e| ModelError::io("sync", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

async fn same_file(a: &Path, b: &Path) -> bool {
    match (
        tokio::fs::canonicalize(a).await,
        tokio::fs::canonicalize(b).await,
    ) {
        (Ok(x), Ok(y)) if x == y => true,
        #[cfg(unix)]
        _ => {
            use std::os::unix::fs::MetadataExt;
            match (tokio::fs::metadata(a).await, tokio::fs::metadata(b).await) {
                (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
                _ => false,
            }
        }
        #[cfg(not(unix))]
        _ => false,
    }
}

/// Hash a file that is already there and compare it with the registry; `ok_outcome` is what a
/// match is reported as.
async fn check_existing(
    path: &Path,
    file: &ModelFile,
    ok_outcome: FileOutcome,
    progress: &dyn Progress,
) -> Result<bool, ModelError> {
    progress.event(ProgressEvent::Checking {
        file: &file.path,
        size: file.size,
    });
    let mut hasher = Sha256::new();
    let len = hash_into(path, &mut hasher, &file.path, progress).await?;
    let ok = len == file.size && crate::input::hex(&hasher.finalize()) == file.sha256;
    progress.event(ProgressEvent::Finished {
        file: &file.path,
        outcome: if ok {
            ok_outcome
        } else {
            FileOutcome::Mismatch
        },
    });
    Ok(ok)
}

/// Feed a file's bytes to `hasher`; returns its length.
async fn hash_into(
    path: &Path,
    hasher: &mut Sha256,
    label: &str,
    progress: &dyn Progress,
) -> Result<u64, ModelError> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ModelError::io("read", path, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| ModelError::io("read", path, e))?;
        if n == 0 {
            return Ok(done);
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.event(ProgressEvent::Advanced { file: label, done });
    }
}

/// Copy `src` to `dst` (created or truncated), hashing what is written; synced to disk.
async fn copy_hashing(
    src: &Path,
    dst: &Path,
    label: &str,
    progress: &dyn Progress,
) -> Result<String, ModelError> {
    let mut input = tokio::fs::File::open(src)
        .await
        .map_err(|e| ModelError::io("read", src, e))?;
    let mut out = tokio::fs::File::create(dst)
        .await
        .map_err(|e| ModelError::io("create", dst, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|e| ModelError::io("read", src, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .await
            .map_err(|e| ModelError::io("write", dst, e))?;
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.event(ProgressEvent::Advanced { file: label, done });
    }
    out.flush()
        .await
        .map_err(|e| ModelError::io("write", dst, e))?;
    out.sync_all()
        .await
        .map_err(|e| ModelError::io("write", dst, e))?;
    Ok(crate::input::hex(&hasher.finalize()))
}

async fn read_manifest(dir: &Path) -> Option<Manifest> {
    let bytes = tokio::fs::read(dir.join(MANIFEST)).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn remove_manifest(dir: &Path) -> Result<(), ModelError> {
    remove_file(&dir.join(MANIFEST)).await?;
    sync_dir(dir).await
}

/// Written through a temporary name and renamed, like the files it vouches for.
async fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ModelError> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!(".{MANIFEST}.tmp"));
    let mut text = serde_json::to_string_pretty(manifest).unwrap_or_default();
    text.push('\n');
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| ModelError::io("create", &tmp, e))?;
    f.write_all(text.as_bytes())
        .await
        .map_err(|e| ModelError::io("write", &tmp, e))?;
    f.sync_all()
        .await
        .map_err(|e| ModelError::io("write", &tmp, e))?;
    rename(&tmp, &path).await
}

/// Bytes for people: `86.7 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let mut s = String::new();
    if unit == 0 {
        let _ = write!(s, "{bytes} B");
    } else {
        let _ = write!(s, "{value:.1} {}", UNITS[unit]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_registry_parses_and_names_both_models() {
        let r = Registry::builtin().expect("built-in registry parses");
        let names: Vec<_> = r.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["all-minilm-l6-v2", "clip-vit-base-patch32"]);
        let minilm = r.get("all-minilm-l6-v2").unwrap();
        assert_eq!(minilm.plugin, "minilm");
        let weights = minilm
            .files
            .iter()
            .find(|f| f.path == "model.safetensors")
            .unwrap();
        assert_eq!(
            weights.sha256,
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
        );
        assert_eq!(weights.size, 90_868_376);
        assert_eq!(weights.format, Some(Format::Safetensors));
        let graph = minilm.files.iter().find(|f| f.path == "text.onnx").unwrap();
        assert_eq!(graph.format, Some(Format::Onnx));
        assert_eq!(
            graph.sha256,
            "6fd5d72fe4589f189f8ebc006442dbb529bb7ce38f8082112682524616046452"
        );
        let clip = r.get("clip-vit-base-patch32").unwrap();
        assert_eq!(clip.plugin, "clip");
        assert!(clip
            .source
            .starts_with("https://huggingface.co/openai/clip-vit-base-patch32/"));
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = Registry::builtin().unwrap().get("clip").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown model \"clip\""), "{msg}");
        assert!(
            msg.contains("all-minilm-l6-v2, clip-vit-base-patch32"),
            "{msg}"
        );
        assert!(err.is_usage());
    }

    #[test]
    fn registry_entries_are_checked() {
        let entry = |path: &str, sha: &str, source: &str| {
            format!(
                "[[models]]\nname = \"m\"\nplugin = \"p\"\nsource = \"{source}\"\n[[models.files]]\npath = \"{path}\"\nsize = 1\nsha256 = \"{sha}\"\n"
            )
        };
        let sha = "a".repeat(64);
        let ok = entry("sub/w.bin", &sha, "http://h/x/");
        let r = Registry::from_toml_str(&ok, "t").unwrap();
        assert_eq!(r.get("m").unwrap().source, "http://h/x");
        for (path, sha, source, expect) in [
            ("../w", sha.as_str(), "http://h", "not allowed"),
            ("/abs", sha.as_str(), "http://h", "not allowed"),
            (".hidden", sha.as_str(), "http://h", "not allowed"),
            ("imbed-model.json", sha.as_str(), "http://h", "not allowed"),
            ("w.part", sha.as_str(), "http://h", "not allowed"),
            ("w", "unknown", "http://h", "64 hex digits"),
            ("w", sha.as_str(), "ftp://h", "http(s)"),
        ] {
            let err = Registry::from_toml_str(&entry(path, sha, source), "t").unwrap_err();
            assert!(err.to_string().contains(expect), "{path}: {err}");
        }
        let err =
            Registry::from_toml_str("[[models]]\nname = \"m\"\nsurprise = 1\n", "t").unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn sources_follow_the_documented_order() {
        let models = Models::new(Registry::builtin().unwrap(), "/m");
        let name = "clip-vit-base-patch32";
        let registry_source = models.registry().get(name).unwrap().source.clone();
        assert_eq!(models.source_for(name, None).unwrap(), registry_source);
        let models = models.with_mirror(Some("http://mirror/m/".into()));
        assert_eq!(
            models.source_for(name, None).unwrap(),
            format!("http://mirror/m/{name}")
        );
        let models = models.with_model_url(name, "http://one/clip").unwrap();
        assert_eq!(models.source_for(name, None).unwrap(), "http://one/clip");
        let models = models.with_env_mirror(Some("http://env".into()));
        assert_eq!(
            models.source_for(name, None).unwrap(),
            format!("http://env/{name}")
        );
        assert_eq!(
            models.source_for(name, Some("http://flag/x/")).unwrap(),
            "http://flag/x"
        );
        assert!(models
            .source_for(name, Some("not a url"))
            .unwrap_err()
            .is_usage());
        assert!(models.with_model_url("nope", "http://x").is_err());
    }

    #[test]
    fn the_manifest_has_exactly_the_documented_shape() {
        let spec = Registry::builtin()
            .unwrap()
            .get("all-minilm-l6-v2")
            .unwrap()
            .clone();
        let m = Manifest::for_spec(&spec, Formats::default(), "import:/x".into());
        let v = serde_json::to_value(&m).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["name", "files", "source", "weights_sha256"]);
        assert_eq!(
            v["files"]["1_Pooling/config.json"].as_str().unwrap().len(),
            64
        );
        assert_eq!(v["weights_sha256"], v["files"]["model.safetensors"]);
        assert!(v["files"].get("text.onnx").is_none());
        assert!(m.matches(&spec));
        // A manifest from before formats existed still matches.
        let old = Manifest {
            weights_sha256: None,
            ..m.clone()
        };
        assert!(old.matches(&spec));
    }

    #[test]
    fn formats_select_files_and_manifests_must_hold_whole_formats() {
        let spec = Registry::builtin()
            .unwrap()
            .get("clip-vit-base-patch32")
            .unwrap()
            .clone();
        assert_eq!(spec.formats(), [Format::Safetensors, Format::Onnx]);
        let paths = |m: &Manifest| m.files.keys().cloned().collect::<Vec<_>>();
        let onnx = Manifest::for_spec(&spec, Formats::onnx(), "x".into());
        assert_eq!(
            paths(&onnx),
            [
                "config.json",
                "preprocessor_config.json",
                "text.onnx",
                "tokenizer.json",
                "vision.onnx"
            ]
        );
        // Graphs only still name the safetensors' weights: one space for both paths.
        assert_eq!(onnx.weights_sha256.as_deref(), spec.weights_sha256());
        assert!(onnx.matches(&spec));
        assert!(Manifest::for_spec(&spec, Formats::all(), "x".into()).matches(&spec));
        // Half a format is not a model.
        let mut half = onnx.clone();
        half.files.remove("text.onnx");
        assert!(!half.matches(&spec));
        // A graph with another SHA-256 matches only when recorded as converted.
        let mut other = onnx.clone();
        other.files.insert("text.onnx".into(), "0".repeat(64));
        assert!(!other.matches(&spec));
        other.converted.push("text.onnx".into());
        assert!(other.matches(&spec));
        // Converted safetensors are not a thing: the weights name the space.
        let mut weights = Manifest::for_spec(&spec, Formats::default(), "x".into());
        weights
            .files
            .insert("model.safetensors".into(), "0".repeat(64));
        weights.converted.push("model.safetensors".into());
        assert!(!weights.matches(&spec));
        // The public exports come from their own repositories, under the local names.
        let vision = spec.files.iter().find(|f| f.path == "vision.onnx").unwrap();
        assert!(vision
            .url
            .as_deref()
            .unwrap()
            .starts_with("https://huggingface.co/Qdrant/clip-ViT-B-32-vision/resolve/"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(53), "53 B");
        assert_eq!(human_size(90_868_376), "86.7 MiB");
    }
}
