//! The library's error type.

use crate::types::Attempt;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The input could not be read or is not a usable image.
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    /// Every step of the chain was tried and none answered.
    #[error("no step of the chain answered:{}", list_attempts(.attempts))]
    Exhausted {
        /// Each step tried, and why it failed.
        attempts: Vec<Attempt>,
    },
    /// The WebAssembly engine could not be set up.
    #[error("cannot start the plugin engine: {0}")]
    Engine(#[from] EngineError),
    /// A caller misused the library (for example, an empty text).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Something in imbed itself went wrong (a bug; please report it).
    #[error("internal error: {0}")]
    Internal(Internal),
}

/// Why the plugin engine (or what it needs around it) could not be set up. Nothing the input
/// can change: the machine is out of threads or memory, or the build is broken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// wasmtime refused its configuration or the host functions.
    #[error("{0:#}")]
    Wasmtime(wasmtime::Error),
    /// The thread that interrupts runaway plugins could not be started.
    #[error("cannot start the epoch thread: {0}")]
    EpochThread(#[source] std::io::Error),
    /// The HTTP client plugins (or image downloads) go through could not be built.
    #[error("cannot build the {what} HTTP client: {source}")]
    HttpClient {
        /// Which client: `plugin`, `download` or `guarded`.
        what: &'static str,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The blocking facade could not start its tokio runtime.
    #[error("cannot start a tokio runtime: {0}")]
    Tokio(#[source] std::io::Error),
}

/// How a caller misused the library: each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A text to embed is empty (or only white space).
    #[error("the text to embed is empty")]
    EmptyText,
    /// Asked to describe an image with a chain that has no describer.
    #[error("the chain has no describe-then-embed step, so nothing can describe images")]
    NoDescriber,
    /// Asked to index with the cache turned off.
    #[error("indexing needs the cache: set [cache] database in the config (it is off)")]
    IndexWithoutCache,
    /// A file given as a plugin is not a WebAssembly component.
    #[error("{} is not a valid WebAssembly component: {reason}", .path.display())]
    NotAComponent {
        /// The file.
        path: std::path::PathBuf,
        /// The parser's first line.
        reason: String,
    },
}

/// What went wrong inside imbed itself: each is a bug, and the message says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Internal {
    /// The blocking facade's tokio runtime is gone.
    #[error("the blocking facade's runtime is gone; please report this")]
    RuntimeGone,
    /// A task ended without sending its answer (it panicked).
    #[error("{0} panicked; please report this with the input that caused it")]
    Panicked(&'static str),
    /// A batch finished without an answer for one of its items.
    #[error("a batch ended without an answer for item {0}; please report this")]
    MissingResult(usize),
}

fn list_attempts(attempts: &[Attempt]) -> String {
    attempts.iter().map(|a| format!("\n  - {a}")).collect()
}

/// Result type of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_names_what_failed_and_asks_for_a_report() {
        let e = Error::Internal(Internal::Panicked("image validation"));
        assert_eq!(
            e.to_string(),
            "internal error: image validation panicked; please report this with the input that caused it"
        );
        let e = Error::Internal(Internal::MissingResult(3));
        assert!(e.to_string().contains("item 3"), "{e}");
    }

    #[test]
    fn boundary_errors_read_as_before() {
        assert_eq!(
            Error::from(UsageError::EmptyText).to_string(),
            "the text to embed is empty"
        );
        let e = Error::from(UsageError::NotAComponent {
            path: "a/b.wasm".into(),
            reason: "magic header not detected".into(),
        });
        assert_eq!(
            e.to_string(),
            "a/b.wasm is not a valid WebAssembly component: magic header not detected"
        );
        let e = Error::from(EngineError::EpochThread(std::io::Error::other(
            "no threads",
        )));
        assert_eq!(
            e.to_string(),
            "cannot start the plugin engine: cannot start the epoch thread: no threads"
        );
    }
}
