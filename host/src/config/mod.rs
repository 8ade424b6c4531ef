//! Configuration: the TOML file is parsed into raw structs (`raw`, unknown keys rejected with
//! file and line), `${VAR}` references are expanded (`env`), then validated (`validate`) into
//! [`Config`] (`settings`), which the rest of the library uses. Uses `types` and `input` (the URL
//! guard and the input caps it fills in).

mod env;
mod error;
mod located;
mod raw;
mod settings;
#[cfg(test)]
mod spellings;
mod validate;

pub use env::Env;
pub use error::ConfigError;
pub use settings::{
    Breaker, Budgets, CacheSettings, ChainConfig, Config, Database, Endpoint, Grants,
    ModelSettings, NnSettings, PluginConfig, ServerSettings, Step,
};
pub(crate) use validate::normalize_base_url;
// Defined with the input it caps; the config is where users set it.
pub use crate::input::InputLimits;

/// The default configuration, compiled into the binary so `imbed` works without a config file.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");
