//! The CLIP plugin's fixtures (tests/fixtures/clip, made by `make_fixtures.py` with transformers):
//! a tiny random-weight CLIP with the real CLIP tokenizer, its reference embeddings, and model
//! folders assembled from it the way `imbed models pull` lays them out.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::repo_root;

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/clip")
}

/// reference.json: per image and per text, transformers' embedding (and token ids).
pub fn reference() -> Value {
    let path = fixtures().join("reference.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reference.json is committed"))
        .expect("reference.json parses")
}

/// A JSON array of numbers as floats.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// The preprocessed pixels of `reference()["pixels_image"]`, 3x224x224, channel-first.
pub fn reference_pixels() -> Vec<f32> {
    let bytes =
        std::fs::read(fixtures().join("pixel_values.f32")).expect("pixel_values.f32 is committed");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Which weights a model folder gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// model/model.safetensors as saved by transformers.
    F32,
    /// model.f16.safetensors: the same tensors in f16.
    F16,
}

/// A writable copy of the tiny model: config, tokenizer, preprocessor config and the chosen
/// weights as `model.safetensors`. With `manifest`, an `imbed-model.json` naming the model as
/// `imbed models pull/import` would write it.
pub fn model_dir(weights: Weights, manifest: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = fixtures().join("model");
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy fixture");
    }
    let w = match weights {
        Weights::F32 => src.join("model.safetensors"),
        Weights::F16 => fixtures().join("model.f16.safetensors"),
    };
    std::fs::copy(w, dir.path().join("model.safetensors")).expect("copy weights");
    if let Some(name) = manifest {
        let files: serde_json::Map<String, Value> = [
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "preprocessor_config.json",
        ]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                Value::String(sha256_hex(&dir.path().join(f))),
            )
        })
        .collect();
        let m = serde_json::json!({ "name": name, "files": files, "source": "import:tests/fixtures/clip" });
        std::fs::write(dir.path().join("imbed-model.json"), m.to_string()).expect("write manifest");
    }
    dir
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read file");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
