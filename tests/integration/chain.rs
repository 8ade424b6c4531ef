use imbed::{DescriptionSource, Error, FailureKind, ImageRequest, ImageSource, Imbed, StepKind};
use imbed_tests::{images, PluginSpec, TestConfig};

use crate::{assert_unit, embed_png};

#[tokio::test]
async fn falls_through_to_hash_and_records_why() {
    let config = TestConfig::new()
        .plugin("down", PluginSpec::misbehave("unavailable"))
        .plugin("hash", PluginSpec::hash())
        .image_embed("down")
        .hash("hash")
        .build();
    let e = embed_png(config, None).await.unwrap();
    let p = &e.provenance;
    assert_eq!((p.step, p.step_kind, p.degraded), (1, StepKind::Hash, true));
    assert_eq!(p.plugin.key, "hash");
    assert_eq!(p.plugin.name, "hash");
    assert_eq!(p.model, "hash-image-v1");
    assert_eq!(p.space, "imbed-hash/image@v1:256");
    assert_eq!((p.dimensions, e.vector.len()), (256, 256));
    assert_eq!(p.attempts.len(), 1);
    assert_eq!(p.attempts[0].kind, FailureKind::Unavailable);
    assert_eq!(p.attempts[0].plugin.as_deref(), Some("down"));
    assert!(
        p.attempts[0].message.contains("down (on purpose)"),
        "{}",
        p.attempts[0].message
    );
    assert_unit(&e.vector);
}

#[tokio::test]
async fn the_first_step_answers_undegraded() {
    let config = TestConfig::new()
        .plugin("good", PluginSpec::misbehave("ok"))
        .plugin("hash", PluginSpec::hash())
        .image_embed("good")
        .hash("hash")
        .build();
    let e = embed_png(config, None).await.unwrap();
    assert_eq!((e.provenance.step, e.provenance.degraded), (0, false));
    assert!(e.provenance.attempts.is_empty());
    assert_eq!(e.provenance.model, "misbehave-ok");
    assert_eq!(e.provenance.space, "test/misbehave:8");
    assert_unit(&e.vector);
}

#[tokio::test]
async fn describe_then_embed_keeps_the_description_and_text_lands_in_the_same_space() {
    let config = TestConfig::new()
        .plugin("vision", PluginSpec::misbehave("ok"))
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("vision", "hash")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            64, 48, 1,
        ))))
        .await
        .unwrap();
    let d = e.provenance.description.as_ref().expect("a description");
    assert_eq!(d.source, DescriptionSource::Model);
    assert_eq!(d.text, "a image/png picture of 64 by 48 pixels");
    assert_eq!(d.model.as_deref(), Some("misbehave-vision"));
    assert_eq!(d.plugin.as_ref().unwrap().key, "vision");
    assert_eq!(e.provenance.space, "imbed-hash/text@v1:256");

    let q = imbed
        .embed_text("a picture of 64 by 48 pixels")
        .await
        .unwrap();
    assert_eq!(q.provenance.space, e.provenance.space);
    assert_eq!(
        q.provenance.description.as_ref().unwrap().source,
        DescriptionSource::Query
    );
    let unrelated = imbed
        .embed_text("quarterly earnings call transcript")
        .await
        .unwrap();
    assert!(q.similarity(&e).unwrap() > unrelated.similarity(&e).unwrap() + 0.2);
}

#[tokio::test]
async fn the_description_step_uses_the_callers_text_and_is_skipped_without_it() {
    let config = TestConfig::new()
        .plugin("down", PluginSpec::misbehave("unavailable"))
        .plugin("hash", PluginSpec::hash())
        .image_embed("down")
        .description("hash")
        .hash("hash")
        .build();
    let e = embed_png(config.clone(), Some("a red bicycle against a wall"))
        .await
        .unwrap();
    assert_eq!(
        (e.provenance.step, e.provenance.step_kind),
        (1, StepKind::Description)
    );
    let d = e.provenance.description.unwrap();
    assert_eq!(
        (d.source, d.text.as_str()),
        (DescriptionSource::Caller, "a red bicycle against a wall")
    );
    assert_eq!(e.provenance.space, "imbed-hash/text@v1:256");

    let e = embed_png(config, None).await.unwrap();
    assert_eq!(e.provenance.step, 2);
    let kinds: Vec<_> = e.provenance.attempts.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [FailureKind::Unavailable, FailureKind::NotApplicable]
    );
}

#[tokio::test]
async fn a_plugin_that_is_not_installed_is_skipped_with_the_reason() {
    let config = TestConfig::new()
        .plugin("ollama", PluginSpec::file("/nonexistent/ollama.wasm"))
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "ollama")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let status = imbed.plugins();
    let ollama = status.iter().find(|s| s.key == "ollama").unwrap();
    assert!(matches!(
        &ollama.health,
        imbed::PluginHealth::Failed {
            kind: FailureKind::NotInstalled,
            ..
        }
    ));
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(8, 8, 0))))
        .await
        .unwrap();
    assert_eq!(e.provenance.attempts[0].kind, FailureKind::NotInstalled);
    assert!(e.provenance.attempts[0]
        .message
        .contains("/nonexistent/ollama.wasm not found"));
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0garbage").unwrap();
    let config = TestConfig::new()
        .plugin("bogus", PluginSpec::file(&bogus))
        .plugin("hash", PluginSpec::hash())
        .image_embed("bogus")
        .hash("hash")
        .build();
    let e = embed_png(config, None).await.unwrap();
    assert_eq!(e.provenance.attempts[0].kind, FailureKind::NotInstalled);
    assert!(e.provenance.attempts[0]
        .message
        .contains("not a valid WebAssembly component"));
}

#[tokio::test]
async fn require_space_refuses_answers_from_other_spaces() {
    let base = TestConfig::new()
        .plugin(
            "other",
            PluginSpec::misbehave("ok").setting("space", "test/other:8"),
        )
        .plugin("hash", PluginSpec::hash())
        .image_embed("other")
        .hash("hash");
    let e = embed_png(
        base.clone()
            .require_space("imbed-hash/image@v1:256")
            .build(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(e.provenance.step, 1);
    assert_eq!(e.provenance.attempts[0].kind, FailureKind::SpaceMismatch);
    assert!(e.provenance.attempts[0].message.contains("test/other:8"));

    let err = embed_png(base.require_space("clip/vit-b-32").build(), None)
        .await
        .unwrap_err();
    match err {
        Error::Exhausted { attempts } => {
            assert_eq!(attempts.len(), 2);
            assert!(attempts
                .iter()
                .all(|a| a.kind == FailureKind::SpaceMismatch));
        }
        other => panic!("expected exhausted, got {other}"),
    }
}

#[tokio::test]
async fn vectors_from_different_spaces_are_never_compared() {
    let config = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let image = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            16, 16, 2,
        ))))
        .await
        .unwrap();
    let text = imbed.embed_text("a checkerboard").await.unwrap();
    assert_ne!(image.provenance.space, text.provenance.space);
    assert_eq!(image.similarity(&text), None);
    assert!(image.similarity(&image).unwrap() > 0.999);
}

#[tokio::test]
async fn when_every_step_fails_the_error_lists_each_attempt() {
    let config = TestConfig::new()
        .plugin("a", PluginSpec::misbehave("unavailable"))
        .plugin("b", PluginSpec::misbehave("model-not-found"))
        .image_embed("a")
        .image_embed("b")
        .build();
    let err = embed_png(config, None).await.unwrap_err();
    let text = err.to_string();
    match err {
        Error::Exhausted { attempts } => {
            let kinds: Vec<_> = attempts.iter().map(|a| (a.step, a.kind)).collect();
            assert_eq!(
                kinds,
                [
                    (0, FailureKind::Unavailable),
                    (1, FailureKind::ModelNotFound)
                ]
            );
        }
        other => panic!("expected exhausted, got {other}"),
    }
    assert!(
        text.contains("step 1 (image-embed, plugin \"b\"): model-not-found"),
        "{text}"
    );
}

#[tokio::test]
async fn embed_text_skips_image_only_steps_and_empty_text_is_a_usage_error() {
    let config = TestConfig::new()
        .plugin(
            "good",
            PluginSpec::misbehave("ok").setting("space", "test/img"),
        )
        .plugin("hash", PluginSpec::hash())
        .image_embed("good")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    // The misbehave plugin embeds text too, in the same space: step 0 answers.
    let e = imbed.embed_text("hello").await.unwrap();
    assert_eq!(e.provenance.step, 0);
    assert!(matches!(
        imbed.embed_text("   ").await,
        Err(Error::Usage(_))
    ));
}

#[tokio::test]
async fn many_images_embed_concurrently_in_order_with_per_item_errors() {
    use futures::StreamExt;
    let config = TestConfig::new()
        .plugin("hash", PluginSpec::hash().instances(2))
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let mut requests: Vec<ImageRequest> = (0..6)
        .map(|i| ImageRequest::new(ImageSource::Bytes(images::png(32, 32, i))))
        .collect();
    requests.insert(
        3,
        ImageRequest::new(ImageSource::Bytes(b"not an image".to_vec())),
    );
    let results: Vec<_> = imbed.embed_images(requests, 3).collect().await;
    assert_eq!(results.len(), 7);
    assert!(matches!(results[3], Err(Error::Input(_))));
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 6);
    // Same input order: the first and fifth pictures share a pattern (seed 0 and 4).
    assert!(ok[0].similarity(ok[4]).unwrap() > 0.99);
}

#[tokio::test]
async fn a_plugin_for_another_contract_version_is_refused_naming_both_versions() {
    let config = TestConfig::new()
        .plugin(
            "future",
            PluginSpec::file(imbed_tests::component("future-contract")),
        )
        .plugin("hash", PluginSpec::hash())
        .image_embed("future")
        .hash("hash")
        .build();
    let e = embed_png(config, None).await.unwrap();
    let a = &e.provenance.attempts[0];
    assert_eq!(a.kind, FailureKind::NotInstalled);
    assert!(
        a.message.contains("built for imbed:plugin@9.0.0")
            && a.message
                .contains("serves imbed:plugin@0.1.0 and imbed:plugin@0.2.0"),
        "{}",
        a.message
    );
}
