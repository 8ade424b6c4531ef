//! Each misbehaviour is contained: a clear reason in the attempts, and the next step answers.

use std::time::{Duration, Instant};

use imbed::{Embedding, FailureKind, ImageRequest, ImageSource, Imbed};
use imbed_tests::{images, ConnectionCounter, PluginSpec, Reply, TestServer};

/// Run one image through `bad` then the hash plugin; assert the hash plugin answered.
async fn contained(bad: PluginSpec) -> Embedding {
    let config = imbed_tests::TestConfig::new()
        .plugin("bad", bad)
        .plugin("hash", PluginSpec::hash())
        .image_embed("bad")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            24, 24, 3,
        ))))
        .await
        .unwrap();
    assert_eq!(
        e.provenance.plugin.key, "hash",
        "the hash step should have answered: {:?}",
        e.provenance
    );
    assert_eq!(e.provenance.attempts.len(), 1);
    e
}

#[track_caller]
fn reason(e: &Embedding, kind: FailureKind, needle: &str) {
    let a = &e.provenance.attempts[0];
    assert_eq!(a.kind, kind, "{}", a.message);
    assert!(
        a.message.contains(needle),
        "expected {needle:?} in {:?}",
        a.message
    );
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_the_deadline() {
    let started = Instant::now();
    let e = contained(PluginSpec::misbehave("loop").timeout_ms(300)).await;
    reason(&e, FailureKind::Timeout, "ran past its deadline of 300 ms");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_cap() {
    let e = contained(PluginSpec::misbehave("alloc").memory_mb(32)).await;
    reason(&e, FailureKind::MemoryExceeded, "memory cap of 32 MiB");
}

#[tokio::test]
async fn files_are_invisible_without_a_grant() {
    let e = contained(PluginSpec::misbehave("read-file")).await;
    reason(&e, FailureKind::Other, "reading /etc/passwd failed");
}

#[tokio::test]
async fn a_granted_model_dir_is_readable_and_read_only_and_nothing_else_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights.bin"), b"0123456789").unwrap();
    let config = imbed_tests::TestConfig::new()
        .plugin(
            "reader",
            PluginSpec::misbehave("read-file")
                .setting("path", "/model/weights.bin")
                .grant_model_dir(dir.path()),
        )
        .plugin(
            "snoop",
            PluginSpec::misbehave("read-file").grant_model_dir(dir.path()),
        )
        .plugin("hash", PluginSpec::hash())
        .image_embed("reader")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(8, 8, 1))))
        .await
        .unwrap();
    assert_eq!(e.provenance.plugin.key, "reader");

    let config = imbed_tests::TestConfig::new()
        .plugin(
            "snoop",
            PluginSpec::misbehave("read-file").grant_model_dir(dir.path()),
        )
        .plugin("hash", PluginSpec::hash())
        .image_embed("snoop")
        .hash("hash")
        .build();
    let e = crate::embed_png(config, None).await.unwrap();
    reason(&e, FailureKind::Other, "reading /etc/passwd failed");
}

#[tokio::test]
async fn a_missing_model_dir_is_model_not_found() {
    let e =
        contained(PluginSpec::misbehave("ok").grant_model_dir("/nonexistent/models/clip")).await;
    reason(&e, FailureKind::ModelNotFound, "imbed models pull");
}

#[tokio::test]
async fn environment_variables_are_invisible_without_a_grant() {
    let e = contained(PluginSpec::misbehave("env")).await;
    reason(
        &e,
        FailureKind::Other,
        "environment variable PATH is not visible",
    );

    let config = imbed_tests::TestConfig::new()
        .plugin("env", PluginSpec::misbehave("env").grant_env("PATH"))
        .image_embed("env")
        .build();
    let e = crate::embed_png(config, None).await.unwrap();
    assert_eq!(e.provenance.plugin.key, "env");
}

#[tokio::test]
async fn http_reaches_only_granted_origins() {
    let server = TestServer::start();
    server.route("/data", Reply::ok("text/plain", "hello"));
    let e = contained(PluginSpec::misbehave("http").setting("url", &server.url("/data"))).await;
    reason(
        &e,
        FailureKind::Unavailable,
        "is not granted to plugin \"bad\"",
    );
    assert_eq!(server.hits(), 0, "the server must not have been contacted");

    let config = imbed_tests::TestConfig::new()
        .plugin(
            "net",
            PluginSpec::misbehave("http")
                .setting("url", &server.url("/data"))
                .grant_http(&server.origin()),
        )
        .image_embed("net")
        .build();
    let e = crate::embed_png(config, None).await.unwrap();
    assert_eq!(e.provenance.plugin.key, "net");
    assert_eq!(server.hits(), 1);

    // Another port on the same host is another origin.
    let other = TestServer::start();
    let e = contained(
        PluginSpec::misbehave("http")
            .setting("url", &other.url("/data"))
            .grant_http(&server.origin()),
    )
    .await;
    reason(&e, FailureKind::Unavailable, "not granted");
    assert_eq!(other.hits(), 0);
}

#[tokio::test]
async fn raw_sockets_are_denied() {
    let counter = ConnectionCounter::start();
    let e = contained(PluginSpec::misbehave("socket").setting("addr", &counter.addr())).await;
    reason(&e, FailureKind::Other, "connecting to");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counter.count(), 0);

    // Granting another address does not open this one.
    let e = contained(
        PluginSpec::misbehave("socket")
            .setting("addr", &counter.addr())
            .grant_socket("127.0.0.1:1"),
    )
    .await;
    reason(&e, FailureKind::Other, "connecting to");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counter.count(), 0);

    // A granted address is reachable.
    let config = imbed_tests::TestConfig::new()
        .plugin(
            "net",
            PluginSpec::misbehave("socket")
                .setting("addr", &counter.addr())
                .grant_socket(&counter.addr()),
        )
        .image_embed("net")
        .build();
    let e = crate::embed_png(config, None).await.unwrap();
    assert_eq!(e.provenance.plugin.key, "net");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counter.count(), 1);
}

#[tokio::test]
async fn a_panic_is_a_trap_with_the_panic_message() {
    let e = contained(PluginSpec::misbehave("panic")).await;
    reason(
        &e,
        FailureKind::Trap,
        "misbehave plugin panicked on purpose",
    );
}

#[tokio::test]
async fn malformed_vectors_are_rejected() {
    let e = contained(PluginSpec::misbehave("wrong-len")).await;
    reason(&e, FailureKind::Malformed, "length 9");
    let e = contained(PluginSpec::misbehave("nan")).await;
    reason(&e, FailureKind::Malformed, "NaN");
    let e = contained(PluginSpec::misbehave("wrong-count").setting_raw("dims", "8")).await;
    reason(&e, FailureKind::Malformed, "0 vectors for 1 inputs");
}

#[tokio::test]
async fn a_trapped_instance_is_replaced_and_the_host_keeps_serving() {
    let config = imbed_tests::TestConfig::new()
        .plugin("panicky", PluginSpec::misbehave("panic").instances(1))
        .plugin("hash", PluginSpec::hash())
        .image_embed("panicky")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    for _ in 0..3 {
        let e = imbed
            .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(8, 8, 0))))
            .await
            .unwrap();
        assert_eq!(e.provenance.attempts[0].kind, FailureKind::Trap);
        assert_eq!(e.provenance.plugin.key, "hash");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_starve_other_work() {
    let config = imbed_tests::TestConfig::new()
        .plugin("loop", PluginSpec::misbehave("loop").timeout_ms(1500))
        .plugin("hash", PluginSpec::hash())
        .image_embed("loop")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let slow = {
        let imbed = imbed.clone();
        tokio::spawn(async move {
            imbed
                .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(8, 8, 0))))
                .await
        })
    };
    // Meanwhile a timer on the same runtime keeps ticking: the guest yields at every epoch.
    let started = Instant::now();
    let mut ticks = 0;
    while !slow.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticks += 1;
    }
    let e = slow.await.unwrap().unwrap();
    assert_eq!(e.provenance.attempts[0].kind, FailureKind::Timeout);
    assert!(
        ticks >= 10,
        "only {ticks} timer ticks in {:?}",
        started.elapsed()
    );
}
