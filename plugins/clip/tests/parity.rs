//! Native parity with the transformers reference (tests/fixtures/clip, made by make_fixtures.py):
//! the same code the component runs, checked quickly without the host. The host-level tests are
//! in tests/integration/clip.rs.

use std::path::{Path, PathBuf};

use imbed_clip::preprocess::{self, Resample};
use imbed_clip::Clip;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn image(file: &str) -> image::DynamicImage {
    image::open(fixtures().join("images").join(file)).unwrap()
}

#[test]
fn preprocessing_is_bit_identical_to_pillow() {
    let r = reference();
    let file = r["pixels_image"].as_str().unwrap();
    let bytes = std::fs::read(fixtures().join("pixel_values.f32")).unwrap();
    let expected: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let p = preprocess::Preprocessor::clip(224);
    let ours = p.pixel_values(&image(file));
    assert_eq!(ours.len(), expected.len());
    let diff = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(diff, 0.0, "max difference {diff}");
}

#[test]
fn image_crates_catmull_rom_is_not_pillows_bicubic() {
    // Why preprocess.rs reimplements Pillow: the `image` crate's CatmullRom is the same kernel
    // but rounds differently; measure how far it lands from Pillow's output.
    let rgb = image("landscape_320x240.png").to_rgb8();
    let pil = preprocess::resize(&rgb, 298, 224, Resample::Bicubic);
    let cr = image::imageops::resize(&rgb, 298, 224, image::imageops::FilterType::CatmullRom);
    let diffs: Vec<i32> = pil
        .as_raw()
        .iter()
        .zip(cr.as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .collect();
    let max = diffs.iter().max().copied().unwrap_or(0);
    let differing = diffs.iter().filter(|d| **d > 0).count() as f64 / diffs.len() as f64;
    eprintln!(
        "image CatmullRom vs Pillow bicubic: max {max} levels, {:.1}% of values differ",
        differing * 100.0
    );
    assert!(max > 0);
}

fn check_model(clip: &Clip, min_cos: f32) {
    let r = reference();
    for item in r["images"].as_array().unwrap() {
        let img = image(item["file"].as_str().unwrap());
        let v = clip.embed_images(&[&img]).unwrap().remove(0);
        let c = cosine(&v, &floats(&item["embedding"]));
        let miss = cosine(&v, &floats(&item["bilinear_embedding"]));
        eprintln!(
            "{}: cosine {c:.7} (bilinear near-miss {miss:.5})",
            item["file"]
        );
        assert!(c >= min_cos, "{}: cosine {c}", item["file"]);
    }
    let texts: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    let batch = clip.embed_texts(&texts).unwrap();
    for (item, v) in r["texts"].as_array().unwrap().iter().zip(batch) {
        let ids: Vec<u32> = item["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(clip.token_ids(item["text"].as_str().unwrap()).unwrap(), ids);
        let c = cosine(&v.unwrap(), &floats(&item["embedding"]));
        eprintln!(
            "{:?}: cosine {c:.7}",
            &item["text"].as_str().unwrap()[..10.min(item["text"].as_str().unwrap().len())]
        );
        assert!(c >= min_cos, "{}: cosine {c}", item["text"]);
    }
}

#[test]
fn f32_model_matches_transformers() {
    let clip = Clip::load(fixtures().join("model"), "clip-tiny-random").unwrap();
    assert_eq!(clip.info().dimensions, 16);
    assert!(
        clip.info().space_id.starts_with("clip/clip-tiny-random@"),
        "{:?}",
        clip.info()
    );
    check_model(&clip, 0.9999);
}

#[test]
fn f16_weights_load_and_match() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(fixtures().join("model").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("model.f16.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let clip = Clip::load(dir.path(), "clip-tiny-random").unwrap();
    check_model(&clip, 0.999);
}
