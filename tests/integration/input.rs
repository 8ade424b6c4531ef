//! Bad input: each a clear error, never a panic, and nothing reaches a plugin.

use std::time::{Duration, Instant};

use imbed::{Error, ImageRequest, ImageSource, Imbed, InputError};
use imbed_tests::{images, PluginSpec, Reply, TestConfig, TestServer};

fn config() -> TestConfig {
    TestConfig::new()
        .plugin("vision", PluginSpec::misbehave("ok"))
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("vision", "hash")
}

async fn embed(config: TestConfig, source: ImageSource) -> Result<imbed::Embedding, Error> {
    let imbed = Imbed::new(config.build()).await.unwrap();
    imbed.embed_image(ImageRequest::new(source)).await
}

#[track_caller]
fn input_error(result: Result<imbed::Embedding, Error>) -> InputError {
    match result {
        Err(Error::Input(e)) => e,
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_empty_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    let e = input_error(embed(config(), ImageSource::Path(path.clone())).await);
    assert!(matches!(e, InputError::Empty(_)));
    assert_eq!(
        e.to_string(),
        format!("the image {} is empty (0 bytes)", path.display())
    );
}

#[tokio::test]
async fn a_missing_file_and_a_directory_are_read_errors() {
    let e = input_error(embed(config(), ImageSource::Path("/nonexistent/cat.png".into())).await);
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/cat.png"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let e = input_error(embed(config(), ImageSource::Path(dir.path().into())).await);
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[tokio::test]
async fn a_truncated_png_is_corrupt() {
    let mut bytes = images::png(128, 128, 1);
    bytes.truncate(bytes.len() * 2 / 3);
    let e = input_error(embed(config(), ImageSource::Bytes(bytes)).await);
    assert!(matches!(e, InputError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("PNG image <bytes> is truncated or corrupt"),
        "{e}"
    );
}

#[tokio::test]
async fn text_is_not_an_image() {
    let e = input_error(embed(config(), ImageSource::Bytes(b"just some words\n".to_vec())).await);
    assert!(
        e.to_string()
            .contains("not an image imbed can read (it looks like text)"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_base64_is_named() {
    let e = input_error(embed(config(), ImageSource::Base64("%%% not base64 %%%".into())).await);
    assert!(matches!(e, InputError::Base64(_)), "{e}");
}

#[tokio::test]
async fn base64_and_data_uris_work() {
    use base64::Engine;
    let png = images::png(10, 6, 2);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let e = embed(
        config(),
        ImageSource::Base64(format!("data:image/png;base64,{b64}")),
    )
    .await
    .unwrap();
    assert!(e
        .provenance
        .description
        .unwrap()
        .text
        .contains("10 by 6 pixels"));
    let e = embed(config(), ImageSource::Base64(b64)).await.unwrap();
    assert!(e
        .provenance
        .description
        .unwrap()
        .text
        .contains("10 by 6 pixels"));
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_from_its_header() {
    let started = Instant::now();
    let e = input_error(
        embed(
            config(),
            ImageSource::Bytes(images::huge_png_header(100_000, 100_000)),
        )
        .await,
    );
    assert!(matches!(e, InputError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("100000x100000 pixels"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = input_error(
        embed(
            config(),
            ImageSource::Bytes(images::huge_png_header(20_000, 20_000)),
        )
        .await,
    );
    assert!(
        e.to_string().contains("over the limit of 50000000 pixels"),
        "{e}"
    );
}

#[tokio::test]
async fn other_formats_reach_plugins_as_png() {
    let img = images::picture(12, 9, 0);
    let mut bmp = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bmp), image::ImageFormat::Bmp)
        .unwrap();
    let e = embed(config(), ImageSource::Bytes(bmp)).await.unwrap();
    assert_eq!(
        e.provenance.description.unwrap().text,
        "a image/png picture of 12 by 9 pixels"
    );
    let jpeg = images::jpeg_of(&img, 90);
    let e = embed(config(), ImageSource::Bytes(jpeg)).await.unwrap();
    assert_eq!(
        e.provenance.description.unwrap().text,
        "a image/jpeg picture of 12 by 9 pixels"
    );
}

#[tokio::test]
async fn urls_are_downloaded_with_a_size_cap_and_a_deadline() {
    let server = TestServer::start();
    server
        .route("/cat.png", Reply::ok("image/png", images::png(20, 20, 1)))
        .route(
            "/slow.png",
            Reply::ok("image/png", images::png(20, 20, 1)).delayed(Duration::from_secs(3)),
        )
        .route(
            "/page",
            Reply::ok("text/html", "<!doctype html><html></html>"),
        );
    let e = embed(config(), ImageSource::Url(server.url("/cat.png")))
        .await
        .unwrap();
    assert!(e.provenance.description.unwrap().text.contains("20 by 20"));

    let e = input_error(embed(config(), ImageSource::Url(server.url("/missing.png"))).await);
    assert!(e.to_string().contains("the server answered 404"), "{e}");

    let e = input_error(embed(config(), ImageSource::Url(server.url("/page"))).await);
    assert!(e.to_string().contains("HTML page"), "{e}");

    let small = config().input("max_bytes", "100");
    let e = input_error(embed(small, ImageSource::Url(server.url("/cat.png"))).await);
    assert!(
        matches!(e, InputError::TooManyBytes { limit: 100, .. }),
        "{e}"
    );

    let hasty = config().input("download_timeout_ms", "300");
    let started = Instant::now();
    let e = input_error(embed(hasty, ImageSource::Url(server.url("/slow.png"))).await);
    assert!(
        e.to_string().contains("no complete answer within 300 ms"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let e = input_error(embed(config(), ImageSource::Url("file:///etc/passwd".into())).await);
    assert!(e.to_string().contains("use http or https"), "{e}");
}
