//! The plugin runtime: the wasmtime engine, compiled components, sandboxes, host functions and
//! instance pools, and the contract's generated bindings (converted to domain types in
//! `contract/`). May use `config`, `input`, `models` and `types`; nothing here knows the chain.
//!
//! What a plugin sends back to the host is held to its budgets (`budget`: log lines, description
//! size) before it goes any further.
//!
//! One [`Runtime`] holds the shared wasmtime `Engine`, the linker with the host functions, and
//! the on-disk cache of compiled components. Each [`Plugin`] holds one component, ready to
//! instantiate, and a small pool of live instances.

mod budget;
mod call;
mod compile;
mod contract;
mod engine;
mod host_fns;
pub(crate) mod nn;
mod plugin;
mod pool;
mod sandbox;

pub use call::Roles;
pub(crate) use call::{CallError, ItemResult, ModelInfo, PluginDescription};
pub use compile::ComponentReport;
pub(crate) use engine::Runtime;
pub(crate) use host_fns::model_dir_name;
pub(crate) use plugin::Plugin;
pub use pool::{EndpointState, EndpointStatus};
