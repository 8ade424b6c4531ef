//! A blocking facade over [`Imbed`](crate::Imbed) for synchronous code.
//!
//! It owns a small tokio runtime of its own and hands work to it, so it can be called from plain
//! threads and from inside another tokio runtime alike (where `Runtime::block_on` would panic
//! with "Cannot start a runtime from within a runtime").

use std::future::Future;

use crate::chain::{ImageRequest, Imbed, PluginStatus};
use crate::config::Config;
use crate::error::{EngineError, Error, Internal, Result};
use crate::types::Embedding;

/// The synchronous twin of [`Imbed`].
pub struct BlockingImbed {
    imbed: Imbed,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BlockingImbed {
    /// Start a runtime and load the plugins of `config`.
    pub fn new(config: Config) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imbed-blocking")
            .enable_all()
            .build()
            .map_err(EngineError::Tokio)?;
        let imbed = run_on(&runtime, Imbed::new(config))??;
        Ok(BlockingImbed {
            imbed,
            runtime: Some(runtime),
        })
    }

    fn run<F>(&self, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or(Error::Internal(Internal::RuntimeGone))?;
        run_on(runtime, future)
    }

    /// See [`Imbed::embed_image`].
    pub fn embed_image(&self, request: ImageRequest) -> Result<Embedding> {
        let imbed = self.imbed.clone();
        self.run(async move { imbed.embed_image(request).await })?
    }

    /// See [`Imbed::embed_text`].
    pub fn embed_text(&self, text: &str) -> Result<Embedding> {
        let imbed = self.imbed.clone();
        let text = text.to_string();
        self.run(async move { imbed.embed_text(&text).await })?
    }

    /// See [`Imbed::plugins`].
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.imbed.plugins()
    }

    /// The async handle, for code that has both worlds.
    pub fn as_async(&self) -> &Imbed {
        &self.imbed
    }
}

fn run_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    // A std channel, not a tokio one: blocking on it is allowed on any thread, including a
    // worker of the caller's own tokio runtime.
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .map_err(|_| Error::Internal(Internal::Panicked("the embedding task")))
}

impl Drop for BlockingImbed {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async context; shutting it down in
        // the background does not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
