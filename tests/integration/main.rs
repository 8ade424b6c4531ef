//! imbed's integration tests: one binary, real components, real sockets on 127.0.0.1.

mod blocking;
mod budgets;
mod cache;
mod chain;
mod cli;
mod clip;
mod collection;
mod contract;
mod hash;
mod input;
mod minilm;
mod models;
mod nn;
mod nn_plugins;
mod ollama;
mod ollama_standin;
mod openai;
mod ownership;
mod page;
mod pg_restart;
mod pool;
mod postgres;
mod python_plugin;
mod queue;
mod sandbox;
mod server;
mod store_backends;
mod template;

use imbed::{Config, Embedding, Error, ImageRequest, ImageSource, Imbed};
use imbed_tests::images;

/// Load a config and embed one generated PNG.
pub async fn embed_png(config: Config, description: Option<&str>) -> Result<Embedding, Error> {
    let imbed = Imbed::new(config).await.expect("engine starts");
    let mut req = ImageRequest::new(ImageSource::Bytes(images::png(64, 48, 1)));
    if let Some(d) = description {
        req = req.with_description(d);
    }
    imbed.embed_image(req).await
}

/// Assert the unit length every vector leaving the host must have.
#[track_caller]
pub fn assert_unit(v: &[f32]) {
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm is {norm}");
}
