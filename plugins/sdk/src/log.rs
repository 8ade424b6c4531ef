//! Lines in the host's log, tagged with the plugin's name. Cheap: lines below the host's log
//! level are dropped by the host. Outside a component (native tests) they go to stderr.
//!
//! ```
//! imbed_plugin_sdk::log::info(format!("loaded {} vectors", 3));
//! ```

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Step-by-step detail.
    Trace,
    /// Detail for whoever debugs the plugin.
    Debug,
    /// Something worth knowing happened.
    Info,
    /// Something is off but the plugin carries on.
    Warn,
    /// Something failed.
    Error,
}

/// Write `message` at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    write(level, message.as_ref());
}

/// Write at [`Level::Trace`].
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// Write at [`Level::Debug`].
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// Write at [`Level::Info`].
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// Write at [`Level::Warn`].
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// Write at [`Level::Error`].
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}

#[cfg(target_family = "wasm")]
fn write(level: Level, message: &str) {
    use crate::bindings::imbed::plugin::host::{self, LogLevel};
    let level = match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    host::log(level, message);
}

#[cfg(not(target_family = "wasm"))]
fn write(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}
