//! all-MiniLM-L6-v2 as sentence-transformers runs it, in candle, free of any plugin plumbing so
//! that tests and benchmarks run the same code natively.
//!
//! sentence-transformers' pipeline for this model (its `modules.json`) is Transformer → Pooling
//! (mean over the attention mask) → Normalize (L2). The Transformer module tokenises with
//! truncation at `max_seq_length` from `sentence_bert_config.json` (256 word pieces) and pads each
//! batch to its longest item; `tokenizer.json`'s own settings (truncate at 128, pad everything to
//! 128) are not what it uses, and keeping them would change the vectors of long texts.
//!
//! The transformer runs either in candle inside the sandbox or as a graph the host runs natively
//! (`text.onnx` through wasi-nn, [`SentenceEmbedder::with_graph`]); tokenising, pooling and
//! normalisation are this module's either way, and both paths land in one space: the space id
//! names the weights, not the format they are stored in.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config};
pub use imbed_model_io::{ModelDir, ModelError};
use imbed_plugin_sdk::nn::{self, Infer};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The model as sentence-transformers names it; the plugin's model id.
pub const MODEL_ID: &str = "all-MiniLM-L6-v2";

/// The name `imbed models pull` knows the weights by.
pub const REGISTRY_NAME: &str = "all-minilm-l6-v2";

/// The weights file inside the model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The graph the host runs for the transformer (`text.onnx` in the model directory).
pub const GRAPH: &str = "text";

/// Output names under which exports return what the plugin pools, most specific first:
/// per-token states (pooled here) or, from exports that pool themselves, sentence vectors.
const TOKEN_OUTPUTS: [&str; 2] = ["last_hidden_state", "token_embeddings"];
const SENTENCE_OUTPUTS: [&str; 1] = ["sentence_embedding"];

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
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The text cannot be embedded (empty).
    #[error("{0}")]
    BadInput(String),
    /// Tokenisation or the forward pass failed.
    #[error("{0}")]
    Compute(String),
    /// The host stopped the graph at the call's deadline: the host reports it as a timeout,
    /// not as a failure of the model.
    #[error("{0}")]
    Timeout(String),
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

/// What runs the transformer.
enum Encoder {
    /// candle's BERT, inside the sandbox (boxed: the graph variant is a few pointers).
    Candle {
        model: Box<BertModel>,
        device: Device,
    },
    /// A graph the host runs; `inputs` is the input set it accepted last (see [`input_sets`]).
    Graph {
        graph: Box<dyn Infer + Send + Sync>,
        inputs: AtomicUsize,
    },
}

/// A loaded sentence embedder: tokenizer, the transformer, and what identifies its space.
pub struct SentenceEmbedder {
    encoder: Encoder,
    tokenizer: Tokenizer,
    dimensions: usize,
    max_seq_length: usize,
    revision: String,
}

/// Everything but the transformer: config, tokenizer, truncation length.
struct Front {
    config: Config,
    tokenizer: Tokenizer,
    max_seq_length: usize,
}

impl SentenceEmbedder {
    /// Load everything from a model directory: `config.json`, `tokenizer.json`,
    /// `model.safetensors`, and when present `sentence_bert_config.json` and
    /// `1_Pooling/config.json`.
    pub fn load(dir: &ModelDir) -> Result<Self, ModelError> {
        let front = Self::front(dir)?;
        let device = Device::Cpu;
        let weights = dir.load_weights(WEIGHTS_FILE, DType::F32, &device)?;
        let revision = weights.revision().to_string();
        let model = weights.build(|vb| BertModel::load(vb, &front.config))?;
        Ok(SentenceEmbedder {
            encoder: Encoder::Candle {
                model: Box::new(model),
                device,
            },
            tokenizer: front.tokenizer,
            dimensions: front.config.hidden_size,
            max_seq_length: front.max_seq_length,
            revision,
        })
    }

    /// Load the tokenizer and settings from a model directory and run the transformer through
    /// `graph` (in the plugin: the host's `text.onnx`). `model.safetensors` is not read; the
    /// space's revision is still that of the weights (see [`ModelDir::weights_revision`]), so
    /// both paths answer in one space.
    pub fn with_graph(
        dir: &ModelDir,
        graph: impl Infer + Send + Sync + 'static,
    ) -> Result<Self, ModelError> {
        let front = Self::front(dir)?;
        let revision = dir.weights_revision(WEIGHTS_FILE)?;
        Ok(SentenceEmbedder {
            encoder: Encoder::Graph {
                graph: Box::new(graph),
                inputs: AtomicUsize::new(0),
            },
            tokenizer: front.tokenizer,
            dimensions: front.config.hidden_size,
            max_seq_length: front.max_seq_length,
            revision,
        })
    }

    /// Which path runs the transformer: `"candle"` or `"graph"`.
    pub fn path(&self) -> &'static str {
        match self.encoder {
            Encoder::Candle { .. } => "candle",
            Encoder::Graph { .. } => "graph",
        }
    }

    fn front(dir: &ModelDir) -> Result<Front, ModelError> {
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
        Ok(Front {
            config,
            tokenizer,
            max_seq_length,
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
            let result = match &self.encoder {
                Encoder::Candle { model, device } => forward(model, device, &items)
                    .map_err(|e| EmbedError::Compute(format!("the forward pass failed: {e}"))),
                Encoder::Graph { graph, inputs } => {
                    forward_graph(graph.as_ref(), inputs, self.dimensions, &items).map_err(|e| {
                        if e.kind == nn::NnErrorKind::Timeout {
                            EmbedError::Timeout(e.to_string())
                        } else {
                            EmbedError::Compute(format!("the forward pass failed: {e}"))
                        }
                    })
                }
            };
            match result {
                Ok(vectors) => {
                    for ((i, _), v) in chunk.iter().zip(vectors) {
                        out[*i] = Some(Ok(v));
                    }
                }
                Err(e) => {
                    for (i, _) in chunk {
                        out[*i] = Some(Err(e.clone()));
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
}

/// A batch padded to its longest item: ids, type ids and mask, each `n * len`, row-major.
struct Padded {
    n: usize,
    len: usize,
    ids: Vec<u32>,
    types: Vec<u32>,
    mask: Vec<u32>,
}

fn pad(items: &[&(Vec<u32>, Vec<u32>)]) -> Padded {
    let len = items.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let n = items.len();
    let mut p = Padded {
        n,
        len,
        ids: vec![0; n * len],
        types: vec![0; n * len],
        mask: vec![0; n * len],
    };
    for (row, (i, t)) in items.iter().enumerate() {
        let base = row * len;
        p.ids[base..base + i.len()].copy_from_slice(i);
        p.types[base..base + t.len()].copy_from_slice(t);
        p.mask[base..base + i.len()].fill(1);
    }
    p
}

/// The input sets exports of this model take, in the order tried: the public export and
/// imbed's converter (three int64 inputs), exports without token types, then int32 ids.
fn input_sets(p: &Padded) -> Result<Vec<Vec<(&'static str, nn::Tensor)>>, nn::NnError> {
    let shape = [p.n, p.len];
    let i64s =
        |v: &[u32]| nn::Tensor::i64(&shape, &v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>());
    let i32s =
        |v: &[u32]| nn::Tensor::i32(&shape, &v.iter().map(|&x| x as i32).collect::<Vec<_>>());
    let (ids, mask, types) = (i64s(&p.ids)?, i64s(&p.mask)?, i64s(&p.types)?);
    let (ids32, mask32, types32) = (i32s(&p.ids)?, i32s(&p.mask)?, i32s(&p.types)?);
    Ok(vec![
        vec![
            ("input_ids", ids.clone()),
            ("attention_mask", mask.clone()),
            ("token_type_ids", types),
        ],
        vec![("input_ids", ids), ("attention_mask", mask)],
        vec![
            ("input_ids", ids32.clone()),
            ("attention_mask", mask32.clone()),
            ("token_type_ids", types32),
        ],
        vec![("input_ids", ids32), ("attention_mask", mask32)],
    ])
}

/// One padded pass through the host's graph, then the same pooling and normalisation as the
/// candle path, in plain Rust.
fn forward_graph(
    graph: &dyn Infer,
    known: &AtomicUsize,
    dimensions: usize,
    items: &[&(Vec<u32>, Vec<u32>)],
) -> Result<Vec<Vec<f32>>, nn::NnError> {
    let p = pad(items);
    let sets = input_sets(&p)?;
    let candidates: Vec<Vec<(&str, &nn::Tensor)>> = sets
        .iter()
        .map(|set| set.iter().map(|(n, t)| (*n, t)).collect())
        .collect();
    let mut index = known.load(Ordering::Relaxed);
    let out = nn::run_first_accepted(graph, &candidates, &mut index)?;
    known.store(index, Ordering::Relaxed);
    let wrong = |what: String| nn::NnError::new(nn::NnErrorKind::InvalidArgument, what);

    let mut names: Vec<&str> = TOKEN_OUTPUTS.to_vec();
    names.extend(SENTENCE_OUTPUTS);
    let (name, t) = out.first_of(&names)?;
    let values = t.to_f32()?;
    let shape: Vec<usize> = t.shape().iter().map(|&d| d as usize).collect();
    let rows: Vec<Vec<f32>> = match shape.as_slice() {
        // Per-token states: mean over the real tokens, as sentence-transformers pools.
        [n, len, h] if *n == p.n && *len == p.len && *h == dimensions => (0..p.n)
            .map(|row| {
                let mut sum = vec![0f32; dimensions];
                let mut count = 0f32;
                for pos in 0..p.len {
                    if p.mask[row * p.len + pos] == 1 {
                        count += 1.0;
                        let at = (row * p.len + pos) * dimensions;
                        for (s, v) in sum.iter_mut().zip(&values[at..at + dimensions]) {
                            *s += v;
                        }
                    }
                }
                let count = count.max(1e-9);
                sum.iter().map(|s| s / count).collect()
            })
            .collect(),
        // Already pooled by the graph.
        [n, h] if *n == p.n && *h == dimensions && SENTENCE_OUTPUTS.contains(&name) => {
            values.chunks(dimensions).map(<[f32]>::to_vec).collect()
        }
        other => {
            return Err(wrong(format!(
                "the graph's output {name:?} has shape {other:?}; expected ({}, {}, {dimensions}) token states",
                p.n, p.len
            )))
        }
    };
    Ok(rows.into_iter().map(normalise).collect())
}

/// torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// One padded forward pass in candle, mean pooling over the mask, L2 normalisation.
fn forward(
    model: &BertModel,
    device: &Device,
    items: &[&(Vec<u32>, Vec<u32>)],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let Padded {
        n,
        len,
        ids,
        types,
        mask,
    } = pad(items);
    let ids = Tensor::from_vec(ids, (n, len), device)?;
    let types = Tensor::from_vec(types, (n, len), device)?;
    let mask = Tensor::from_vec(mask, (n, len), device)?;
    let hidden = model.forward(&ids, &types, Some(&mask))?; // (n, len, hidden)

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

    /// A stand-in for the host's graph: candle's BERT behind the wasi-nn tensors, taking only
    /// int64 inputs named as the public export names them (with or without token types).
    struct CandleGraph {
        model: BertModel,
        with_types: bool,
    }

    impl Infer for CandleGraph {
        fn run(&self, inputs: &[(&str, &nn::Tensor)]) -> Result<nn::Outputs, nn::NnError> {
            let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
            let want: &[&str] = if self.with_types {
                &["input_ids", "attention_mask", "token_type_ids"]
            } else {
                &["input_ids", "attention_mask"]
            };
            let refuse = |m: String| nn::NnError::new(nn::NnErrorKind::InvalidArgument, m);
            if names != want
                || inputs
                    .iter()
                    .any(|(_, t)| t.element_type() != nn::ElementType::I64)
            {
                return Err(refuse(format!("unexpected inputs {names:?}")));
            }
            let shape = inputs[0].1.shape();
            let (n, len) = (shape[0] as usize, shape[1] as usize);
            let ints = |t: &nn::Tensor| -> Vec<u32> {
                t.bytes()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
                    .collect()
            };
            let t = |v: Vec<u32>| Tensor::from_vec(v, (n, len), &Device::Cpu).unwrap();
            let types = if self.with_types {
                ints(inputs[2].1)
            } else {
                vec![0; n * len]
            };
            let hidden = self
                .model
                .forward(
                    &t(ints(inputs[0].1)),
                    &t(types),
                    Some(&t(ints(inputs[1].1))),
                )
                .unwrap();
            let h = hidden.dim(2).unwrap();
            let values: Vec<f32> = hidden.flatten_all().unwrap().to_vec1().unwrap();
            Ok(nn::Outputs(vec![(
                "last_hidden_state".into(),
                nn::Tensor::f32(&[n, len, h], &values)?,
            )]))
        }
    }

    fn candle_graph(with_types: bool) -> (ModelDir, CandleGraph) {
        let dir = std::env::var_os("IMBED_MINILM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/models")
                    .join(REGISTRY_NAME)
            });
        let dir = ModelDir::open(&dir, REGISTRY_NAME).unwrap();
        let config: Config = dir.read_json("config.json").unwrap();
        let model = dir
            .load_weights(WEIGHTS_FILE, DType::F32, &Device::Cpu)
            .unwrap()
            .build(|vb| BertModel::load(vb, &config))
            .unwrap();
        (dir, CandleGraph { model, with_types })
    }

    #[test]
    fn the_graph_path_pools_like_the_candle_path_whichever_inputs_the_graph_takes() {
        let candle = embedder();
        for with_types in [true, false] {
            let (dir, graph) = candle_graph(with_types);
            let e = SentenceEmbedder::with_graph(&dir, graph).unwrap();
            assert_eq!(e.path(), "graph");
            assert_eq!(e.space_id(), candle.space_id());
            let long = "a much longer sentence that pads the short ones in its batch ".repeat(4);
            let texts = ["a cat on a laptop", long.as_str(), "", "dogs"];
            let (g, c) = (e.embed(&texts), candle.embed(&texts));
            assert!(matches!(g[2], Err(EmbedError::BadInput(_))));
            for i in [0, 1, 3] {
                let (g, c) = (g[i].as_ref().unwrap(), c[i].as_ref().unwrap());
                assert!(dot(g, c) > 0.99999, "{}: {}", texts[i], dot(g, c));
            }
        }
    }

    #[test]
    fn a_graph_that_fits_no_input_set_or_returns_the_wrong_shape_fails_clearly() {
        struct Wrong;
        impl Infer for Wrong {
            fn run(&self, inputs: &[(&str, &nn::Tensor)]) -> Result<nn::Outputs, nn::NnError> {
                if inputs.len() == 3 {
                    return Err(nn::NnError::new(nn::NnErrorKind::InvalidArgument, "no"));
                }
                let out = nn::Tensor::f32(&[1, 2], &[1.0, 0.0])?;
                Ok(nn::Outputs(vec![("last_hidden_state".into(), out)]))
            }
        }
        let (dir, _) = candle_graph(true);
        let e = SentenceEmbedder::with_graph(&dir, Wrong).unwrap();
        let err = e.embed(&["hello"]).remove(0).unwrap_err().to_string();
        assert!(
            err.contains("\"last_hidden_state\" has shape [1, 2]"),
            "{err}"
        );
    }

    #[test]
    fn a_run_the_host_stopped_at_the_deadline_is_a_timeout_for_every_text_of_the_batch() {
        struct Slow;
        impl Infer for Slow {
            fn run(&self, _: &[(&str, &nn::Tensor)]) -> Result<nn::Outputs, nn::NnError> {
                Err(nn::NnError::new(
                    nn::NnErrorKind::Timeout,
                    "graph \"text\" ran past the plugin call's deadline and was stopped",
                ))
            }
        }
        let (dir, _) = candle_graph(true);
        let e = SentenceEmbedder::with_graph(&dir, Slow).unwrap();
        let out = e.embed(&["hello", "world"]);
        for r in out {
            match r {
                Err(EmbedError::Timeout(m)) => assert!(m.contains("deadline"), "{m}"),
                other => panic!("expected a timeout, got {other:?}"),
            }
        }
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
