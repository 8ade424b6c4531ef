//! The plugin runtime: the wasmtime engine, compiled components, sandboxes, host functions and
//! instance pools, and the contract's generated bindings (converted to domain types in
//! `contract/`). May use `config`, `input`, `models` and `types`; nothing here knows the chain.
//!
//! One [`Runtime`] holds the shared wasmtime `Engine`, the linker with the host functions, and
//! the on-disk cache of compiled components. Each [`Plugin`] holds one component, ready to
//! instantiate, and a small pool of live instances.

mod call;
mod compile;
mod contract;
mod engine;
mod host_fns;
pub(crate) mod nn;
mod plugin;
mod sandbox;

pub use call::Roles;
pub(crate) use call::{CallError, ItemResult, ModelInfo};
pub use compile::ComponentReport;
pub(crate) use engine::Runtime;
pub(crate) use host_fns::model_dir_name;
pub(crate) use plugin::Plugin;
