//! imbed turns images into embedding vectors through sandboxed WebAssembly plugins.
//!
//! A [`Config`] lists plugins (WebAssembly components implementing the `imbed:plugin` WIT
//! contract), what each may reach, and a priority chain of steps. [`Imbed`] loads the plugins
//! and walks the chain until a step answers; every [`Embedding`] says which step, plugin, model
//! and embedding space produced it, and why the steps before it did not answer.
//!
//! ```no_run
//! # async fn demo() -> imbed::Result<()> {
//! use imbed::{Config, Env, ImageRequest, ImageSource, Imbed};
//!
//! let config = Config::discover(None, &Env::from_process())?;
//! let imbed = Imbed::new(config).await?;
//! let e = imbed.embed_image(ImageRequest::new(ImageSource::Path("cat.jpg".into()))).await?;
//! println!("{} dims in {} (degraded: {})", e.vector.len(), e.provenance.space, e.provenance.degraded);
//! # Ok(()) }
//! ```
//!
//! Synchronous code uses [`BlockingImbed`], which also works when called from inside a running
//! tokio runtime.
#![deny(missing_docs)]

pub mod blocking;
mod chain;
pub mod config;
pub mod doctor;
pub mod error;
pub mod index;
pub mod input;
pub mod models;
pub mod queue;
mod runtime;
pub mod search;
pub mod server;
pub mod store;
pub mod template;
pub mod types;

#[cfg(test)]
mod layout_tests;

pub use blocking::BlockingImbed;
pub use chain::{
    check_plugin, BackendCapacity, ImageRequest, Imbed, ImbedOptions, ModelName, PluginCheck,
    PluginHealth, PluginStatus, StepCheck,
};
pub use config::{Budgets, Config, ConfigError, Env};
pub use error::{EngineError, Error, Result, UsageError};
pub use input::{ImageSource, InputError, UrlGuard, ValidImage};
pub use runtime::nn::{GraphStatus, LibraryStatus, NnStatus};
pub use runtime::{ComponentReport, EndpointState, EndpointStatus, Roles};
pub use store::{Cache, StoreError};
pub use types::{
    Attempt, Description, DescriptionSource, Embedding, FailureKind, HealthCheck, HealthStatus,
    Inference, PluginId, Provenance, Purpose, SpaceId, StepKind, StructuredDescription,
};
