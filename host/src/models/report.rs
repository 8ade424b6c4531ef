//! What pulls, imports and listings report: the manifest, progress events, outcomes.

use super::registry::{Format, Formats, ModelSpec};
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    pub(super) fn for_spec(spec: &ModelSpec, formats: Formats, source: String) -> Manifest {
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
    pub(super) fn matches(&self, spec: &ModelSpec) -> bool {
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
