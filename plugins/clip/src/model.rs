//! CLIP's two towers in candle, following transformers' `modeling_clip.py` tensor for tensor, with
//! the shapes read from the checkpoint's `config.json` (transformers' `CLIPConfig` fields and
//! defaults, which are ViT-B/32's), so the same code runs the real model and a tiny test model.
//!
//! candle-transformers has a CLIP too, but with fixed configs, a hard-coded activation and
//! layer-norm epsilon and argmax pooling only; here every one of those comes from the config.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{layer_norm, linear, linear_no_bias, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// transformers' `CLIPConfig`: the fields the model needs, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    /// Length of the shared embedding space: the output dimension of both projections.
    #[serde(default = "d512")]
    pub projection_dim: usize,
    /// The text tower.
    #[serde(default)]
    pub text_config: TextConfig,
    /// The image tower.
    #[serde(default)]
    pub vision_config: VisionConfig,
}

fn d512() -> usize {
    512
}

/// transformers' `CLIPTextConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Context length: texts are truncated to this many tokens.
    pub max_position_embeddings: usize,
    /// Activation of the MLPs.
    pub hidden_act: String,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// The end-of-text id. `2`, as in the original OpenAI checkpoints, is transformers' legacy
    /// marker for "pool at the largest id" (which is `<|endoftext|>`).
    pub eos_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// transformers' `CLIPVisionConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Side of the square input image.
    pub image_size: usize,
    /// Side of a square patch.
    pub patch_size: usize,
    /// Activation of the MLPs.
    pub hidden_act: String,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipConfig {
    /// CLIP ViT-B/32 (`openai/clip-vit-base-patch32`).
    pub fn vit_base_patch32() -> Self {
        ClipConfig {
            projection_dim: 512,
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
        }
    }

    /// Refuse configs the model code cannot run, before any weights are read.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        Activation::parse(&t.hidden_act)?;
        Activation::parse(&v.hidden_act)?;
        let positive = [
            ("projection_dim", self.projection_dim),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("text_config.vocab_size", t.vocab_size),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{name} is 0"));
        }
        if !t.hidden_size.is_multiple_of(t.num_attention_heads)
            || !v.hidden_size.is_multiple_of(v.num_attention_heads)
        {
            return Err("hidden_size is not a multiple of num_attention_heads".into());
        }
        if v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(format!("activation {other:?} is not supported")),
        }
    }
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
        }
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, hidden: usize, heads: usize) -> Result<Self> {
        Ok(Attention {
            q: linear(hidden, hidden, vb.pp("q_proj"))?,
            k: linear(hidden, hidden, vb.pp("k_proj"))?,
            v: linear(hidden, hidden, vb.pp("v_proj"))?,
            out: linear(hidden, hidden, vb.pp("out_proj"))?,
            heads,
            head_dim: hidden / heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, hidden) = xs.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(xs)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, hidden))?;
        self.out.forward(&ctx)
    }
}

struct EncoderLayer {
    attn: Attention,
    ln1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    ln2: LayerNorm,
}

impl EncoderLayer {
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = (self.attn.forward(&self.ln1.forward(xs)?, mask)? + xs)?;
        let m = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.ln2.forward(&h)?)?)?,
        )?;
        m + h
    }
}

struct Encoder {
    layers: Vec<EncoderLayer>,
}

struct EncoderShape {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    act: Activation,
    eps: f64,
}

impl Encoder {
    fn new(vb: VarBuilder, s: &EncoderShape) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..s.layers)
            .map(|i| {
                let vb = vb.pp(i.to_string());
                Ok(EncoderLayer {
                    attn: Attention::new(vb.pp("self_attn"), s.hidden, s.heads)?,
                    ln1: layer_norm(s.hidden, s.eps, vb.pp("layer_norm1"))?,
                    fc1: linear(s.hidden, s.intermediate, vb.pp("mlp").pp("fc1"))?,
                    fc2: linear(s.intermediate, s.hidden, vb.pp("mlp").pp("fc2"))?,
                    act: s.act,
                    ln2: layer_norm(s.hidden, s.eps, vb.pp("layer_norm2"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, mask)?;
        }
        Ok(xs)
    }
}

/// The text tower with its projection.
struct TextTower {
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_ln: LayerNorm,
    projection: Linear,
    eos_token_id: u32,
}

impl TextTower {
    fn new(vb: VarBuilder, c: &TextConfig, projection_dim: usize) -> Result<Self> {
        let emb = vb.pp("text_model").pp("embeddings");
        let token_embedding = Embedding::new(
            emb.get((c.vocab_size, c.hidden_size), "token_embedding.weight")?,
            c.hidden_size,
        );
        let position_embedding = emb.get(
            (c.max_position_embeddings, c.hidden_size),
            "position_embedding.weight",
        )?;
        let shape = EncoderShape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            act: Activation::parse(&c.hidden_act).map_err(candle_core::Error::msg)?,
            eps: c.layer_norm_eps,
        };
        Ok(TextTower {
            token_embedding,
            position_embedding,
            encoder: Encoder::new(vb.pp("text_model").pp("encoder"), &shape)?,
            final_ln: layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("text_model").pp("final_layer_norm"),
            )?,
            projection: linear_no_bias(c.hidden_size, projection_dim, vb.pp("text_projection"))?,
            eos_token_id: c.eos_token_id,
        })
    }

    /// Where transformers reads the text features: the first `<|endoftext|>` (or, with the legacy
    /// eos id 2, the first largest id, which is `<|endoftext|>` too).
    fn pool_index(&self, ids: &[u32]) -> usize {
        let found = if self.eos_token_id == 2 {
            let max = ids.iter().copied().max();
            ids.iter().position(|&t| Some(t) == max)
        } else {
            ids.iter().position(|&t| t == self.eos_token_id)
        };
        found.unwrap_or(ids.len().saturating_sub(1))
    }

    /// Features of a batch of token sequences (each at most the context length). Shorter ones
    /// are padded at the end: the causal mask keeps padding from reaching earlier positions, so
    /// each text's features are the same as alone.
    fn forward(&self, batch: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let n = batch.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let b = batch.len();
        let mut flat = vec![0u32; b * n];
        for (row, ids) in batch.iter().enumerate() {
            flat[row * n..row * n + ids.len()].copy_from_slice(ids);
        }
        let ids = Tensor::from_vec(flat, (b, n), device)?;
        let xs = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&self.position_embedding.i(..n)?)?;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, n, n), device)?;
        let hidden = self
            .final_ln
            .forward(&self.encoder.forward(&xs, Some(&mask))?)?;
        let pooled = batch
            .iter()
            .enumerate()
            .map(|(row, ids)| hidden.i((row, self.pool_index(ids)))?.unsqueeze(0))
            .collect::<Result<Vec<_>>>()?;
        self.projection.forward(&Tensor::cat(&pooled, 0)?)
    }
}

/// The vision tower with its projection.
struct VisionTower {
    /// The patch convolution's kernel as a `(hidden, channels * patch * patch)` matrix: a
    /// convolution whose stride equals its kernel is one matmul over the unfolded patches.
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    encoder: Encoder,
    post_ln: LayerNorm,
    projection: Linear,
    channels: usize,
    image_size: usize,
    patch: usize,
}

impl VisionTower {
    fn new(vb: VarBuilder, c: &VisionConfig, projection_dim: usize) -> Result<Self> {
        let m = vb.pp("vision_model");
        let emb = m.pp("embeddings");
        let positions = (c.image_size / c.patch_size).pow(2) + 1;
        let patch_weight = emb
            .get(
                (c.hidden_size, c.num_channels, c.patch_size, c.patch_size),
                "patch_embedding.weight",
            )?
            .flatten_from(1)?;
        let shape = EncoderShape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            act: Activation::parse(&c.hidden_act).map_err(candle_core::Error::msg)?,
            eps: c.layer_norm_eps,
        };
        Ok(VisionTower {
            patch_weight: patch_weight.t()?.contiguous()?,
            class_embedding: emb.get(c.hidden_size, "class_embedding")?,
            position_embedding: emb.get((positions, c.hidden_size), "position_embedding.weight")?,
            // "pre_layrnorm" is the checkpoint's spelling.
            pre_ln: layer_norm(c.hidden_size, c.layer_norm_eps, m.pp("pre_layrnorm"))?,
            encoder: Encoder::new(m.pp("encoder"), &shape)?,
            post_ln: layer_norm(c.hidden_size, c.layer_norm_eps, m.pp("post_layernorm"))?,
            projection: linear_no_bias(c.hidden_size, projection_dim, vb.pp("visual_projection"))?,
            channels: c.num_channels,
            image_size: c.image_size,
            patch: c.patch_size,
        })
    }

    /// Features of `(batch, channels, size, size)` pixel values.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        let (c, p, g) = (self.channels, self.patch, self.image_size / self.patch);
        // (b, c, gy, p, gx, p) -> (b, gy, gx, c, p, p): each row is one patch in the kernel's order.
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, c * p * p))?;
        let embeds = patches.broadcast_matmul(&self.patch_weight)?;
        let hidden = self.class_embedding.dim(0)?;
        let class = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .broadcast_as((b, 1, hidden))?;
        let xs = Tensor::cat(&[&class, &embeds], 1)?.broadcast_add(&self.position_embedding)?;
        let xs = self.encoder.forward(&self.pre_ln.forward(&xs)?, None)?;
        let pooled = self.post_ln.forward(&xs.i((.., 0))?)?;
        self.projection.forward(&pooled)
    }
}

/// Both towers, built from a checkpoint in transformers' `CLIPModel` layout.
pub struct ClipModel {
    text: TextTower,
    vision: VisionTower,
    config: ClipConfig,
    device: Device,
}

impl ClipModel {
    /// Build from a [`VarBuilder`] over the checkpoint's tensors (F32).
    pub fn new(vb: VarBuilder, config: &ClipConfig) -> Result<Self> {
        Ok(ClipModel {
            text: TextTower::new(vb.clone(), &config.text_config, config.projection_dim)?,
            vision: VisionTower::new(vb.clone(), &config.vision_config, config.projection_dim)?,
            config: config.clone(),
            device: vb.device().clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// L2-normalised text features, one row per token sequence.
    pub fn text_features(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        normalised_rows(&self.text.forward(batch, &self.device)?)
    }

    /// L2-normalised image features of preprocessed images (each `3 x size x size` floats,
    /// channel-first, as [`crate::preprocess::Preprocessor::pixel_values`] makes them).
    pub fn image_features(&self, pixel_values: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if pixel_values.is_empty() {
            return Ok(vec![]);
        }
        let s = self.vision.image_size;
        let flat: Vec<f32> = pixel_values.iter().flatten().copied().collect();
        let pixels = Tensor::from_vec(
            flat,
            (pixel_values.len(), self.vision.channels, s, s),
            &self.device,
        )?;
        normalised_rows(&self.vision.forward(&pixels)?)
    }
}

fn normalised_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t.to_dtype(DType::F32)?;
    let norm = t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    t.broadcast_div(&norm)?.to_vec2()
}
