//! all-MiniLM-L6-v2 as sentence-transformers runs it, in candle, free of any plugin plumbing so
//! that tests and benchmarks run the same code natively.
//!
//! sentence-transformers' pipeline for this model (its `modules.json`) is Transformer → Pooling
//! (mean over the attention mask) → Normalize (L2). The Transformer module tokenises with
//! truncation at `max_seq_length` from `sentence_bert_config.json` (256 word pieces) and pads each
//! batch to its longest item; `tokenizer.json`'s own settings (truncate at 128, pad everything to
//! 128) are not what it uses, and keeping them would change the vectors of long texts.

use candle_core::{DType, Device, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config};
pub use imbed_model_io::{ModelDir, ModelError};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The model as sentence-transformers names it; the plugin's model id.
pub const MODEL_ID: &str = "all-MiniLM-L6-v2";

/// The name `imbed models pull` knows the weights by.
pub const REGISTRY_NAME: &str = "all-minilm-l6-v2";

/// The weights file inside the model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Truncation length when the folder has no `sentence_bert_config.json` (the model card's value).
const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Items per forward pass at most: sentence-transformers' default batch size; larger batches
/// gain little on a CPU.
pub const MAX_BATCH: usize = 32;

/// Bound on items × length² per forward pass. The attention scores (and their softmax) take
/// items × 12 heads × length² floats each; 32 texts of 256 pieces in one pass needed 700 MiB of
/// linear memory, this bound (8 such texts, or 32 of 128) keeps an instance near 250 MiB.
const ATTENTION_BUDGET: usize = 8 * 256 * 256;

/// Once a batch has this many items, a text shorter than 3/4 of the batch's longest starts a new
/// batch rather than being padded to it.
const MIN_BATCH: usize = 8;

/// Split texts sorted by length (longest first) into forward passes: at most [`MAX_BATCH`]
/// items, within [`ATTENTION_BUDGET`], and without padding short texts to much longer ones.
fn batches(lengths: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let longest = lengths[start];
        let mut end = start + 1;
        while end < lengths.len() {
            let n = end - start + 1;
            let too_many = n > MAX_BATCH || n * longest * longest > ATTENTION_BUDGET;
            let too_short = n > MIN_BATCH && lengths[end] * 4 < longest * 3;
            if too_many || too_short {
                break;
            }
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Why a batch could not be embedded (the model itself loaded).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The text cannot be embedded (empty).
    #[error("{0}")]
    BadInput(String),
    /// Tokenisation or the forward pass failed.
    #[error("{0}")]
    Compute(String),
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// Pooling settings of sentence-transformers (`1_Pooling/config.json`); only mean pooling is
/// implemented, so a folder asking for anything else is refused rather than answered wrongly.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// A loaded sentence embedder: tokenizer, BERT encoder, and what identifies its space.
pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    dimensions: usize,
    max_seq_length: usize,
    revision: String,
    device: Device,
}

impl SentenceEmbedder {
    /// Load everything from a model directory: `config.json`, `tokenizer.json`,
    /// `model.safetensors`, and when present `sentence_bert_config.json` and
    /// `1_Pooling/config.json`.
    pub fn load(dir: &ModelDir) -> Result<Self, ModelError> {
        let device = Device::Cpu;
        let config: Config = dir.read_json("config.json")?;
        let corrupt = |file: &str, reason: String| ModelError::Corrupt {
            path: dir.path(file),
            reason,
            model: dir.model_name().to_string(),
        };
        let max_seq_length = if dir.has("sentence_bert_config.json") {
            let sb: SentenceBertConfig = dir.read_json("sentence_bert_config.json")?;
            sb.max_seq_length.unwrap_or(DEFAULT_MAX_SEQ_LENGTH)
        } else {
            DEFAULT_MAX_SEQ_LENGTH
        };
        // Positions past the table do not exist; sentence-transformers caps the same way.
        let max_seq_length = max_seq_length.clamp(2, config.max_position_embeddings);
        if dir.has("1_Pooling/config.json") {
            let p: PoolingConfig = dir.read_json("1_Pooling/config.json")?;
            let others = p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens;
            if !p.pooling_mode_mean_tokens || others {
                return Err(corrupt(
                    "1_Pooling/config.json",
                    "this plugin implements mean pooling only, and the folder asks for another"
                        .into(),
                ));
            }
        }

        let mut tokenizer = Tokenizer::from_bytes(dir.read("tokenizer.json")?)
            .map_err(|e| corrupt("tokenizer.json", format!("not a tokenizer: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| {
                corrupt(
                    "tokenizer.json",
                    format!("cannot truncate at {max_seq_length}: {e}"),
                )
            })?;
        // Batches are padded here, to their longest item, not to the file's fixed 128.
        tokenizer.with_padding(None);

        let weights = dir.load_weights(WEIGHTS_FILE, DType::F32, &device)?;
        let revision = weights.revision().to_string();
        let model = weights.build(|vb| BertModel::load(vb, &config))?;
        Ok(SentenceEmbedder {
            model,
            tokenizer,
            dimensions: config.hidden_size,
            max_seq_length,
            revision,
            device,
        })
    }

    /// Length of every vector (384 for all-MiniLM-L6-v2).
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Word pieces per text, counting `[CLS]` and `[SEP]`, beyond which a text is truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// First 12 hex digits of the weights' SHA-256.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The embedding space: `sentence-transformers/all-MiniLM-L6-v2@<revision>`. Deliberately not
    /// Ollama's `ollama/all-minilm`: Ollama runs a GGUF conversion whose numbers differ.
    pub fn space_id(&self) -> String {
        format!("sentence-transformers/{MODEL_ID}@{}", self.revision)
    }

    /// Token ids of one text after truncation, as the model sees them (for tests and checks).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        Ok(self.encode(text)?.0)
    }

    fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>), EmbedError> {
        // sentence-transformers strips each text before tokenising.
        let text = text.trim();
        if text.is_empty() {
            return Err(EmbedError::BadInput(
                "the text is empty: there is nothing to embed".into(),
            ));
        }
        let enc = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| EmbedError::Compute(format!("tokenising failed: {e}")))?;
        // Text of only control or invisible characters (a zero-width space) normalises to
        // nothing; a vector of [CLS] [SEP] alone would mean nothing either.
        if enc
            .get_special_tokens_mask()
            .iter()
            .all(|&special| special == 1)
        {
            return Err(EmbedError::BadInput(
                "the text has nothing to embed: only invisible or control characters".into(),
            ));
        }
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Embed texts: one entry per text, in order, each an L2-normalised vector or that text's
    /// own error. Texts are sorted by length and grouped into forward passes (see [`batches`])
    /// so that padding wastes little and memory stays bounded; masking makes the result of each
    /// text independent of its batch mates.
    pub fn embed(&self, texts: &[&str]) -> Vec<Result<Vec<f32>, EmbedError>> {
        let mut out: Vec<Option<Result<Vec<f32>, EmbedError>>> =
            (0..texts.len()).map(|_| None).collect();
        let mut encoded = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            match self.encode(text) {
                Ok(e) => encoded.push((i, e)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        encoded.sort_by_key(|(_, (ids, _))| std::cmp::Reverse(ids.len()));
        let lengths: Vec<usize> = encoded.iter().map(|(_, (ids, _))| ids.len()).collect();
        for range in batches(&lengths) {
            let chunk = &encoded[range];
            let items: Vec<&(Vec<u32>, Vec<u32>)> = chunk.iter().map(|(_, e)| e).collect();
            match self.forward(&items) {
                Ok(vectors) => {
                    for ((i, _), v) in chunk.iter().zip(vectors) {
                        out[*i] = Some(Ok(v));
                    }
                }
                Err(e) => {
                    for (i, _) in chunk {
                        out[*i] = Some(Err(EmbedError::Compute(format!(
                            "the forward pass failed: {e}"
                        ))));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(EmbedError::Compute("no result for this text".into())))
            })
            .collect()
    }

    /// One padded forward pass, mean pooling over the mask, L2 normalisation.
    fn forward(&self, items: &[&(Vec<u32>, Vec<u32>)]) -> candle_core::Result<Vec<Vec<f32>>> {
        let len = items.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let n = items.len();
        let mut ids = vec![0u32; n * len];
        let mut types = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, (i, t)) in items.iter().enumerate() {
            let base = row * len;
            ids[base..base + i.len()].copy_from_slice(i);
            types[base..base + t.len()].copy_from_slice(t);
            mask[base..base + i.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let types = Tensor::from_vec(types, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, hidden)

        // Mean over real tokens only; clamp as sentence-transformers does (1e-9).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (n, hidden)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
        let mean = summed.broadcast_div(&counts)?;
        // torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The real weights, where `scripts/setup --test` leaves them (or `$IMBED_MINILM_DIR`),
    /// loaded once for all tests.
    fn embedder() -> &'static SentenceEmbedder {
        static LOADED: std::sync::OnceLock<SentenceEmbedder> = std::sync::OnceLock::new();
        LOADED.get_or_init(load_real)
    }

    fn load_real() -> SentenceEmbedder {
        let dir = std::env::var_os("IMBED_MINILM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/models")
                    .join(REGISTRY_NAME)
            });
        assert!(
            dir.join(WEIGHTS_FILE).is_file(),
            "the all-MiniLM-L6-v2 files are missing from {}: run scripts/setup --test",
            dir.display()
        );
        let dir = ModelDir::open(&dir, REGISTRY_NAME).unwrap();
        SentenceEmbedder::load(&dir).unwrap()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn batches_bound_memory_and_padding() {
        // 40 long texts: 8 per pass (the attention budget).
        let long = vec![256; 40];
        assert_eq!(batches(&long), vec![0..8, 8..16, 16..24, 24..32, 32..40]);
        // Short texts: up to 32 per pass.
        let short = vec![20; 70];
        assert_eq!(batches(&short), vec![0..32, 32..64, 64..70]);
        // A much shorter text starts a new pass once a pass has 8 items, not before.
        let mixed = [40, 40, 40, 40, 40, 40, 40, 40, 40, 10, 10, 10];
        assert_eq!(batches(&mixed), vec![0..9, 9..12]);
        let few = [40, 10, 10];
        assert_eq!(batches(&few), vec![0..3]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn truncates_at_256_word_pieces_not_the_files_128() {
        let e = embedder();
        assert_eq!(e.max_seq_length(), 256);
        let long = "the quick brown fox jumps over the lazy dog ".repeat(60);
        assert_eq!(e.token_ids(&long).unwrap().len(), 256);
        // No padding to a fixed length: a short text is [CLS] hello [SEP].
        assert_eq!(e.token_ids("hello").unwrap(), vec![101, 7592, 102]);
    }

    #[test]
    fn vectors_are_normalised_and_independent_of_batch_mates() {
        let e = embedder();
        let long =
            "a sentence that is a good deal longer than the others in this batch, ".repeat(5);
        let texts = ["a cat on a laptop", long.as_str(), "dogs"];
        let batch = e.embed(&texts);
        for (text, got) in texts.iter().zip(&batch) {
            let got = got.as_ref().unwrap();
            assert_eq!(got.len(), 384);
            assert!((dot(got, got) - 1.0).abs() < 1e-5);
            let alone = e.embed(&[text]).remove(0).unwrap();
            assert!(
                dot(got, &alone) > 0.99999,
                "padding changed the vector of {text:?}"
            );
        }
    }

    #[test]
    fn empty_text_is_bad_input_and_does_not_sink_the_batch() {
        let e = embedder();
        let out = e.embed(&["a red car", "", "   ", "\u{200b}\u{0}", "a blue car"]);
        for bad in &out[1..4] {
            assert!(matches!(bad, Err(EmbedError::BadInput(_))), "{bad:?}");
        }
        let (a, b) = (out[0].as_ref().unwrap(), out[4].as_ref().unwrap());
        assert!(dot(a, b) > 0.5 && dot(a, b) < 0.999);
    }

    #[test]
    fn space_id_carries_the_weights_revision() {
        let e = embedder();
        assert_eq!(e.revision().len(), 12);
        assert_eq!(
            e.space_id(),
            format!("sentence-transformers/all-MiniLM-L6-v2@{}", e.revision())
        );
        assert_eq!(e.dimensions(), 384);
    }
}
