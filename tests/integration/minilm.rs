//! The MiniLM plugin (all-MiniLM-L6-v2 in candle, inside the sandbox) through the real host, on
//! the real weights: parity with sentence-transformers, semantics, per-item errors, and what
//! happens when its model files are missing, corrupt or out of its reach.

use std::path::{Path, PathBuf};

use imbed::{Embedding, Error, FailureKind, ImageRequest, ImageSource, Imbed, StepKind};
use imbed_tests::{
    component, cosine, images, models::minilm_dir, repo_root, PluginSpec, TestConfig,
};
use serde_json::Value;

fn reference() -> Value {
    let path = repo_root().join("tests/fixtures/minilm/reference.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reference.json is committed")).unwrap()
}

/// The space id the plugin must report for the real weights.
fn expected_space() -> String {
    let sha = reference()["weights_sha256"].as_str().unwrap().to_string();
    format!("sentence-transformers/all-MiniLM-L6-v2@{}", &sha[..12])
}

fn minilm(model_dir: &Path) -> PluginSpec {
    PluginSpec::file(component("minilm"))
        .grant_model_dir(model_dir)
        .memory_mb(1024)
        .timeout_ms(120_000)
}

/// MiniLM embeds texts (queries and callers' descriptions); the hash plugin is the fallback.
async fn imbed_with(model_dir: &Path) -> Imbed {
    let cfg = TestConfig::new()
        .plugin("minilm", minilm(model_dir))
        .plugin("hash", PluginSpec::hash())
        .description("minilm")
        .hash("hash");
    Imbed::new(cfg.build()).await.expect("engine starts")
}

#[track_caller]
fn assert_from_minilm(e: &Embedding) {
    assert_eq!(
        e.provenance.plugin.key, "minilm",
        "answered by {:?}",
        e.provenance
    );
    assert_eq!(e.provenance.model, "all-MiniLM-L6-v2");
    assert_eq!(e.provenance.space, expected_space());
    assert_eq!(e.provenance.dimensions, 384);
    assert!(!e.provenance.degraded);
}

#[tokio::test]
async fn matches_sentence_transformers_on_the_real_weights() {
    let imbed = imbed_with(&minilm_dir()).await;
    let reference = reference();
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<String> = items
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<Vec<f32>> = items
        .iter()
        .map(|i| {
            i["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    // The fixtures hold texts past 128 and past 256 word pieces: truncation is exercised.
    assert!(items
        .iter()
        .any(|i| (129..=256).contains(&i["word_pieces"].as_u64().unwrap())));
    assert!(items
        .iter()
        .any(|i| i["word_pieces"].as_u64().unwrap() > 256));

    let batch = imbed.embed_texts(&texts).await;
    for ((text, want), got) in texts.iter().zip(&expected).zip(&batch) {
        let got = got.as_ref().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_from_minilm(got);
        let c = cosine(&got.vector, want);
        assert!(c >= 0.9999, "cosine {c} for {text:?}");
    }
    // One at a time, as queries arrive, gives the same vectors as the batch.
    for (text, want) in texts.iter().zip(&expected).step_by(3) {
        let got = imbed.embed_text(text).await.unwrap();
        assert_from_minilm(&got);
        let c = cosine(&got.vector, want);
        assert!(c >= 0.9999, "cosine {c} for {text:?} alone");
    }
}

#[tokio::test]
async fn the_right_caption_ranks_first() {
    let imbed = imbed_with(&minilm_dir()).await;
    let captions = [
        "A cat sleeping on a laptop keyboard.",
        "A red sports car parked on a city street at night.",
        "Children playing football on a sunny beach.",
        "A bowl of ramen with a boiled egg and green onions.",
        "Snow-covered mountains reflected in a calm lake.",
        "A man repairing a bicycle tire in his garage.",
        "An old lighthouse on a rocky coast during a storm.",
        "A dog catching a frisbee in the park.",
    ];
    let queries = [
        "kitten napping on a computer",
        "fast automobile downtown after dark",
        "kids at the seaside with a ball",
        "Japanese noodle soup",
        "alpine scenery with water",
        "fixing a bike",
        "waves crashing against a tower by the sea",
        "puppy playing fetch",
    ];
    let embed = |texts: &[&str]| {
        let texts: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
        let imbed = imbed.clone();
        async move {
            imbed
                .embed_texts(&texts)
                .await
                .into_iter()
                .map(|r| {
                    let e = r.unwrap();
                    assert_from_minilm(&e);
                    e.vector
                })
                .collect::<Vec<_>>()
        }
    };
    let caps = embed(&captions).await;
    let qs = embed(&queries).await;
    for (i, (query, q)) in queries.iter().zip(&qs).enumerate() {
        let scores: Vec<f32> = caps.iter().map(|c| cosine(q, c)).collect();
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        assert_eq!(
            best, i,
            "{query:?} ranked {:?} first; scores {scores:?}",
            captions[best]
        );
    }
}

#[tokio::test]
async fn an_item_without_text_fails_alone() {
    let imbed = imbed_with(&minilm_dir()).await;
    // The host refuses the empty item itself; the zero-width space reaches the plugin, which has
    // nothing to embed either (and neither has the hash fallback).
    let texts: Vec<String> = [
        "a cat on a sofa",
        "",
        "\u{200b}\u{200b}",
        "a dog in the rain",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = imbed.embed_texts(&texts).await;
    assert_from_minilm(out[0].as_ref().unwrap());
    assert_from_minilm(out[3].as_ref().unwrap());
    assert!(matches!(out[1], Err(Error::Usage(_))), "{:?}", out[1]);
    match &out[2] {
        Err(Error::Exhausted { attempts }) => {
            let first = &attempts[0];
            assert_eq!(first.plugin.as_deref(), Some("minilm"));
            assert_eq!(first.kind, FailureKind::BadInput, "{}", first.message);
            assert!(
                first.message.contains("nothing to embed"),
                "{}",
                first.message
            );
        }
        other => panic!("expected the invisible text to fail: {other:?}"),
    }
}

#[tokio::test]
async fn a_callers_description_lands_in_the_query_space() {
    let imbed = imbed_with(&minilm_dir()).await;
    let text = "a red bicycle leaning against a brick wall";
    let image = imbed
        .embed_image(
            ImageRequest::new(ImageSource::Bytes(images::png(64, 48, 2))).with_description(text),
        )
        .await
        .unwrap();
    assert_eq!(image.provenance.step_kind, StepKind::Description);
    assert_from_minilm(&image);
    let query = imbed.embed_text(text).await.unwrap();
    assert!(cosine(&image.vector, &query.vector) > 0.99999);
}

/// A copy of the real model directory to break: files are hard-linked where possible (never
/// written through: a file to break is replaced, not edited).
fn model_copy() -> tempfile::TempDir {
    let src = minilm_dir();
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    copy_tree(&src, dir.path());
    dir
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else if std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Replace `file` in `dir` with new contents (unlinking first, so a hard-linked original stays).
fn replace(dir: &Path, file: &str, contents: &[u8]) {
    let path = dir.join(file);
    let _ = std::fs::remove_file(&path);
    std::fs::write(path, contents).unwrap();
}

/// Embed a text with a broken model directory: the hash step must answer, and the MiniLM
/// attempt must say why it did not.
async fn falls_back(dir: &Path) -> String {
    let imbed = imbed_with(dir).await;
    let e = imbed.embed_text("a cat on a laptop").await.unwrap();
    assert_eq!(e.provenance.step_kind, StepKind::Hash, "{:?}", e.provenance);
    assert!(e.provenance.degraded);
    let attempt = &e.provenance.attempts[0];
    assert_eq!(attempt.plugin.as_deref(), Some("minilm"));
    assert_eq!(
        attempt.kind,
        FailureKind::ModelNotFound,
        "{}",
        attempt.message
    );
    attempt.message.clone()
}

#[tokio::test]
async fn a_missing_weight_file_says_to_pull_the_model() {
    let dir = model_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let message = falls_back(dir.path()).await;
    assert!(
        message.contains("model not found: /model/model.safetensors is missing — run `imbed models pull all-minilm-l6-v2`"),
        "{message}"
    );
}

#[tokio::test]
async fn corrupt_weights_say_to_pull_again() {
    let weights = std::fs::read(minilm_dir().join("model.safetensors")).unwrap();
    let again = "— run `imbed models pull all-minilm-l6-v2` again";

    // Truncated: the last tensors are cut off.
    let dir = model_copy();
    replace(
        dir.path(),
        "model.safetensors",
        &weights[..weights.len() / 2],
    );
    let message = falls_back(dir.path()).await;
    assert!(
        message.contains("model files corrupt: /model/model.safetensors")
            && message.contains(again),
        "{message}"
    );
    assert!(message.contains("beyond"), "{message}");

    // Garbled header.
    let mut garbled = weights.clone();
    garbled[8..64].iter_mut().for_each(|b| *b = b'#');
    replace(dir.path(), "model.safetensors", &garbled);
    let message = falls_back(dir.path()).await;
    assert!(
        message.contains("model files corrupt")
            && message.contains("not valid JSON")
            && message.contains(again),
        "{message}"
    );

    // Weights that do not fit the config: the config asks for wider layers.
    replace(dir.path(), "model.safetensors", &weights);
    let config = std::fs::read_to_string(minilm_dir().join("config.json")).unwrap();
    let wider = config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 2048");
    assert_ne!(config, wider);
    replace(dir.path(), "config.json", wider.as_bytes());
    let message = falls_back(dir.path()).await;
    assert!(
        message.contains("model files corrupt")
            && message.contains("shape mismatch")
            && message.contains(again),
        "{message}"
    );
}

#[tokio::test]
async fn files_outside_the_model_dir_are_out_of_reach() {
    // A link that leads out of the granted folder, to the very file the plugin needs: the
    // sandbox does not follow it, so the plugin cannot read the file and the chain moves on.
    let dir = model_copy();
    let outside: PathBuf = minilm_dir().join("config.json").canonicalize().unwrap();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("config.json")).unwrap();
    assert!(
        dir.path().join("config.json").is_file(),
        "the link works outside the sandbox"
    );
    let message = falls_back(dir.path()).await;
    assert!(message.contains("/model/config.json"), "{message}");
    assert!(
        !message.contains(&outside.display().to_string()),
        "the host path leaked: {message}"
    );
}

/// The graph path natively: the plugin's own tokenising, mean pooling and normalisation around
/// the `text.onnx` scripts/setup converted from the same weights (scripts/onnx/minilm.py), run by
/// Python onnxruntime (the release the host loads), against sentence-transformers and the candle
/// path, in one space.
#[test]
fn the_converted_graph_matches_sentence_transformers_and_candle_in_one_space() {
    use imbed_minilm::model::{ModelDir, SentenceEmbedder, REGISTRY_NAME};
    use imbed_tests::onnx::PythonGraph;

    let dir = minilm_dir();
    let graph = dir.join("text.onnx");
    assert!(
        graph.is_file(),
        "{} is missing: run scripts/setup --test",
        graph.display()
    );
    let model_dir = ModelDir::open(&dir, REGISTRY_NAME).unwrap();
    let candle = SentenceEmbedder::load(&model_dir).unwrap();
    let onnx = SentenceEmbedder::with_graph(&model_dir, PythonGraph::new(&graph)).unwrap();
    assert_eq!((candle.path(), onnx.path()), ("candle", "graph"));
    assert_eq!(onnx.space_id(), expected_space());
    assert_eq!(onnx.space_id(), candle.space_id());
    assert_eq!(onnx.dimensions(), 384);

    let reference = reference();
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    // One call: texts of different lengths (past 256 pieces too) in padded batches.
    let by_graph = onnx.embed(&texts);
    let by_candle = candle.embed(&texts);
    for ((item, g), c) in items.iter().zip(by_graph).zip(by_candle) {
        let (g, c) = (g.unwrap(), c.unwrap());
        let want: Vec<f32> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let text: String = item["text"].as_str().unwrap().chars().take(30).collect();
        assert!(
            cosine(&g, &want) >= 0.9999,
            "{text:?}: {}",
            cosine(&g, &want)
        );
        assert!(
            cosine(&g, &c) >= 0.9999,
            "{text:?}: graph vs candle {}",
            cosine(&g, &c)
        );
    }
    // Bad input is still the plugin's business, per item.
    assert!(onnx.embed(&["", "ok"])[0].is_err());
}
