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
    /// The blocking facade lost its worker (a bug; please report it).
    #[error("internal error: {0}")]
    Internal(String),
}

fn list_attempts(attempts: &[Attempt]) -> String {
    attempts.iter().map(|a| format!("\n  - {a}")).collect()
}

/// Result type of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
