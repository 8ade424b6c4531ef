//! What can go wrong with a model's files.

use std::path::Path;
use std::path::PathBuf;

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

    pub(super) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
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
