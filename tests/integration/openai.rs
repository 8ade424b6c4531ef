//! The OpenAI-compatible plugin end to end: the real component, the host, and the OpenAI stand-in
//! over 127.0.0.1; and the stand-in itself checked against the official Python client.

use std::time::Duration;

use imbed_tests::images;
use imbed_tests::openai::{OpenAiStandIn, Route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_accepts_the_stand_in() {
    let server = OpenAiStandIn::builder().api_key("sk-standin-key").start();
    server.rate_limit_next(1, Some(Duration::from_millis(50)));
    let dir = tempfile::tempdir().unwrap();
    let png = images::png(40, 30, 1);
    let path = dir.path().join("image.png");
    std::fs::write(&path, &png).unwrap();
    let expected = OpenAiStandIn::expected_description(&png, "Describe this image.").unwrap();
    let script = imbed_tests::repo_root().join("tests/clients/check_openai_standin.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(server.base_url())
        .arg("sk-standin-key")
        .arg(&path)
        .arg(&expected)
        .output()
        .await
        .expect("python3 runs (scripts/setup --test installs the openai client)");
    assert!(
        out.status.success(),
        "the openai client failed against the stand-in (run scripts/setup --test to install it):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The client waited out the 429 and sent the same request again.
    let statuses: Vec<Option<u16>> = server.requests_to(Route::Embeddings).iter().take(2).map(|r| r.status).collect();
    assert_eq!(statuses, [Some(429), Some(200)]);
    let retried = &server.requests_to(Route::Embeddings)[1];
    assert_eq!(retried.bearer(), Some("sk-standin-key"));
}
