//! The CLIP plugin: images and texts embedded into one space by OpenAI's CLIP (ViT-B/32 by
//! default), with candle inside the wasm sandbox.
//!
//! Everything the model needs comes from the model directory the host grants read-only at
//! `/model` (`imbed models pull clip-vit-base-patch32` fills it): `config.json` (transformers'
//! `CLIPConfig`, so a tiny test model works as well as the real one), `model.safetensors` (f32 or
//! f16), `tokenizer.json`, and optionally `preprocessor_config.json` and the `imbed-model.json`
//! manifest. Text and image vectors share one space id,
//! `clip/<model>@<first 12 hex digits of the weights' SHA-256>`, so different weights never mix.
//!
//! The model code ([`Clip`], [`model`], [`preprocess`], [`tokenize`]) compiles natively as well,
//! so tests and benchmarks run the same candle code outside the sandbox; only the component glue
//! is wasm-only.

pub mod model;
pub mod preprocess;
pub mod tokenize;

use std::path::Path;

use candle_core::{DType, Device};
use image::DynamicImage;
use imbed_model_io::{ModelDir, ModelError};

use model::{ClipConfig, ClipModel};
use preprocess::Preprocessor;
use tokenize::ClipTokenizer;

/// The name `imbed models pull` knows the default model by.
pub const DEFAULT_MODEL: &str = "clip-vit-base-patch32";

/// Images per forward pass: bounds the activations' memory on large batches.
const IMAGE_CHUNK: usize = 8;
/// Texts per forward pass.
const TEXT_CHUNK: usize = 32;

/// Why the plugin could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClipError {
    /// The model's files are missing, corrupt or do not describe a model this code runs.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// This input cannot be embedded.
    #[error("{0}")]
    BadInput(String),
    /// The computation failed (a bug or an exhausted resource, not the input's fault).
    #[error("clip: {0}")]
    Compute(String),
}

impl From<candle_core::Error> for ClipError {
    fn from(e: candle_core::Error) -> Self {
        let text = e.to_string();
        ClipError::Compute(text.lines().next().unwrap_or_default().to_string())
    }
}

/// What the loaded model reports to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model's name: the manifest's, else the `model` setting, else the folder's name.
    pub model_id: String,
    /// Length of every vector: the config's `projection_dim`.
    pub dimensions: usize,
    /// `clip/<model>@<rev12>`, shared by text and image vectors.
    pub space_id: String,
}

/// A loaded CLIP: tokenizer, preprocessing, both towers.
pub struct Clip {
    model: ClipModel,
    tokenizer: ClipTokenizer,
    preprocessor: Preprocessor,
    info: ModelInfo,
}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clip")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Clip {
    /// Load the model in `dir` (inside the sandbox, `/model`). `model` is the name error messages
    /// tell the user to pull, and the model id when the directory has no manifest.
    pub fn load(dir: impl AsRef<Path>, model: &str) -> Result<Clip, ClipError> {
        Clip::load_named(dir, model, model)
    }

    /// [`Clip::load`] where a directory without a manifest is called `unnamed` (its folder's
    /// name, say) rather than `model`: the name to pull is no name for weights someone put
    /// there by hand, which may be any CLIP.
    pub fn load_named(
        dir: impl AsRef<Path>,
        model: &str,
        unnamed: &str,
    ) -> Result<Clip, ClipError> {
        let dir = ModelDir::open(dir.as_ref(), model)?;
        let name = if dir.manifest().is_some() {
            dir.model_name().to_string()
        } else {
            unnamed.to_string()
        };
        let config: ClipConfig = dir.read_json("config.json")?;
        config
            .validate()
            .map_err(|reason| corrupt(&dir, "config.json", reason))?;
        let image_size = config.vision_config.image_size as u32;
        let preprocessor = if dir.has("preprocessor_config.json") {
            Preprocessor::from_json(&dir.read("preprocessor_config.json")?, image_size)
                .map_err(|reason| corrupt(&dir, "preprocessor_config.json", reason))?
        } else {
            Preprocessor::clip(image_size)
        };
        let tokenizer = ClipTokenizer::from_json(
            &dir.read_string("tokenizer.json")?,
            config.text_config.max_position_embeddings,
        )
        .map_err(|reason| corrupt(&dir, "tokenizer.json", reason))?;
        let weights = dir.load_weights("model.safetensors", DType::F32, &Device::Cpu)?;
        let info = ModelInfo {
            space_id: format!("clip/{name}@{}", weights.revision()),
            model_id: name,
            dimensions: config.projection_dim,
        };
        let model = weights.build(|vb| ClipModel::new(vb, &config))?;
        Ok(Clip {
            model,
            tokenizer,
            preprocessor,
            info,
        })
    }

    /// Model id, dimensions and space id (the same for texts and images).
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The preprocessing this model's images go through.
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// Token ids of a text as the text tower sees them (truncated to the context length).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, ClipError> {
        if text.trim().is_empty() {
            return Err(ClipError::BadInput(
                "the text is empty: there is nothing to embed".into(),
            ));
        }
        self.tokenizer.encode(text).map_err(ClipError::BadInput)
    }

    /// Embed texts: one result per text, in order; an untokenisable text fails alone.
    pub fn embed_texts<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Result<Vec<f32>, ClipError>>, ClipError> {
        let mut out: Vec<Result<Vec<f32>, ClipError>> = Vec::with_capacity(texts.len());
        let mut ready = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            match self.token_ids(text.as_ref()) {
                Ok(ids) => {
                    ready.push((i, ids));
                    out.push(Ok(vec![]));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        for chunk in ready.chunks(TEXT_CHUNK) {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|(_, ids)| ids.clone()).collect();
            for ((i, _), v) in chunk.iter().zip(self.model.text_features(&ids)?) {
                out[*i] = Ok(v);
            }
        }
        Ok(out)
    }

    /// Embed decoded images, batched through the vision tower.
    pub fn embed_images(&self, images: &[&DynamicImage]) -> Result<Vec<Vec<f32>>, ClipError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(IMAGE_CHUNK) {
            let pixels: Vec<Vec<f32>> = chunk
                .iter()
                .map(|img| self.preprocessor.pixel_values(img))
                .collect();
            out.extend(self.model.image_features(&pixels)?);
        }
        Ok(out)
    }

    /// Decode an encoded PNG or JPEG for [`Clip::embed_images`].
    pub fn decode(data: &[u8], mime_type: &str) -> Result<DynamicImage, ClipError> {
        let format = match mime_type {
            "image/png" => image::ImageFormat::Png,
            "image/jpeg" => image::ImageFormat::Jpeg,
            other => {
                return Err(ClipError::BadInput(format!(
                    "unsupported image type {other}: the clip plugin reads PNG and JPEG"
                )))
            }
        };
        image::load_from_memory_with_format(data, format)
            .map_err(|e| ClipError::BadInput(format!("cannot decode the image: {e}")))
    }
}

fn corrupt(dir: &ModelDir, file: &str, reason: String) -> ClipError {
    ClipError::Model(ModelError::Corrupt {
        path: dir.path(file),
        reason,
        model: dir.model_name().to_string(),
    })
}

/// The component glue (on the guest SDK; natively its macro only checks the trait impls).
mod component;
