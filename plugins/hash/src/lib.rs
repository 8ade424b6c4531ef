//! The hash plugin: imbed's last resort, which always answers and needs no model.
//!
//! Texts are embedded by feature hashing (words, word pairs, character trigrams), so texts that
//! share words land close together. Images get a perceptual signature (a low-frequency DCT of a
//! small grayscale copy plus a colour histogram) spread over the configured dimension by a fixed
//! random projection, so near-duplicates land close and unrelated pictures do not.
//!
//! Both algorithms are versioned through [`ALGORITHM_VERSION`], which is part of every space id:
//! changing either algorithm in a way that moves vectors must bump it.

pub mod algo;

/// Bumped whenever either algorithm changes its output; part of the space ids.
pub const ALGORITHM_VERSION: u32 = 1;

const DEFAULT_DIMENSIONS: usize = 256;

use imbed_plugin_sdk::{
    export_plugin, settings, Embedder, Error, Image, ImageEmbedder, ModelInfo, Plugin, Purpose,
    Vector,
};

/// The plugin: stateless, every call reads its settings.
#[derive(Default)]
pub struct HashPlugin;

fn dimensions() -> Result<usize, Error> {
    settings::parse_in("dimensions", DEFAULT_DIMENSIONS, 8..=8192)
}

fn model_info(kind: &str, dims: usize) -> ModelInfo {
    ModelInfo::new(
        format!("hash-{kind}-v{ALGORITHM_VERSION}"),
        format!("imbed-hash/{kind}@v{ALGORITHM_VERSION}:{dims}"),
    )
    .with_dimensions(dims as u32)
}

impl Plugin for HashPlugin {
    const NAME: &'static str = "hash";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
}

impl Embedder for HashPlugin {
    fn text_model(&mut self) -> Result<ModelInfo, Error> {
        Ok(model_info("text", dimensions()?))
    }

    fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
        algo::embed_text(text, dimensions()?)
            .ok_or_else(|| Error::bad_input("the text has no letters or digits to embed"))
    }

    fn embed_texts(&mut self, texts: Vec<String>, _purpose: Purpose) -> imbed_plugin_sdk::Batch {
        // A bad setting fails the whole batch, not each item.
        let dims = dimensions()?;
        Ok(texts
            .iter()
            .map(|text| {
                algo::embed_text(text, dims)
                    .ok_or_else(|| Error::bad_input("the text has no letters or digits to embed"))
            })
            .collect())
    }
}

impl ImageEmbedder for HashPlugin {
    fn image_model(&mut self) -> Result<ModelInfo, Error> {
        Ok(model_info("image", dimensions()?))
    }

    fn embed_image(&mut self, image: &Image) -> Result<Vector, Error> {
        Ok(algo::embed_image(&image.decode()?, dimensions()?))
    }

    fn embed_images(&mut self, images: Vec<Image>) -> imbed_plugin_sdk::Batch {
        let dims = dimensions()?;
        Ok(images
            .iter()
            .map(|img| Ok(algo::embed_image(&img.decode()?, dims)))
            .collect())
    }
}

export_plugin!(HashPlugin: embedder, image_embedder);
