//! CLIP and MiniLM through the real host with the `nn` grant: the plugins hand their tensors to
//! the graphs the host runs in ONNX Runtime (wasi-nn), and the vectors match the references and
//! the candle path in one space; without the grant, the graph file or the manifest's word for
//! it, candle answers as before.

use std::path::Path;

use imbed::models::{Models, NoProgress, Registry};
use imbed::{Embedding, ImageRequest, ImageSource, Imbed};
use imbed_tests::clip::{self, floats, model_dir, reference, Weights};
use imbed_tests::onnx::convert_clip;
use imbed_tests::{component, cosine, models::minilm_dir, repo_root, PluginSpec, TestConfig};

fn graphs_of(e: &Embedding) -> Vec<String> {
    e.provenance
        .inference
        .as_ref()
        .map(|i| i.graphs.clone())
        .unwrap_or_default()
}

/// all-MiniLM-L6-v2 with its converted text.onnx, imported as `imbed models import` does (the
/// manifest records the graph as converted, with its SHA-256, which the host checks).
async fn imported_minilm(models_dir: &Path) -> std::path::PathBuf {
    let models = Models::new(Registry::builtin().unwrap(), models_dir);
    models
        .import("all-minilm-l6-v2", &minilm_dir(), &NoProgress)
        .await
        .expect("the setup's MiniLM folder (with text.onnx) imports");
    models.model_dir("all-minilm-l6-v2")
}

async fn minilm_engine(dir: &Path, nn: bool) -> Imbed {
    let mut spec = PluginSpec::file(component("minilm"))
        .grant_model_dir(dir)
        .memory_mb(1024)
        .timeout_ms(120_000);
    if nn {
        spec = spec.grant_nn("text");
    }
    let cfg = TestConfig::new()
        .plugin("minilm", spec)
        .plugin("hash", PluginSpec::hash())
        .description("minilm")
        .hash("hash");
    Imbed::new(cfg.build()).await.expect("engine starts")
}

#[tokio::test]
async fn minilm_through_the_hosts_graph_matches_sentence_transformers_and_candle() {
    let tmp = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let dir = imported_minilm(tmp.path()).await;
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("tests/fixtures/minilm/reference.json")).unwrap(),
    )
    .unwrap();
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<String> = items
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_string())
        .collect();

    let graph = minilm_engine(&dir, true).await.embed_texts(&texts).await;
    let candle = minilm_engine(&dir, false).await.embed_texts(&texts).await;
    for ((item, g), c) in items.iter().zip(graph).zip(candle) {
        let (g, c) = (g.unwrap(), c.unwrap());
        assert_eq!(g.provenance.plugin.key, "minilm");
        assert_eq!(graphs_of(&g), ["text"], "{:?}", g.provenance);
        assert!(graphs_of(&c).is_empty(), "{:?}", c.provenance);
        assert_eq!(g.provenance.space, c.provenance.space);
        let want = floats(&item["embedding"]);
        assert!(cosine(&g.vector, &want) >= 0.9999);
        assert!(cosine(&g.vector, &c.vector) >= 0.9999);
    }
}

#[tokio::test]
async fn minilm_falls_back_to_candle_when_the_graph_is_not_vouched_for() {
    let tmp = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let dir = imported_minilm(tmp.path()).await;
    // A graph the manifest does not vouch for (changed after the import): the host refuses it,
    // the plugin answers with candle, nothing is recorded as native.
    let text = dir.join("text.onnx");
    let mut bytes = std::fs::read(&text).unwrap();
    std::fs::remove_file(&text).unwrap();
    bytes.extend_from_slice(b"\n");
    std::fs::write(&text, bytes).unwrap();
    let e = minilm_engine(&dir, true)
        .await
        .embed_text("a cat on a laptop")
        .await
        .unwrap();
    assert_eq!(e.provenance.plugin.key, "minilm");
    assert!(graphs_of(&e).is_empty(), "{:?}", e.provenance);
    // No graph at all: the same.
    std::fs::remove_file(&text).unwrap();
    let e = minilm_engine(&dir, true)
        .await
        .embed_text("a cat on a laptop")
        .await
        .unwrap();
    assert!(graphs_of(&e).is_empty(), "{:?}", e.provenance);
}

/// The tiny CLIP fixture with its converted graphs and a manifest vouching for all files.
fn clip_with_graphs() -> tempfile::TempDir {
    let dir = model_dir(Weights::F32, None);
    convert_clip(dir.path(), dir.path());
    let files: serde_json::Map<String, serde_json::Value> = [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "vision.onnx",
        "text.onnx",
    ]
    .iter()
    .map(|f| (f.to_string(), clip::sha256_hex(&dir.path().join(f)).into()))
    .collect();
    let weights = files["model.safetensors"].clone();
    let m = serde_json::json!({"name": "clip-tiny-random", "files": files, "source": "test",
        "weights_sha256": weights, "converted": ["vision.onnx", "text.onnx"]});
    std::fs::write(dir.path().join("imbed-model.json"), m.to_string()).unwrap();
    dir
}

async fn clip_engine(dir: &Path, nn: bool) -> Imbed {
    let mut spec = PluginSpec::file(component("clip"))
        .grant_model_dir(dir)
        .memory_mb(512)
        .timeout_ms(120_000);
    if nn {
        spec = spec.grant_nn("vision").grant_nn("text");
    }
    let cfg = TestConfig::new()
        .plugin("clip", spec)
        .plugin("hash", PluginSpec::hash())
        .image_embed("clip")
        .hash("hash");
    Imbed::new(cfg.build()).await.expect("engine starts")
}

#[tokio::test]
async fn clip_through_the_hosts_graphs_matches_transformers_and_candle() {
    let dir = clip_with_graphs();
    let (graph, candle) = (
        clip_engine(dir.path(), true).await,
        clip_engine(dir.path(), false).await,
    );
    let r = reference();
    for item in r["images"].as_array().unwrap() {
        let path = clip::fixtures()
            .join("images")
            .join(item["file"].as_str().unwrap());
        let req = || ImageRequest::new(ImageSource::Path(path.clone()));
        let g = graph.embed_image(req()).await.unwrap();
        let c = candle.embed_image(req()).await.unwrap();
        assert_eq!(graphs_of(&g), ["vision"], "{:?}", g.provenance);
        assert!(graphs_of(&c).is_empty());
        assert_eq!(g.provenance.space, c.provenance.space);
        assert!(cosine(&g.vector, &floats(&item["embedding"])) >= 0.9999);
        assert!(cosine(&g.vector, &c.vector) >= 0.9999);
    }
    let texts: Vec<String> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap().to_string())
        .collect();
    let g = graph.embed_texts(&texts).await;
    let c = candle.embed_texts(&texts).await;
    for ((item, g), c) in r["texts"].as_array().unwrap().iter().zip(g).zip(c) {
        let (g, c) = (g.unwrap(), c.unwrap());
        assert_eq!(graphs_of(&g), ["text"], "{:?}", g.provenance);
        assert_eq!(g.provenance.space, c.provenance.space);
        assert!(cosine(&g.vector, &floats(&item["embedding"])) >= 0.9999);
        assert!(cosine(&g.vector, &c.vector) >= 0.9999);
    }
}
