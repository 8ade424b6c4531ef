//! The CLIP plugin (candle inside the sandbox) through the real host, against transformers'
//! reference outputs for a tiny random-weight CLIP with the real CLIP tokenizer
//! (tests/fixtures/clip): image and text parity, f16 weights, one space for both, batches,
//! truncation, and what happens when the model files are missing, corrupt or out of reach.

use std::path::{Path, PathBuf};

use imbed::{Embedding, FailureKind, ImageRequest, ImageSource, Imbed, StepKind};
use imbed_tests::clip::{self, floats, model_dir, reference, Weights};
use imbed_tests::cosine;
use imbed_tests::{component, images, PluginSpec, TestConfig};

/// What the error messages must tell the user to run.
const PULL: &str = "imbed models pull clip-vit-base-patch32";

fn clip_spec(dir: &Path) -> PluginSpec {
    PluginSpec::file(component("clip"))
        .grant_model_dir(dir)
        .memory_mb(512)
        .timeout_ms(120_000)
}

/// CLIP for images (and the text side of queries), the hash plugin as the fallback.
async fn imbed_with(spec: PluginSpec) -> Imbed {
    let cfg = TestConfig::new()
        .plugin("clip", spec)
        .plugin("hash", PluginSpec::hash())
        .image_embed("clip")
        .hash("hash");
    Imbed::new(cfg.build()).await.expect("engine starts")
}

async fn embed_file(imbed: &Imbed, path: PathBuf) -> Embedding {
    imbed
        .embed_image(ImageRequest::new(ImageSource::Path(path)))
        .await
        .expect("an answer")
}

fn image_path(file: &str) -> PathBuf {
    clip::fixtures().join("images").join(file)
}

#[track_caller]
fn assert_from_clip(e: &Embedding, space: &str) {
    assert_eq!(
        e.provenance.plugin.key, "clip",
        "answered by {:?}",
        e.provenance
    );
    assert_eq!(e.provenance.space, space);
    assert_eq!(e.provenance.dimensions, 16);
    assert!(!e.provenance.degraded, "{:?}", e.provenance.attempts);
}

/// Every fixture image through the plugin, checked against transformers at `min_cos`; returns
/// the space they came in.
async fn check_images(imbed: &Imbed, space: &str, min_cos: f32) {
    let r = reference();
    let items = r["images"].as_array().unwrap();
    assert!(items.len() >= 5);
    for item in items {
        let file = item["file"].as_str().unwrap();
        let e = embed_file(imbed, image_path(file)).await;
        assert_from_clip(&e, space);
        let c = cosine(&e.vector, &floats(&item["embedding"]));
        assert!(c >= min_cos, "{file}: cosine {c} with transformers");
        // The fixture is sensitive enough to catch a wrong resize: bilinear instead of bicubic
        // lands far below the bar.
        let near_miss = cosine(&e.vector, &floats(&item["bilinear_embedding"]));
        assert!(
            near_miss < 0.9995,
            "{file}: the bilinear near-miss is at {near_miss}"
        );
    }
}

fn texts() -> Vec<String> {
    reference()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap().to_string())
        .collect()
}

/// All fixture texts in one batch, checked against transformers at `min_cos`.
async fn check_texts(imbed: &Imbed, space: &str, min_cos: f32) {
    let r = reference();
    let results = imbed.embed_texts(&texts()).await;
    for (item, result) in r["texts"].as_array().unwrap().iter().zip(results) {
        let e = result.expect("the text is embedded");
        assert_from_clip(&e, space);
        let c = cosine(&e.vector, &floats(&item["embedding"]));
        assert!(
            c >= min_cos,
            "{}: cosine {c} with transformers",
            item["text"]
        );
    }
}

#[tokio::test]
async fn images_and_texts_match_transformers_in_one_space() {
    let dir = model_dir(Weights::F32, Some("clip-tiny-random"));
    let rev = &clip::sha256_hex(&dir.path().join("model.safetensors"))[..12];
    let space = format!("clip/clip-tiny-random@{rev}");
    let imbed = imbed_with(clip_spec(dir.path())).await;
    check_images(&imbed, &space, 0.9999).await;
    check_texts(&imbed, &space, 0.9999).await;
    // A single query takes the same path as a batch and lands in the image space.
    let q = imbed.embed_text("a photo of a cat").await.unwrap();
    assert_from_clip(&q, &space);
    assert_eq!(q.provenance.model, "clip-tiny-random");
    let want = floats(&reference()["texts"][0]["embedding"]);
    assert!(cosine(&q.vector, &want) >= 0.9999);
}

#[tokio::test]
async fn without_a_manifest_the_revision_is_computed_from_the_weights() {
    // A folder the user pointed at by hand: no imbed-model.json. The plugin hashes the weights
    // itself; the model id is the configured name.
    let dir = model_dir(Weights::F32, None);
    let rev = &clip::sha256_hex(&dir.path().join("model.safetensors"))[..12];
    let imbed = imbed_with(clip_spec(dir.path()).setting("model", "my-clip")).await;
    let e = embed_file(&imbed, image_path("small_97x61.png")).await;
    assert_from_clip(&e, &format!("clip/my-clip@{rev}"));
    assert_eq!(e.provenance.model, "my-clip");
}

#[tokio::test]
async fn without_a_manifest_the_model_is_named_after_its_folder() {
    // A 16-dimensional test model in a folder the user named: not "clip-vit-base-patch32",
    // which the plugin used to report for any folder without a manifest.
    let files = model_dir(Weights::F32, None);
    let home = tempfile::tempdir().unwrap();
    let folder = home.path().join("tiny-test-clip");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(files.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    let rev = &clip::sha256_hex(&folder.join("model.safetensors"))[..12];
    let imbed = imbed_with(clip_spec(&folder)).await;
    let e = embed_file(&imbed, image_path("small_97x61.png")).await;
    assert_from_clip(&e, &format!("clip/tiny-test-clip@{rev}"));
    assert_eq!(e.provenance.model, "tiny-test-clip");
    let status = imbed
        .plugins()
        .into_iter()
        .find(|s| s.key == "clip")
        .unwrap();
    assert_eq!(
        status.model_name,
        Some(imbed::ModelName {
            name: "tiny-test-clip".into(),
            from: "folder"
        })
    );

    // `imbed plugins` says where the name came from.
    let cfg = TestConfig::new()
        .plugin("clip", clip_spec(&folder))
        .image_embed("clip")
        .write(home.path());
    let out = crate::cli::imbed(home.path())
        .args(["--config", cfg.to_str().unwrap(), "plugins"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "model:   tiny-test-clip (named after its folder: it has no imbed-model.json)"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn f16_weights_load_and_match_closely() {
    let dir = model_dir(Weights::F16, Some("clip-tiny-random"));
    let rev = &clip::sha256_hex(&dir.path().join("model.safetensors"))[..12];
    let space = format!("clip/clip-tiny-random@{rev}");
    // Other bytes, other revision: f16 vectors never share a space with the f32 ones.
    let f32_rev = &clip::sha256_hex(&clip::fixtures().join("model/model.safetensors"))[..12];
    assert_ne!(rev, f32_rev);
    let imbed = imbed_with(clip_spec(dir.path())).await;
    // The reference is the f32 model; rounding the weights to f16 costs a little.
    check_images(&imbed, &space, 0.999).await;
    check_texts(&imbed, &space, 0.999).await;
}

#[tokio::test]
async fn preprocessing_matches_the_reference_tensor() {
    // The plugin's preprocessing, natively (the same code the component runs), against
    // transformers' CLIPImageProcessor with Pillow: resize, crop, rescale and normalise agree to
    // the bit.
    let r = reference();
    let file = r["pixels_image"].as_str().unwrap();
    let img = image::open(image_path(file)).unwrap();
    let ours = imbed_clip::preprocess::Preprocessor::clip(224).pixel_values(&img);
    let want = clip::reference_pixels();
    assert_eq!(ours.len(), 3 * 224 * 224);
    let worst = ours
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(worst, 0.0, "largest difference from transformers: {worst}");
    // And the config file in the model folder says the same as the defaults.
    let cfg = std::fs::read(clip::fixtures().join("model/preprocessor_config.json")).unwrap();
    let from_file = imbed_clip::preprocess::Preprocessor::from_json(&cfg, 224).unwrap();
    assert_eq!(from_file, imbed_clip::preprocess::Preprocessor::clip(224));
}

#[tokio::test]
async fn texts_past_77_tokens_are_truncated_as_transformers_does() {
    let r = reference();
    let long = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["ids"].as_array().unwrap().len() == 77);
    let long = long.expect("the fixtures hold a text past 77 tokens");
    let text = long["text"].as_str().unwrap();
    let dir = model_dir(Weights::F32, Some("clip-tiny-random"));
    let imbed = imbed_with(clip_spec(dir.path())).await;
    let e = imbed.embed_text(text).await.unwrap();
    assert!(cosine(&e.vector, &floats(&long["embedding"])) >= 0.9999);
    // Whatever follows the 75th token is cut: more words change nothing.
    let longer = imbed
        .embed_text(&format!("{text} and then a completely different ending"))
        .await
        .unwrap();
    assert!(
        cosine(&e.vector, &longer.vector) > 0.999_999,
        "truncated texts differ"
    );
    // While cutting inside the window does: the text features are read at <|endoftext|>, so
    // truncating at fewer tokens than 77 would show.
    let half = imbed.embed_text(&text[..text.len() / 2]).await.unwrap();
    assert!(
        cosine(&e.vector, &half.vector) < 0.99,
        "{}",
        cosine(&e.vector, &half.vector)
    );
}

#[tokio::test]
async fn batches_match_single_calls_and_images_run_concurrently() {
    let dir = model_dir(Weights::F32, Some("clip-tiny-random"));
    let imbed = imbed_with(clip_spec(dir.path()).instances(2)).await;
    // Texts of different lengths in one plugin call are padded together: each must come out as
    // it does alone.
    let batch = imbed.embed_texts(&texts()).await;
    for (text, b) in texts().iter().zip(batch) {
        let alone = imbed.embed_text(text).await.unwrap();
        assert!(
            cosine(&alone.vector, &b.unwrap().vector) > 0.999_999,
            "{text}"
        );
    }
    // Images through two instances at once, in input order.
    use futures::StreamExt;
    let r = reference();
    let items = r["images"].as_array().unwrap();
    let requests: Vec<ImageRequest> = items
        .iter()
        .map(|i| ImageRequest::new(ImageSource::Path(image_path(i["file"].as_str().unwrap()))))
        .collect();
    let results: Vec<_> = imbed.embed_images(requests, 4).collect().await;
    for (item, e) in items.iter().zip(results) {
        let e = e.unwrap();
        assert_eq!(e.provenance.plugin.key, "clip");
        assert!(
            cosine(&e.vector, &floats(&item["embedding"])) >= 0.9999,
            "{}",
            item["file"]
        );
    }
}

#[tokio::test]
async fn jpeg_input_is_embedded() {
    // JPEG decoders may differ from Pillow's by a level here and there, so no parity bar: the
    // vector must still be close to the PNG original's.
    let dir = model_dir(Weights::F32, Some("clip-tiny-random"));
    let imbed = imbed_with(clip_spec(dir.path())).await;
    let img = image::open(image_path("landscape_320x240.png"))
        .unwrap()
        .to_rgb8();
    let jpeg = images::jpeg_of(&img, 95);
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(jpeg)))
        .await
        .unwrap();
    assert_eq!(e.provenance.plugin.key, "clip");
    let png = floats(&reference()["images"][0]["embedding"]);
    assert!(cosine(&e.vector, &png) > 0.95);
}

/// Embed an image and a text with the model folder `dir`; both must come from the hash step,
/// after a CLIP attempt that failed with `kind`. Returns the image attempt's message.
async fn falls_back(spec: PluginSpec, kind: FailureKind) -> String {
    let imbed = imbed_with(spec).await;
    let e = embed_file(&imbed, image_path("small_97x61.png")).await;
    assert_eq!(e.provenance.plugin.key, "hash", "{:?}", e.provenance);
    assert_eq!(e.provenance.step_kind, StepKind::Hash);
    assert!(e.provenance.degraded);
    let a = &e.provenance.attempts[0];
    assert_eq!(
        (a.plugin.as_deref(), a.kind),
        (Some("clip"), kind),
        "{}",
        a.message
    );
    let t = imbed.embed_text("a photo of a cat").await.unwrap();
    assert_eq!(t.provenance.plugin.key, "hash");
    assert_eq!(
        t.provenance.attempts[0].kind, kind,
        "{}",
        t.provenance.attempts[0].message
    );
    a.message.clone()
}

#[tokio::test]
async fn missing_weights_say_to_pull_the_model_and_the_chain_moves_on() {
    let dir = model_dir(Weights::F32, None);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let message = falls_back(clip_spec(dir.path()), FailureKind::ModelNotFound).await;
    assert!(
        message.contains("model not found") && message.contains("/model/model.safetensors"),
        "{message}"
    );
    assert!(message.contains(PULL), "{message}");
}

#[tokio::test]
async fn a_missing_model_folder_says_to_pull_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let message = falls_back(
        clip_spec(&dir.path().join("not-pulled")),
        FailureKind::ModelNotFound,
    )
    .await;
    // The host checks the grant before the plugin loads, and says how to fill or fix it.
    assert!(
        message.contains("not-pulled") && message.contains("imbed models pull"),
        "{message}"
    );
    assert!(
        message.contains("[plugins.clip.grants] model_dir"),
        "{message}"
    );
    // A folder named after a registry model names the exact command.
    let models = tempfile::tempdir().unwrap();
    let message = falls_back(
        clip_spec(&models.path().join("clip-vit-base-patch32")),
        FailureKind::ModelNotFound,
    )
    .await;
    assert!(message.contains(PULL), "{message}");
}

#[tokio::test]
async fn corrupt_weights_say_to_pull_again_and_the_chain_moves_on() {
    // Truncated, as an interrupted copy leaves it.
    let dir = model_dir(Weights::F32, None);
    let w = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let message = falls_back(clip_spec(dir.path()), FailureKind::ModelNotFound).await;
    assert!(
        message.contains("corrupt") && message.contains(PULL),
        "{message}"
    );

    // Garbage where the header should be.
    std::fs::write(&w, b"this is not a safetensors file at all").unwrap();
    let message = falls_back(clip_spec(dir.path()), FailureKind::ModelNotFound).await;
    assert!(
        message.contains("corrupt") && message.contains(PULL),
        "{message}"
    );

    // A well-formed file with other shapes than config.json describes.
    std::fs::copy(clip::fixtures().join("model/model.safetensors"), &w).unwrap();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let wider = config.replace("\"projection_dim\": 16", "\"projection_dim\": 32");
    assert_ne!(config, wider);
    std::fs::write(dir.path().join("config.json"), wider).unwrap();
    let message = falls_back(clip_spec(dir.path()), FailureKind::ModelNotFound).await;
    assert!(
        message.contains("corrupt") && message.contains(PULL),
        "{message}"
    );
}

#[tokio::test]
async fn the_plugin_sees_only_its_model_folder() {
    // The weights reached through a link out of the granted folder: fine outside the sandbox,
    // invisible inside it, so the plugin cannot read them and the chain moves on.
    let dir = model_dir(Weights::F32, None);
    let outside = clip::fixtures()
        .join("model/model.safetensors")
        .canonicalize()
        .unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("model.safetensors")).unwrap();
    assert!(
        dir.path().join("model.safetensors").is_file(),
        "the link works outside the sandbox"
    );
    let message = falls_back(clip_spec(dir.path()), FailureKind::ModelNotFound).await;
    assert!(
        message.contains("/model/model.safetensors") && message.contains(PULL),
        "{message}"
    );
    assert!(
        !message.contains(&outside.display().to_string()),
        "the host path leaked: {message}"
    );
}

/// The graph path natively: the plugin's own preprocessing, tokenising and normalisation around
/// `vision.onnx` and `text.onnx` converted from the fixture by scripts/onnx/clip.py, run by
/// Python onnxruntime (the release the host loads), against transformers and the candle path.
/// Both paths name one space: the weights', not the format's.
#[test]
fn converted_graphs_match_transformers_and_the_candle_path_in_one_space() {
    use imbed_clip::Clip;
    use imbed_tests::onnx::{convert_clip, PythonGraph};

    let dir = model_dir(Weights::F32, Some("clip-tiny-random"));
    let graphs = tempfile::tempdir().unwrap();
    convert_clip(dir.path(), graphs.path());
    let candle = Clip::load(dir.path(), "clip-tiny-random").unwrap();
    let onnx = Clip::with_graphs(
        dir.path(),
        "clip-tiny-random",
        PythonGraph::new(graphs.path().join("vision.onnx")),
        PythonGraph::new(graphs.path().join("text.onnx")),
    )
    .unwrap();
    assert_eq!((candle.path(), onnx.path()), ("candle", "graph"));
    assert_eq!(onnx.info(), candle.info());

    let r = reference();
    // Texts in one padded batch (lengths 3 to 77).
    let by_graph = onnx.embed_texts(&texts()).unwrap();
    let by_candle = candle.embed_texts(&texts()).unwrap();
    for ((item, g), c) in r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(by_graph)
        .zip(by_candle)
    {
        let (g, c) = (g.unwrap(), c.unwrap());
        let want = floats(&item["embedding"]);
        assert!(
            cosine(&g, &want) >= 0.9999,
            "{}: {}",
            item["text"],
            cosine(&g, &want)
        );
        assert!(
            cosine(&g, &c) >= 0.9999,
            "{}: graph vs candle {}",
            item["text"],
            cosine(&g, &c)
        );
    }
    // Every fixture image in one batch.
    let items = r["images"].as_array().unwrap();
    let decoded: Vec<image::DynamicImage> = items
        .iter()
        .map(|i| {
            let bytes = std::fs::read(image_path(i["file"].as_str().unwrap())).unwrap();
            Clip::decode(&bytes, "image/png").unwrap()
        })
        .collect();
    let refs: Vec<&image::DynamicImage> = decoded.iter().collect();
    let by_graph = onnx.embed_images(&refs).unwrap();
    let by_candle = candle.embed_images(&refs).unwrap();
    for ((item, g), c) in items.iter().zip(&by_graph).zip(&by_candle) {
        let want = floats(&item["embedding"]);
        let file = item["file"].as_str().unwrap();
        assert!(cosine(g, &want) >= 0.9999, "{file}: {}", cosine(g, &want));
        assert!(
            cosine(g, c) >= 0.9999,
            "{file}: graph vs candle {}",
            cosine(g, c)
        );
    }
}

/// A folder with the graphs but without the safetensors (`imbed models pull --format onnx`)
/// still names the weights' space, from the manifest's weights_sha256.
#[test]
fn a_folder_of_graphs_only_names_the_weights_space() {
    use imbed_clip::Clip;
    use imbed_tests::onnx::{convert_clip, PythonGraph};

    let dir = model_dir(Weights::F32, None);
    let weights = clip::sha256_hex(&dir.path().join("model.safetensors"));
    convert_clip(dir.path(), dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let graph = |name: &str| PythonGraph::new(dir.path().join(name));
    // Without a manifest nothing says which weights the graphs hold: refused, saying to pull.
    let err = Clip::with_graphs(
        dir.path(),
        "clip-tiny-random",
        graph("vision.onnx"),
        graph("text.onnx"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.safetensors is missing") && err.contains("imbed models pull"),
        "{err}"
    );
    let files: serde_json::Map<String, serde_json::Value> =
        ["vision.onnx", "text.onnx", "config.json", "tokenizer.json"]
            .iter()
            .map(|f| (f.to_string(), clip::sha256_hex(&dir.path().join(f)).into()))
            .collect();
    let m = serde_json::json!({"name": "clip-tiny-random", "files": files, "source": "test",
        "weights_sha256": weights, "converted": ["vision.onnx", "text.onnx"]});
    std::fs::write(dir.path().join("imbed-model.json"), m.to_string()).unwrap();
    let onnx =
        Clip::with_graphs(dir.path(), "x", graph("vision.onnx"), graph("text.onnx")).unwrap();
    assert_eq!(
        onnx.info().space_id,
        format!("clip/clip-tiny-random@{}", &weights[..12])
    );
    let v = onnx
        .embed_texts(&["a photo of a cat"])
        .unwrap()
        .remove(0)
        .unwrap();
    let want = floats(&reference()["texts"][0]["embedding"]);
    assert!(cosine(&v, &want) >= 0.9999);
}
