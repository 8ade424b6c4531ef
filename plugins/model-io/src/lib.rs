//! Model weights for imbed's candle plugins, read from the model directory the host grants.
//!
//! The host mounts a plugin's `grants.model_dir` read-only at [`MODEL_ROOT`] (`/model`). This crate
//! is what every candle plugin needs to get a model out of it:
//!
//! - [`ModelDir::open`] checks the directory is there and reads its manifest
//!   (`imbed-model.json`, written by `imbed models pull/import`) when it has one;
//! - [`ModelDir::read_json`] / [`ModelDir::read_string`] read small files (config, tokenizer);
//! - [`ModelDir::load_weights`] reads a safetensors file: its header first, then each tensor straight
//!   into a buffer of its own, converted to the dtype the plugin computes in. There is no `mmap` in
//!   wasm, and reading the whole file before building tensors (candle's
//!   `VarBuilder::from_buffered_safetensors`) would hold the weights twice;
//! - [`Weights::build`] hands a candle [`VarBuilder`] to the model's constructor;
//! - [`Weights::revision`] is the first 12 hex digits of the weights' SHA-256 (from the manifest,
//!   or computed while reading when there is none), for the plugin's space id: other weights, other
//!   space.
//!
//! Every failure is a [`ModelError`] whose message tells the user what to do: a missing file is
//! "model not found: … — run `imbed models pull <name>`", a truncated or garbled one is
//! "model files corrupt: … — run `imbed models pull <name>` again".
//!
//! The same code runs natively (tests, benchmarks) and inside the wasm sandbox.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use imbed_model_io::{ModelDir, MODEL_ROOT};
//!
//! # #[derive(serde::Deserialize)] struct Config { hidden: usize }
//! # struct Model;
//! # impl Model {
//! #     fn load(vb: candle_nn::VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
//! #         vb.get((cfg.hidden, cfg.hidden), "dense.weight")?; Ok(Model)
//! #     }
//! # }
//! # fn main() -> Result<(), imbed_model_io::ModelError> {
//! let dir = ModelDir::open(MODEL_ROOT, "all-minilm-l6-v2")?;
//! let config: Config = dir.read_json("config.json")?;
//! let weights = dir.load_weights("model.safetensors", DType::F32, &Device::Cpu)?;
//! let space = format!("sentence-transformers/all-MiniLM-L6-v2@{}", weights.revision());
//! let model = weights.build(|vb| Model::load(vb, &config))?;
//! # let _ = (space, model); Ok(()) }
//! ```
#![deny(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!(
    "safetensors files are little-endian; imbed-model-io reads them on little-endian targets only"
);

mod safetensors;

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Where the host mounts a plugin's `grants.model_dir` inside the sandbox.
pub const MODEL_ROOT: &str = "/model";

/// The manifest's file name inside a model directory.
pub const MANIFEST_FILE: &str = "imbed-model.json";

/// Why a model could not be loaded. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file the model needs is not there (or the whole directory is not).
    #[error("model not found: {} is missing — run `imbed models pull {model}`", path.display())]
    NotFound {
        /// The missing file or directory, as the plugin sees it.
        path: PathBuf,
        /// The model's name for `imbed models pull`.
        model: String,
    },
    /// A file is there but unusable: truncated, garbled, or not what the model expects.
    #[error("model files corrupt: {}: {reason} — run `imbed models pull {model}` again", path.display())]
    Corrupt {
        /// The bad file, as the plugin sees it.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The model's name for `imbed models pull`.
        model: String,
    },
    /// The file exists but could not be read (permissions, a link leading out of the sandbox,
    /// an I/O error).
    #[error("cannot read model file {}: {source} — check the model directory's files, or run `imbed models pull {model}` again", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
        /// The model's name for `imbed models pull`.
        model: String,
    },
}

/// The manifest `imbed models pull/import` writes into a model directory:
/// `{"name": "...", "files": {"model.safetensors": "<sha256 hex>", ...}, "source": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    /// The model's registry name, as `imbed models pull` takes it.
    pub name: String,
    /// Each file's SHA-256, lowercase hex, by path relative to the model directory.
    pub files: BTreeMap<String, String>,
    /// Where the files came from: a URL, or `import:<path>`.
    #[serde(default)]
    pub source: Option<String>,
    /// The SHA-256 of the reference weights (the registry's safetensors) the folder's files
    /// hold, whichever formats were pulled: the space id names these weights, so a folder with
    /// only ONNX graphs lands in the same space as one with the safetensors.
    #[serde(default)]
    pub weights_sha256: Option<String>,
}

/// A model directory: where the files are, what the manifest says, which name to suggest pulling.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    model: String,
    manifest: Option<Manifest>,
}

impl ModelDir {
    /// Open the model directory at `root` (in a plugin: [`MODEL_ROOT`]). `model` is the name
    /// `imbed models pull` knows the model by, used in error messages unless the manifest names
    /// another. Fails with [`ModelError::NotFound`] when the directory is missing (not granted or
    /// not pulled) and with [`ModelError::Corrupt`] when the manifest is unreadable.
    pub fn open(root: impl Into<PathBuf>, model: &str) -> Result<Self, ModelError> {
        let root = root.into();
        let mut dir = ModelDir {
            root,
            model: model.to_string(),
            manifest: None,
        };
        match std::fs::metadata(&dir.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(dir.corrupt(dir.root.clone(), "not a directory".into())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ModelError::NotFound {
                    path: dir.root.clone(),
                    model: dir.model.clone(),
                })
            }
            Err(source) => {
                return Err(ModelError::Io {
                    path: dir.root.clone(),
                    source,
                    model: dir.model.clone(),
                })
            }
        }
        match std::fs::read(dir.root.join(MANIFEST_FILE)) {
            Ok(bytes) => {
                let manifest = parse_manifest(&bytes)
                    .map_err(|reason| dir.corrupt(dir.root.join(MANIFEST_FILE), reason))?;
                if !manifest.name.trim().is_empty() {
                    dir.model = manifest.name.clone();
                }
                dir.manifest = Some(manifest);
            }
            // A folder the user pointed at by hand has no manifest; revisions are computed.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ModelError::Io {
                    path: dir.root.join(MANIFEST_FILE),
                    source,
                    model: dir.model.clone(),
                })
            }
        }
        Ok(dir)
    }

    /// The directory this reads from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The model's name as error messages suggest pulling it.
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// The manifest, when the directory has one.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The path of `file` inside the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    /// Whether `file` exists in the directory (for optional files).
    pub fn has(&self, file: &str) -> bool {
        self.path(file).is_file()
    }

    /// Read a whole (small) file.
    pub fn read(&self, file: &str) -> Result<Vec<u8>, ModelError> {
        let path = self.path(file);
        std::fs::read(&path).map_err(|e| self.io_error(path, e))
    }

    /// Read a whole (small) UTF-8 file, such as a `tokenizer.json`.
    pub fn read_string(&self, file: &str) -> Result<String, ModelError> {
        let bytes = self.read(file)?;
        String::from_utf8(bytes)
            .map_err(|_| self.corrupt(self.path(file), "not valid UTF-8".into()))
    }

    /// Read and parse a JSON file, such as a model's `config.json`. A parse error (bad JSON, a
    /// missing field) is [`ModelError::Corrupt`].
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<T, ModelError> {
        let bytes = self.read(file)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(self.path(file), format!("bad JSON: {e}")))
    }

    /// Read the safetensors file `file`, turning every floating-point tensor (F64, F32, F16, BF16)
    /// into `dtype` and keeping integer tensors (I64, U32, U8) as they are; tensors of other
    /// dtypes are skipped. Each tensor is read straight into its own buffer, so the peak is the
    /// weights plus one tensor. The header's offsets and shapes are checked against the file's
    /// size before anything is read. When the manifest has no SHA-256 for the file, it is computed
    /// from the bytes as they are read (the file is read to its end once).
    pub fn load_weights(
        &self,
        file: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Weights, ModelError> {
        let path = self.path(file);
        let known = self
            .manifest
            .as_ref()
            .and_then(|m| m.files.get(file))
            .cloned();
        // Without a manifest the revision comes from the bytes as they stream past.
        let mut hasher = Sha256::new();
        let tensors =
            safetensors::load(&path, dtype, device, known.is_none().then_some(&mut hasher))
                .map_err(|e| match e {
                    safetensors::LoadError::Io(e) => self.io_error(path.clone(), e),
                    safetensors::LoadError::Corrupt(reason) => self.corrupt(path.clone(), reason),
                })?;
        let sha256 = known.unwrap_or_else(|| hex(&hasher.finalize()));
        Ok(Weights {
            tensors,
            dtype,
            device: device.clone(),
            sha256,
            path,
            model: self.model.clone(),
        })
    }

    /// The first 12 hex digits of the SHA-256 of the weights this folder's model holds, for the
    /// space id, without loading them: the manifest's `weights_sha256`, else its SHA-256 of
    /// `weights_file`, else the file hashed here (a folder without a manifest). A folder with
    /// neither a manifest nor `weights_file` cannot say which weights its other files (ONNX
    /// graphs) hold: [`ModelError::NotFound`] for `weights_file`, whose message says to pull.
    pub fn weights_revision(&self, weights_file: &str) -> Result<String, ModelError> {
        if let Some(m) = &self.manifest {
            if let Some(sha) = m
                .weights_sha256
                .as_ref()
                .or_else(|| m.files.get(weights_file))
            {
                return Ok(sha[..12].to_string());
            }
        }
        let path = self.path(weights_file);
        let mut file = std::fs::File::open(&path).map_err(|e| self.io_error(path.clone(), e))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|e| self.io_error(path, e))?;
        Ok(hex(&hasher.finalize())[..12].to_string())
    }

    fn io_error(&self, path: PathBuf, e: std::io::Error) -> ModelError {
        if e.kind() == ErrorKind::NotFound {
            ModelError::NotFound {
                path,
                model: self.model.clone(),
            }
        } else {
            ModelError::Io {
                path,
                source: e,
                model: self.model.clone(),
            }
        }
    }

    fn corrupt(&self, path: PathBuf, reason: String) -> ModelError {
        ModelError::Corrupt {
            path,
            reason,
            model: self.model.clone(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("bad JSON: {e}"))?;
    let named = manifest
        .weights_sha256
        .iter()
        .map(|sha| ("weights_sha256", sha));
    for (file, sha) in manifest
        .files
        .iter()
        .map(|(f, s)| (f.as_str(), s))
        .chain(named)
    {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the SHA-256 of {file:?} is {sha:?}, not 64 hex digits"
            ));
        }
    }
    Ok(Manifest {
        files: manifest
            .files
            .into_iter()
            .map(|(f, s)| (f, s.to_ascii_lowercase()))
            .collect(),
        weights_sha256: manifest.weights_sha256.map(|s| s.to_ascii_lowercase()),
        ..manifest
    })
}

/// Tensors read from a safetensors file, ready to build a model from.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: Device,
    sha256: String,
    path: PathBuf,
    model: String,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("dtype", &self.dtype)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Weights {
    /// The weights file's SHA-256, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The first 12 hex digits of the SHA-256: put it in the space id, so that other weights mean
    /// another space.
    pub fn revision(&self) -> &str {
        &self.sha256[..12]
    }

    /// The tensors by name, in the dtype asked for (integer tensors as stored).
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The total size of the tensors in memory, in bytes.
    pub fn size_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Build a model: `load` gets a [`VarBuilder`] over these tensors. A candle error while
    /// building (a tensor missing or of the wrong shape) means the file does not hold the model
    /// the config describes, and becomes [`ModelError::Corrupt`].
    pub fn build<M>(
        self,
        load: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<M>,
    ) -> Result<M, ModelError> {
        let Weights {
            tensors,
            dtype,
            device,
            path,
            model,
            ..
        } = self;
        let vb = VarBuilder::from_tensors(tensors, dtype, &device);
        load(vb).map_err(|e| ModelError::Corrupt {
            path,
            reason: format!(
                "does not hold the model its config describes: {}",
                first_line(&e)
            ),
            model,
        })
    }
}

/// candle errors may carry a backtrace after the message; users need the first line.
fn first_line(e: &candle_core::Error) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests;
