//! The chain: [`Imbed`] walks the configured steps in order until one answers, recording why
//! each earlier step did not. The walk (`walk`) asks plugins only through `backend::Backend`;
//! `cached` implements it for [`Imbed`] with the cache as a layer around the plugin calls. May
//! use `runtime` (plugin calls), `store` (through `cached` only), `input`, `config` and `types`;
//! the server and the CLI sit on top of it.

mod backend;
mod cached;
mod capacity;
mod imbed;
mod status;
mod walk;

pub use capacity::BackendCapacity;
pub use imbed::{ImageRequest, Imbed, ImbedOptions};
pub use status::{check_plugin, ModelName, PluginCheck, PluginHealth, PluginStatus, StepCheck};
