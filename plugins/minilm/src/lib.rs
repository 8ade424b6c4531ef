//! The MiniLM plugin: a local sentence embedder, all-MiniLM-L6-v2 exactly as
//! sentence-transformers runs it (BERT, mean pooling over the attention mask, L2 normalisation,
//! truncation at 256 word pieces), with candle inside the sandbox.
//!
//! It reads its files from the model directory the host grants (`grants.model_dir`, mounted
//! read-only at `/model`): `config.json`, `tokenizer.json`, `model.safetensors`,
//! `sentence_bert_config.json`, `1_Pooling/config.json`. `imbed models pull all-minilm-l6-v2`
//! puts them there. The weights are loaded once per instance, on first use or in `warm`.
//!
//! When the host grants the graph `text` (`[plugins.minilm.grants] nn = ["text"]`) and the folder
//! has a `text.onnx` its manifest vouches for, the transformer runs natively in the host's ONNX
//! Runtime instead (wasi-nn); tokenising, pooling and normalisation stay here, and the vectors
//! land in the same space. Without the grant, the file or the runtime, candle runs it in the
//! sandbox as before.
//!
//! Model id `all-MiniLM-L6-v2`, 384 dimensions, space id
//! `sentence-transformers/all-MiniLM-L6-v2@<first 12 hex digits of the weights' SHA-256>`: other
//! weights are another space, and Ollama's `all-minilm` (a GGUF conversion whose numbers differ)
//! is another space too.
//!
//! [`model`] holds the model, so tests and benchmarks run the same candle code outside the
//! sandbox; the component glue below is thin, on the guest SDK (`imbed-plugin-sdk`).

pub mod model;

/// The component: one [`MiniLm`] value per plugin instance, holding the model once loaded.
mod component {
    use super::model::{EmbedError, SentenceEmbedder, GRAPH, MODEL_ID, REGISTRY_NAME};
    use imbed_model_io::{ModelDir, ModelError, MODEL_ROOT};
    use imbed_plugin_sdk::{
        export_plugin, log, nn, Batch, Embedder, Error, ModelInfo, Plugin, Purpose, Vector,
    };

    /// The plugin instance. A failed load is not remembered: the next call tries again, so
    /// files pulled after the plugin started are picked up.
    #[derive(Default)]
    pub struct MiniLm {
        model: Option<SentenceEmbedder>,
    }

    impl MiniLm {
        fn model(&mut self) -> Result<&SentenceEmbedder, Error> {
            if self.model.is_none() {
                let dir = ModelDir::open(MODEL_ROOT, REGISTRY_NAME).map_err(|e| match e {
                    // No /model at all: the config grants no model directory.
                    ModelError::NotFound { .. } => Error::model_not_found(format!(
                        "model not found: this plugin has no model directory — grant one with `model_dir` in its [plugins.<name>.grants] config section and run `imbed models pull {REGISTRY_NAME}`"
                    )),
                    other => to_sdk(other),
                })?;
                let loaded = load(&dir)?;
                log::info(format!(
                    "loaded {MODEL_ID} ({} dimensions, weights {}, transformer on {})",
                    loaded.dimensions(),
                    loaded.revision(),
                    match loaded.path() {
                        "graph" => "the host's ONNX Runtime (text.onnx)",
                        _ => "candle in the sandbox",
                    }
                ));
                self.model = Some(loaded);
            }
            self.model
                .as_ref()
                .ok_or_else(|| Error::other("the model did not stay loaded"))
        }
    }

    /// The host's graph when it has one for us, else candle. A graph that loads but whose folder
    /// cannot name its weights (no manifest, no safetensors) is not used: its vectors could not
    /// be given a space.
    fn load(dir: &ModelDir) -> Result<SentenceEmbedder, Error> {
        match nn::load(GRAPH) {
            Ok(graph) => match SentenceEmbedder::with_graph(dir, graph) {
                Ok(loaded) => return Ok(loaded),
                Err(e) => log::warn(format!("not using graph {GRAPH:?}: {e}")),
            },
            Err(e) if e.is_unavailable() => log::debug(format!("graph {GRAPH:?} not used: {e}")),
            Err(e) => log::warn(format!("graph {GRAPH:?} failed to load: {e}")),
        }
        SentenceEmbedder::load(dir).map_err(to_sdk)
    }

    /// Missing, corrupt and unreadable files all mean the model cannot be used as configured;
    /// each message says what to do.
    fn to_sdk(e: ModelError) -> Error {
        Error::model_not_found(e.to_string())
    }

    fn item(r: Result<Vector, EmbedError>) -> Result<Vector, Error> {
        r.map_err(|e| match e {
            EmbedError::BadInput(msg) => Error::bad_input(msg),
            EmbedError::Timeout(msg) => Error::timeout(msg),
            other => Error::other(other.to_string()),
        })
    }

    impl Plugin for MiniLm {
        const NAME: &'static str = "minilm";
        const VERSION: &'static str = env!("CARGO_PKG_VERSION");

        fn warm(&mut self) -> Result<(), Error> {
            self.model().map(|_| ())
        }
    }

    impl Embedder for MiniLm {
        fn text_model(&mut self) -> Result<ModelInfo, Error> {
            let m = self.model()?;
            Ok(ModelInfo::new(MODEL_ID, m.space_id()).with_dimensions(m.dimensions() as u32))
        }

        fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
            let m = self.model()?;
            m.embed(&[text])
                .pop()
                .map(item)
                .unwrap_or_else(|| Err(Error::other("no result for the text")))
        }

        /// One call per batch: texts of similar length share forward passes.
        fn embed_texts(&mut self, texts: Vec<String>, _purpose: Purpose) -> Batch {
            let m = self.model()?;
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            Ok(m.embed(&texts).into_iter().map(item).collect())
        }
    }

    export_plugin!(MiniLm: embedder);
}
