//! The hash plugin through the real host.

use imbed::{ImageRequest, ImageSource, Imbed};
use imbed_tests::{cosine, images, PluginSpec, TestConfig};

async fn hash_imbed(dims: Option<u32>, cache: Option<&std::path::Path>) -> Imbed {
    let mut spec = PluginSpec::hash();
    if let Some(d) = dims {
        spec = spec.setting_raw("dimensions", &d.to_string());
    }
    let mut cfg = TestConfig::new().plugin("hash", spec).hash("hash");
    if let Some(c) = cache {
        cfg = cfg.cache_dir(c);
    }
    Imbed::new(cfg.build()).await.unwrap()
}

async fn image_vec(imbed: &Imbed, bytes: Vec<u8>) -> Vec<f32> {
    imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(bytes)))
        .await
        .unwrap()
        .vector
}

#[tokio::test]
async fn deterministic_across_engines_and_caches() {
    let a_cache = tempfile::tempdir().unwrap();
    let b_cache = tempfile::tempdir().unwrap();
    let a = hash_imbed(None, Some(a_cache.path())).await;
    let b = hash_imbed(None, Some(b_cache.path())).await;
    let png = images::png(100, 80, 3);
    assert_eq!(image_vec(&a, png.clone()).await, image_vec(&b, png).await);
    let ta = a.embed_text("the same words").await.unwrap();
    let tb = b.embed_text("the same words").await.unwrap();
    assert_eq!(ta.vector, tb.vector);
    assert_eq!(ta.provenance.space, "imbed-hash/text@v1:256");
    // A fixed value guards against silent algorithm changes: bump ALGORITHM_VERSION with it.
    let sum: f32 = ta
        .vector
        .iter()
        .enumerate()
        .map(|(i, x)| x * (i as f32 + 1.0))
        .sum();
    assert!(
        (sum - SIGNATURE).abs() < 1e-3,
        "text signature changed: {sum}"
    );
}

/// Weighted sum of the vector of "the same words" under algorithm v1, 256 dimensions.
const SIGNATURE: f32 = 143.78232;

#[tokio::test]
async fn similar_texts_are_closer_than_unrelated_ones() {
    let imbed = hash_imbed(None, None).await;
    let t = |s: &'static str| {
        let imbed = imbed.clone();
        async move { imbed.embed_text(s).await.unwrap().vector }
    };
    let cat = t("a cat sleeping on a laptop keyboard").await;
    let cats = t("cats sleeping on laptop keyboards").await;
    let typo = t("a cat sleping on a labtop keyboard").await;
    let other = t("stock market report for the third quarter").await;
    assert!(cosine(&cat, &cats) > cosine(&cat, &other) + 0.3);
    assert!(cosine(&cat, &typo) > cosine(&cat, &other) + 0.3);
    assert!(cosine(&cat, &other).abs() < 0.3);
}

#[tokio::test]
async fn near_duplicate_images_are_closer_than_unrelated_ones() {
    let imbed = hash_imbed(None, None).await;
    for seed in 0..4 {
        let original = images::picture(320, 240, seed);
        let resized =
            image::imageops::resize(&original, 200, 150, image::imageops::FilterType::Triangle);
        let mut brighter = original.clone();
        brighter
            .pixels_mut()
            .for_each(|p| p.0.iter_mut().for_each(|c| *c = c.saturating_add(12)));
        let a = image_vec(&imbed, images::png_of(&original)).await;
        let near = [
            image_vec(&imbed, images::jpeg_of(&original, 60)).await,
            image_vec(&imbed, images::png_of(&resized)).await,
            image_vec(&imbed, images::png_of(&brighter)).await,
        ];
        for other_seed in (0..4).filter(|s| *s != seed) {
            let unrelated = image_vec(&imbed, images::png(320, 240, other_seed)).await;
            let far = cosine(&a, &unrelated);
            for (i, n) in near.iter().enumerate() {
                let close = cosine(&a, n);
                assert!(
                    close > 0.9,
                    "seed {seed} variant {i}: near-duplicate cosine {close}"
                );
                assert!(
                    close > far + 0.3,
                    "seed {seed} variant {i}: {close} vs unrelated {other_seed}: {far}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_dimension_setting_is_honoured_and_named_in_the_space() {
    let imbed = hash_imbed(Some(64), None).await;
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            16, 16, 0,
        ))))
        .await
        .unwrap();
    assert_eq!(e.vector.len(), 64);
    assert_eq!(e.provenance.space, "imbed-hash/image@v1:64");
}
