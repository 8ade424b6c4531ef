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
//! When the host grants the graphs `vision` and `text` (`[plugins.clip.grants] nn = ["vision",
//! "text"]`) and the folder has `vision.onnx` and `text.onnx` its manifest vouches for, both
//! towers run natively in the host's ONNX Runtime (wasi-nn) instead of candle; decoding,
//! preprocessing, tokenising and normalisation stay here, and the space id stays the same: it
//! names the weights, not their format ([`Clip::with_graphs`]).
//!
//! The model code ([`Clip`], [`model`], [`preprocess`], [`tokenize`]) compiles natively as well,
//! so tests and benchmarks run the same candle code outside the sandbox; only the component glue
//! is wasm-only.

pub mod model;
pub mod preprocess;
pub mod tokenize;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device};
use image::DynamicImage;
use imbed_model_io::{ModelDir, ModelError};
use imbed_plugin_sdk::nn::{self, Infer};

use model::{ClipConfig, ClipModel};
use preprocess::Preprocessor;
use tokenize::ClipTokenizer;

/// The name `imbed models pull` knows the default model by.
pub const DEFAULT_MODEL: &str = "clip-vit-base-patch32";

/// Images per forward pass: bounds the activations' memory on large batches.
const IMAGE_CHUNK: usize = 8;
/// Texts per forward pass.
const TEXT_CHUNK: usize = 32;

/// The graphs the host runs for the towers: `vision.onnx` and `text.onnx` in the model folder.
pub const VISION_GRAPH: &str = "vision";
/// See [`VISION_GRAPH`].
pub const TEXT_GRAPH: &str = "text";

/// What exports call the projected features (Qdrant's and imbed's converter: the first).
const IMAGE_OUTPUTS: [&str; 3] = ["image_embeds", "embeddings", "embedding"];
const TEXT_OUTPUTS: [&str; 3] = ["text_embeds", "embeddings", "embedding"];

/// The weights file, whose SHA-256 names the space.
const WEIGHTS_FILE: &str = "model.safetensors";

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
    /// The host stopped a graph run at the call's deadline.
    #[error("clip: {0}")]
    Timeout(String),
}

impl From<nn::NnError> for ClipError {
    fn from(e: nn::NnError) -> Self {
        if e.kind == nn::NnErrorKind::Timeout {
            ClipError::Timeout(e.to_string())
        } else {
            ClipError::Compute(e.to_string())
        }
    }
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
    /// The model's name: the manifest's, else the name the plugin was configured with.
    pub model_id: String,
    /// Length of every vector: the config's `projection_dim`.
    pub dimensions: usize,
    /// `clip/<model>@<rev12>`, shared by text and image vectors.
    pub space_id: String,
}

/// What runs the towers.
enum Towers {
    /// candle, inside the sandbox (boxed: the graph variant is a few pointers).
    Candle(Box<ClipModel>),
    /// Graphs the host runs; `text_inputs` is the text input set accepted last.
    Graphs {
        vision: Box<dyn Infer + Send + Sync>,
        text: Box<dyn Infer + Send + Sync>,
        text_inputs: AtomicUsize,
        vision_inputs: AtomicUsize,
    },
}

/// A loaded CLIP: tokenizer, preprocessing, both towers.
pub struct Clip {
    towers: Towers,
    tokenizer: ClipTokenizer,
    preprocessor: Preprocessor,
    info: ModelInfo,
    image_size: usize,
    channels: usize,
}

/// Everything but the towers.
struct Front {
    dir: ModelDir,
    /// The model id: the manifest's name, else what the caller calls an unnamed folder.
    name: String,
    config: ClipConfig,
    tokenizer: ClipTokenizer,
    preprocessor: Preprocessor,
}

impl Front {
    /// The model with `towers`; the space names the weights' `revision`, whichever path runs.
    fn with_towers(self, towers: Towers, revision: &str) -> Clip {
        Clip {
            info: ModelInfo {
                space_id: format!("clip/{}@{revision}", self.name),
                model_id: self.name,
                dimensions: self.config.projection_dim,
            },
            towers,
            tokenizer: self.tokenizer,
            preprocessor: self.preprocessor,
            image_size: self.config.vision_config.image_size,
            channels: self.config.vision_config.num_channels,
        }
    }
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
        let front = Clip::front(dir.as_ref(), model, unnamed)?;
        let weights = front
            .dir
            .load_weights(WEIGHTS_FILE, DType::F32, &Device::Cpu)?;
        let revision = weights.revision().to_string();
        let model = weights.build(|vb| ClipModel::new(vb, &front.config))?;
        Ok(front.with_towers(Towers::Candle(Box::new(model)), &revision))
    }

    /// Like [`Clip::load`], but the towers run through `vision` and `text` (in the plugin: the
    /// host's `vision.onnx` and `text.onnx`): `model.safetensors` is not read. The space id
    /// names the weights all the same ([`ModelDir::weights_revision`]), so vectors from either
    /// path compare.
    pub fn with_graphs(
        dir: impl AsRef<Path>,
        model: &str,
        vision: impl Infer + Send + Sync + 'static,
        text: impl Infer + Send + Sync + 'static,
    ) -> Result<Clip, ClipError> {
        Clip::with_graphs_named(dir, model, model, vision, text)
    }

    /// [`Clip::with_graphs`] with an unmanifested folder called `unnamed`, as in
    /// [`Clip::load_named`].
    pub fn with_graphs_named(
        dir: impl AsRef<Path>,
        model: &str,
        unnamed: &str,
        vision: impl Infer + Send + Sync + 'static,
        text: impl Infer + Send + Sync + 'static,
    ) -> Result<Clip, ClipError> {
        let front = Clip::front(dir.as_ref(), model, unnamed)?;
        let revision = front.dir.weights_revision(WEIGHTS_FILE)?;
        let towers = Towers::Graphs {
            vision: Box::new(vision),
            text: Box::new(text),
            text_inputs: AtomicUsize::new(0),
            vision_inputs: AtomicUsize::new(0),
        };
        Ok(front.with_towers(towers, &revision))
    }

    /// Which path runs the towers: `"candle"` or `"graph"`.
    pub fn path(&self) -> &'static str {
        match self.towers {
            Towers::Candle(_) => "candle",
            Towers::Graphs { .. } => "graph",
        }
    }

    fn front(dir: &Path, model: &str, unnamed: &str) -> Result<Front, ClipError> {
        let dir = ModelDir::open(dir, model)?;
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
        Ok(Front {
            dir,
            name,
            config,
            tokenizer,
            preprocessor,
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
            let vectors = match &self.towers {
                Towers::Candle(model) => model.text_features(&ids)?,
                Towers::Graphs {
                    text, text_inputs, ..
                } => self.graph_text(text.as_ref(), text_inputs, &ids)?,
            };
            for ((i, _), v) in chunk.iter().zip(vectors) {
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
            out.extend(match &self.towers {
                Towers::Candle(model) => model.image_features(&pixels)?,
                Towers::Graphs {
                    vision,
                    vision_inputs,
                    ..
                } => self.graph_images(vision.as_ref(), vision_inputs, &pixels)?,
            });
        }
        Ok(out)
    }

    /// Token ids padded (with 0) to the batch's longest, with the mask, through the text graph:
    /// the causal mask keeps padding out of each text's features, as on the candle path.
    fn graph_text(
        &self,
        graph: &dyn Infer,
        known: &AtomicUsize,
        batch: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, ClipError> {
        let n = batch.len();
        let len = batch.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; n * len];
        let mut mask = vec![0i64; n * len];
        for (row, t) in batch.iter().enumerate() {
            for (pos, &id) in t.iter().enumerate() {
                ids[row * len + pos] = i64::from(id);
                mask[row * len + pos] = 1;
            }
        }
        let shape = [n, len];
        let narrow = |v: &[i64]| v.iter().map(|&x| x as i32).collect::<Vec<_>>();
        let (ids64, mask64) = (
            nn::Tensor::i64(&shape, &ids)?,
            nn::Tensor::i64(&shape, &mask)?,
        );
        let (ids32, mask32) = (
            nn::Tensor::i32(&shape, &narrow(&ids))?,
            nn::Tensor::i32(&shape, &narrow(&mask))?,
        );
        // Qdrant's export and imbed's converter take int64 ids and mask; others only ids, or int32.
        let sets = vec![
            vec![("input_ids", &ids64), ("attention_mask", &mask64)],
            vec![("input_ids", &ids64)],
            vec![("input_ids", &ids32), ("attention_mask", &mask32)],
            vec![("input_ids", &ids32)],
        ];
        self.run_graph(graph, known, &sets, &TEXT_OUTPUTS, n)
    }

    fn graph_images(
        &self,
        graph: &dyn Infer,
        known: &AtomicUsize,
        pixels: &[Vec<f32>],
    ) -> Result<Vec<Vec<f32>>, ClipError> {
        let n = pixels.len();
        let flat: Vec<f32> = pixels.iter().flatten().copied().collect();
        let input = nn::Tensor::f32(&[n, self.channels, self.image_size, self.image_size], &flat)?;
        let sets = vec![vec![("pixel_values", &input)], vec![("image", &input)]];
        self.run_graph(graph, known, &sets, &IMAGE_OUTPUTS, n)
    }

    /// Run, pick the projected features by name, check their shape, normalise each row.
    fn run_graph(
        &self,
        graph: &dyn Infer,
        known: &AtomicUsize,
        sets: &[Vec<(&str, &nn::Tensor)>],
        outputs: &[&str],
        n: usize,
    ) -> Result<Vec<Vec<f32>>, ClipError> {
        let mut index = known.load(Ordering::Relaxed);
        let out = nn::run_first_accepted(graph, sets, &mut index)?;
        known.store(index, Ordering::Relaxed);
        let (name, t) = out.first_of(outputs)?;
        let dims = self.info.dimensions;
        if t.shape() != [n as u32, dims as u32] {
            return Err(ClipError::Compute(format!(
                "the graph's output {name:?} has shape {:?}, expected [{n}, {dims}]: is it this model's graph?",
                t.shape()
            )));
        }
        Ok(t.to_f32()?
            .chunks(dims)
            .map(|row| {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                row.iter().map(|x| x / norm).collect()
            })
            .collect())
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
