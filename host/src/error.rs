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
    Engine(String),
    /// A caller misused the library (for example, an empty text).
    #[error("{0}")]
    Usage(String),
    /// Something in imbed itself went wrong (a bug; please report it).
    #[error("internal error: {0}")]
    Internal(Internal),
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
}
