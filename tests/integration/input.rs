//! Bad input: each a clear error, never a panic, and nothing reaches a plugin.

use std::time::{Duration, Instant};

use image::ImageFormat;
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
async fn a_file_cut_short_is_refused_in_every_format_and_trailing_bytes_are_fine() {
    let img = images::picture(96, 64, 1);
    let imbed = Imbed::new(config().build()).await.unwrap();
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Bmp,
    ] {
        let whole = images::encode(&img, format);
        // A download cut at two thirds: the JPEG decoder alone would paint the rest grey.
        let cut = whole[..whole.len() * 2 / 3].to_vec();
        let e = input_error(
            imbed
                .embed_image(ImageRequest::new(ImageSource::Bytes(cut)))
                .await,
        );
        assert!(matches!(e, InputError::Truncated { .. }), "{format:?}: {e}");
        assert!(
            e.to_string()
                .contains("truncated: the file ends before the image data does"),
            "{format:?}: {e}"
        );
        let mut tail = whole.clone();
        tail.extend_from_slice(b"-- bytes some tool appended after the image --");
        let ok = imbed
            .embed_image(ImageRequest::new(ImageSource::Bytes(tail)))
            .await;
        assert!(ok.is_ok(), "{format:?} with trailing bytes: {:?}", ok.err());
    }
}

/// Every EXIF orientation of one picture: the pixels stored turned as a camera stores them,
/// the tag saying how to turn them back.
fn all_orientations(upright: &image::RgbImage, format: ImageFormat) -> Vec<Vec<u8>> {
    (1..=8)
        .map(|o| {
            let stored = images::stored_for_orientation(upright, o);
            match format {
                ImageFormat::Png => images::png_with_orientation(&images::png_of(&stored), o),
                ImageFormat::Jpeg => {
                    images::jpeg_with_orientation(&images::jpeg_of(&stored, 95), o)
                }
                _ => images::webp_with_orientation(&stored, o),
            }
        })
        .collect()
}

async fn hash_chain() -> Imbed {
    let config = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .build();
    Imbed::new(config).await.unwrap()
}

#[tokio::test]
async fn every_exif_orientation_reaches_plugins_upright() {
    // 64x40, not symmetric in any direction, so every wrong turn shows.
    let upright = images::picture(64, 40, 3);
    let imbed = hash_chain().await;
    for format in [ImageFormat::Png, ImageFormat::WebP] {
        let mut vectors = Vec::new();
        for (i, bytes) in all_orientations(&upright, format).into_iter().enumerate() {
            let o = i + 1;
            // What plugins receive: upright pixels, exactly (both formats are lossless).
            let valid = imbed::input::validate(bytes.clone(), "o", &Default::default()).unwrap();
            assert_eq!(
                (valid.width, valid.height),
                (64, 40),
                "{format:?} orientation {o}"
            );
            let seen = image::load_from_memory(&valid.data).unwrap().to_rgb8();
            assert!(
                seen == upright,
                "{format:?} orientation {o}: the plugin sees other pixels"
            );
            let e = imbed
                .embed_image(ImageRequest::new(ImageSource::Bytes(bytes)))
                .await
                .unwrap();
            vectors.push(e.vector);
        }
        for (i, v) in vectors.iter().enumerate() {
            assert_eq!(
                v,
                &vectors[0],
                "{format:?}: orientation {} hashes differently",
                i + 1
            );
        }
    }
}

#[tokio::test]
async fn every_exif_orientation_of_a_jpeg_gives_the_same_picture() {
    // JPEG is lossy: a turned copy decodes to nearly, not exactly, the same pixels, so the
    // check is closeness, measured against what ignoring the tag would give.
    let upright = images::picture(64, 48, 3);
    let imbed = hash_chain().await;
    let files = all_orientations(&upright, ImageFormat::Jpeg);
    let mut vectors = Vec::new();
    for (i, bytes) in files.iter().enumerate() {
        let valid = imbed::input::validate(bytes.clone(), "o", &Default::default()).unwrap();
        assert_eq!(
            (valid.width, valid.height),
            (64, 48),
            "orientation {}",
            i + 1
        );
        let seen = image::load_from_memory(&valid.data).unwrap().to_rgb8();
        let diff: f64 = seen
            .as_raw()
            .iter()
            .zip(upright.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / seen.as_raw().len() as f64;
        assert!(
            diff < 4.0,
            "orientation {}: mean pixel difference {diff}",
            i + 1
        );
        let e = imbed
            .embed_image(ImageRequest::new(ImageSource::Bytes(bytes.clone())))
            .await
            .unwrap();
        vectors.push(e.vector);
    }
    // The same stored pixels without the tag: what every plugin saw before.
    let untagged = images::jpeg_of(&images::stored_for_orientation(&upright, 6), 95);
    let sideways = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(untagged)))
        .await
        .unwrap()
        .vector;
    let unturned = imbed_tests::cosine(&sideways, &vectors[0]);
    for (i, v) in vectors.iter().enumerate() {
        let c = imbed_tests::cosine(v, &vectors[0]);
        assert!(
            c > 0.995 && c > unturned,
            "orientation {}: cosine {c} with the upright file (ignoring the tag: {unturned})",
            i + 1
        );
    }
}

#[tokio::test]
async fn a_device_is_refused_at_once_and_nothing_is_read() {
    let imbed = Imbed::new(config().build()).await.unwrap();
    // A guard against reading forever, not a speed target: the refusal comes before any read.
    let started = Instant::now();
    let e = input_error(
        imbed
            .embed_image(ImageRequest::new(ImageSource::Path("/dev/zero".into())))
            .await,
    );
    assert!(matches!(e, InputError::NotAFile { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "cannot read /dev/zero: it is a character device, not an image file; give a file, a pipe, a URL or `-` for stdin"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A named pipe, and a writer that holds it open, sends `bytes` and then, unless `close`,
/// never closes it (until the test ends).
fn fifo_with_writer(
    dir: &std::path::Path,
    bytes: Vec<u8>,
    close: bool,
) -> (std::path::PathBuf, std::sync::mpsc::Sender<()>) {
    let path = dir.join("pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let writer_path = path.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        // Opening for writing waits for the reader.
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        let _ = pipe.write_all(&bytes);
        if !close {
            let _ = wait.recv();
        }
    });
    (path, done)
}

#[tokio::test]
async fn a_pipe_is_read_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (pipe, _done) = fifo_with_writer(dir.path(), images::png(30, 20, 2), true);
    let e = embed(config(), ImageSource::Path(pipe)).await.unwrap();
    assert!(e.provenance.description.unwrap().text.contains("30 by 20"));
}

#[tokio::test]
async fn a_pipe_whose_writer_never_finishes_ends_at_the_download_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let png = images::png(30, 20, 2);
    let (pipe, done) = fifo_with_writer(dir.path(), png[..png.len() / 2].to_vec(), false);
    let hasty = Imbed::new(config().input("download_timeout_ms", "500").build())
        .await
        .unwrap();
    let started = Instant::now();
    let e = input_error(
        hasty
            .embed_image(ImageRequest::new(ImageSource::Path(pipe)))
            .await,
    );
    assert!(
        e.to_string().contains("the pipe did not end within 500 ms"),
        "{e}"
    );
    // Without the deadline this would wait for the writer, which waits for the test.
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(done);
}

#[tokio::test]
async fn a_pipe_is_read_only_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (pipe, done) = fifo_with_writer(dir.path(), vec![0u8; 1 << 20], false);
    let small = config().input("max_bytes", "100000");
    let e = input_error(embed(small, ImageSource::Path(pipe)).await);
    assert!(
        matches!(e, InputError::TooManyBytes { limit: 100000, .. }),
        "{e}"
    );
    drop(done);
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
