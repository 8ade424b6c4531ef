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

/// The component glue; only for wasm, so the algorithms' unit tests run natively.
#[cfg(target_family = "wasm")]
mod component {
    use super::{algo, ALGORITHM_VERSION};

    wit_bindgen::generate!({
        world: "dual-embedder-plugin",
        path: "../../wit/0.1.0",
    });

    use exports::imbed::plugin::{embedder, image_embedder, plugin};
    use imbed::plugin::host;
    use imbed::plugin::types::{Error, Image, ModelInfo, PluginInfo};

    const DEFAULT_DIMENSIONS: usize = 256;

    struct HashPlugin;

    fn dimensions() -> Result<usize, Error> {
        match host::get_setting("dimensions") {
            None => Ok(DEFAULT_DIMENSIONS),
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(d) if (8..=8192).contains(&d) => Ok(d),
                _ => Err(Error::Other(format!(
                    "setting `dimensions` is {raw:?}: set it to a whole number from 8 to 8192"
                ))),
            },
        }
    }

    fn model_info(kind: &str, dims: usize) -> ModelInfo {
        ModelInfo {
            model_id: format!("hash-{kind}-v{ALGORITHM_VERSION}"),
            dimensions: Some(dims as u32),
            space_id: format!("imbed-hash/{kind}@v{ALGORITHM_VERSION}:{dims}"),
        }
    }

    impl plugin::Guest for HashPlugin {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "hash".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            }
        }

        fn warm() -> Result<(), Error> {
            Ok(())
        }
    }

    impl embedder::Guest for HashPlugin {
        fn text_model() -> Result<ModelInfo, Error> {
            Ok(model_info("text", dimensions()?))
        }

        fn embed_texts(texts: Vec<String>) -> Result<Vec<Result<Vec<f32>, Error>>, Error> {
            let dims = dimensions()?;
            Ok(texts
                .iter()
                .map(|text| {
                    algo::embed_text(text, dims).ok_or_else(|| {
                        Error::BadInput("the text has no letters or digits to embed".into())
                    })
                })
                .collect())
        }
    }

    impl image_embedder::Guest for HashPlugin {
        fn image_model() -> Result<ModelInfo, Error> {
            Ok(model_info("image", dimensions()?))
        }

        fn embed_images(images: Vec<Image>) -> Result<Vec<Result<Vec<f32>, Error>>, Error> {
            let dims = dimensions()?;
            Ok(images
                .iter()
                .map(|img| {
                    let format = match img.mime_type.as_str() {
                        "image/png" => image::ImageFormat::Png,
                        "image/jpeg" => image::ImageFormat::Jpeg,
                        other => {
                            return Err(Error::BadInput(format!(
                                "unsupported image type {other}: the hash plugin reads PNG and JPEG"
                            )))
                        }
                    };
                    let decoded = image::load_from_memory_with_format(&img.data, format)
                        .map_err(|e| Error::BadInput(format!("cannot decode the image: {e}")))?;
                    Ok(algo::embed_image(&decoded, dims))
                })
                .collect())
        }
    }

    export!(HashPlugin);
}
