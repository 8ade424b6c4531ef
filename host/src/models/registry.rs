//! The registry of known models (built in, plus the config's extra file) and the `[models]`
//! settings.

use super::error::ModelError;
use super::{BUILTIN_REGISTRY, MANIFEST};
pub use crate::config::ModelSettings;
use serde::Deserialize;
use serde::Serialize;
use std::path::Path;

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

    pub(super) fn files_of(&self, format: Format) -> impl Iterator<Item = &ModelFile> {
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
    crate::config::normalize_base_url(url).map_err(|message| ModelError::BadUrl {
        url: url.to_string(),
        message,
    })
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
