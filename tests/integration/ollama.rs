//! The Ollama plugin end to end: the real component, the host, and the Ollama stand-in over
//! 127.0.0.1.

use std::time::{Duration, Instant};

use imbed::{Env, FailureKind, HealthStatus, ImageRequest, ImageSource, Imbed, StepKind};
use imbed_tests::ollama::{describe_image, NanMode, OllamaStandIn, Route, NAN_TOKEN};
use imbed_tests::{cosine, images, PluginSpec, TestConfig, TestServer};

/// The Ollama plugin pointed at `ollama`, with the given extra settings.
fn ollama_plugin(ollama: &OllamaStandIn) -> PluginSpec {
    PluginSpec::file(imbed_tests::component("ollama"))
        .grant_http(&ollama.base_url())
        .setting("base_url", &ollama.base_url())
        .setting("vision_model", "llava")
        .setting("embed_model", "nomic-embed-text")
        .timeout_ms(20_000)
}

/// Ollama describe-then-embed, then the hash plugin.
fn chain(plugin: PluginSpec) -> TestConfig {
    TestConfig::new()
        .plugin("ollama", plugin)
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "ollama")
        .hash("hash")
}

async fn embed_bytes(imbed: &Imbed, bytes: Vec<u8>) -> imbed::Embedding {
    imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(bytes)))
        .await
        .unwrap()
}

#[track_caller]
fn fell_back(e: &imbed::Embedding, kind: FailureKind, needle: &str) {
    assert_eq!(
        e.provenance.step_kind,
        StepKind::Hash,
        "expected the hash step: {:?}",
        e.provenance
    );
    let a = &e.provenance.attempts[0];
    assert_eq!(
        (a.kind, a.plugin.as_deref()),
        (kind, Some("ollama")),
        "{}",
        a.message
    );
    assert!(
        a.message.contains(needle),
        "expected {needle:?} in {:?}",
        a.message
    );
}

#[tokio::test]
async fn describe_then_embed_through_the_real_plugin() {
    let ollama = OllamaStandIn::start();
    let imbed = Imbed::new(chain(ollama_plugin(&ollama)).build())
        .await
        .unwrap();
    let png = images::png(64, 48, 1);
    let e = embed_bytes(&imbed, png.clone()).await;
    let p = &e.provenance;
    assert_eq!((p.step, p.degraded), (0, false), "{:?}", p.attempts);
    assert_eq!(
        (p.model.as_str(), p.space.as_str(), p.dimensions),
        (
            "nomic-embed-text",
            "ollama/nomic-embed-text@10886753ec3b+tp09b78f89",
            768
        )
    );
    assert_eq!(Some(p.space.to_string()), ollama.space("nomic-embed-text"));
    let d = p.description.as_ref().unwrap();
    // The stand-in's description names the decoded size and the hash of the bytes it received.
    assert!(
        d.text.starts_with(&describe_image(&png).unwrap()),
        "{}",
        d.text
    );
    assert_eq!(d.model.as_deref(), Some("llava"));
    // The vector is Ollama's embedding of exactly that description, as a document.
    let expected = ollama
        .expected_embedding("nomic-embed-text", &format!("search_document: {}", d.text))
        .unwrap();
    assert!(cosine(&e.vector, &expected) > 0.9999);
    assert_eq!(ollama.vision_calls(), 1);
    let generate = &ollama.requests_to(Route::Generate)[0];
    let body = generate.body.as_ref().unwrap();
    assert_eq!(body["stream"], false);
    assert_eq!(body["options"]["temperature"], 0.0);
    assert!(body["prompt"]
        .as_str()
        .unwrap()
        .starts_with("Describe this image in detail"));

    // A text query lands in the same space and finds the image's description (the query and
    // the document differ only in their task prefix).
    let q = imbed.embed_text(&d.text).await.unwrap();
    assert_eq!(q.provenance.space, p.space);
    assert!(q.similarity(&e).unwrap() > 0.9, "{:?}", q.similarity(&e));
}

#[tokio::test]
async fn texts_embed_in_one_batch_and_a_bad_item_does_not_sink_the_rest() {
    let ollama = OllamaStandIn::start();
    ollama.set_nan_mode(NanMode::Reject);
    let imbed = Imbed::new(chain(ollama_plugin(&ollama)).build())
        .await
        .unwrap();
    ollama.reset_log();
    let texts: Vec<String> = vec![
        "a cat".into(),
        format!("broken {NAN_TOKEN}"),
        "a dog".into(),
        "a red car".into(),
    ];
    let results = imbed.embed_texts(&texts).await;
    assert_eq!(results.len(), 4);
    for i in [0, 2, 3] {
        let e = results[i].as_ref().unwrap();
        assert_eq!(
            Some(e.provenance.space.to_string()),
            ollama.space("nomic-embed-text"),
            "item {i}"
        );
        // Texts embedded through the chain are queries: nomic gets its query prefix.
        let expected = ollama
            .expected_embedding("nomic-embed-text", &format!("search_query: {}", texts[i]))
            .unwrap();
        assert!(cosine(&e.vector, &expected) > 0.9999, "item {i}");
    }
    // The NaN item failed alone at Ollama (500) and was answered by the next step.
    let bad = results[1].as_ref().unwrap();
    assert_eq!(bad.provenance.step_kind, StepKind::Hash);
    assert!(
        bad.provenance.attempts[0].message.contains("NaN"),
        "{}",
        bad.provenance.attempts[0].message
    );
    // The model probe, one batch of four, then each item alone after Ollama refused the batch.
    let sizes: Vec<usize> = ollama
        .requests_to(Route::Embed)
        .iter()
        .map(|r| {
            r.body.as_ref().unwrap()["input"]
                .as_array()
                .map_or(1, Vec::len)
        })
        .collect();
    assert_eq!(sizes, [1, 4, 1, 1, 1, 1]);
}

#[tokio::test]
async fn a_nan_vector_slipped_through_is_rejected_by_the_host_or_plugin() {
    let ollama = OllamaStandIn::start();
    ollama.set_nan_mode(NanMode::Null);
    let imbed = Imbed::new(chain(ollama_plugin(&ollama)).build())
        .await
        .unwrap();
    let results = imbed
        .embed_texts(&[format!("x {NAN_TOKEN}"), "fine".into()])
        .await;
    assert_eq!(
        results[0].as_ref().unwrap().provenance.step_kind,
        StepKind::Hash
    );
    assert_eq!(results[1].as_ref().unwrap().provenance.step, 0);
}

#[tokio::test]
async fn models_swap_by_config_and_by_environment() {
    let ollama = OllamaStandIn::start();
    let cfg = chain(
        ollama_plugin(&ollama)
            .setting("embed_model", "mxbai-embed-large")
            .setting("vision_model", "llama3.2-vision"),
    );
    let imbed = Imbed::new(cfg.build()).await.unwrap();
    let e = embed_bytes(&imbed, images::png(32, 32, 2)).await;
    assert_eq!(
        (Some(e.provenance.space.to_string()), e.vector.len()),
        (ollama.space("mxbai-embed-large"), 1024)
    );
    assert_eq!(
        e.provenance.description.unwrap().model.as_deref(),
        Some("llama3.2-vision")
    );

    let by_env = chain(
        ollama_plugin(&ollama)
            .setting("embed_model", "${OLLAMA_EMBED_MODEL:-nomic-embed-text}")
            .setting("vision_model", "${OLLAMA_VISION_MODEL:-llava}"),
    );
    let env = Env::isolated().set("OLLAMA_EMBED_MODEL", "all-minilm");
    let imbed = Imbed::new(by_env.build_with_env(&env)).await.unwrap();
    let e = embed_bytes(&imbed, images::png(32, 32, 2)).await;
    assert_eq!(
        (Some(e.provenance.space.to_string()), e.vector.len()),
        (ollama.space("all-minilm"), 384)
    );
    assert_eq!(
        e.provenance.description.unwrap().model.as_deref(),
        Some("llava")
    );
}

#[tokio::test]
async fn error_cases_map_to_actionable_reasons_and_the_chain_falls_back() {
    let ollama = OllamaStandIn::start();
    let cases: Vec<(PluginSpec, FailureKind, &str)> = vec![
        (
            ollama_plugin(&ollama).setting("vision_model", "nope"),
            FailureKind::ModelNotFound,
            "run `ollama pull nope`",
        ),
        (
            ollama_plugin(&ollama).setting("embed_model", "missing-embedder"),
            FailureKind::ModelNotFound,
            "run `ollama pull missing-embedder`",
        ),
        (
            ollama_plugin(&ollama).setting("vision_model", "llama3.2"),
            FailureKind::Other,
            "model \"llama3.2\" cannot see images",
        ),
        (
            ollama_plugin(&ollama).setting("vision_model", "nomic-embed-text"),
            FailureKind::Other,
            "cannot see images",
        ),
        (
            ollama_plugin(&ollama).setting("embed_model", "llava"),
            FailureKind::Other,
            "not an embedding model",
        ),
    ];
    for (plugin, kind, needle) in cases {
        let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
        let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
        fell_back(&e, kind, needle);
    }
}

#[tokio::test]
async fn connection_refused_says_to_start_ollama() {
    // A port with nobody listening.
    let base = format!("http://127.0.0.1:{}", imbed_tests::free_local_port());
    let plugin = PluginSpec::file(imbed_tests::component("ollama"))
        .grant_http(&base)
        .setting("base_url", &base);
    let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(
        &e,
        FailureKind::Unavailable,
        "is Ollama running? start it with `ollama serve`",
    );
}

#[tokio::test]
async fn a_hanging_ollama_hits_the_deadline_and_the_chain_falls_back() {
    let ollama = OllamaStandIn::start();
    ollama.set_hang(true);
    let plugin = ollama_plugin(&ollama)
        .setting_raw("request_timeout_ms", "400")
        .setting_raw("load_timeout_ms", "400");
    let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    let started = Instant::now();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(&e, FailureKind::Timeout, "did not answer");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The host's own per-call deadline bounds a plugin whose own timeouts are too generous.
    let plugin = ollama_plugin(&ollama).timeout_ms(700);
    let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    let started = Instant::now();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    assert_eq!(
        e.provenance.attempts[0].kind,
        FailureKind::Timeout,
        "{:?}",
        e.provenance.attempts
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn with_thirty_percent_failures_every_request_is_answered() {
    let ollama = OllamaStandIn::start();
    let imbed = Imbed::new(chain(ollama_plugin(&ollama)).build())
        .await
        .unwrap();
    // Warm the model info first so the failures hit the work itself.
    imbed.embed_text("warm").await.unwrap();
    ollama.set_failure_rate(0.3);
    let requests: Vec<ImageRequest> = (0..20)
        .map(|i| ImageRequest::new(ImageSource::Bytes(images::png(24, 24, i))))
        .collect();
    use futures::StreamExt;
    let results: Vec<_> = imbed.embed_images(requests, 4).collect().await;
    assert_eq!(results.len(), 20);
    let mut degraded = 0;
    for r in &results {
        let e = r.as_ref().expect("every request is answered");
        if e.provenance.degraded {
            degraded += 1;
            let a = &e.provenance.attempts[0];
            assert_eq!(a.kind, FailureKind::Unavailable, "{}", a.message);
            assert!(a.message.contains("busy"), "{}", a.message);
        }
    }
    assert!(degraded > 0 && degraded < 20, "{degraded} of 20 degraded");
}

#[tokio::test]
async fn the_plugin_reaches_no_origin_but_the_granted_one() {
    let ollama = OllamaStandIn::start();
    let elsewhere = TestServer::start();
    // Granted the stand-in, but told to talk to another server.
    let plugin = PluginSpec::file(imbed_tests::component("ollama"))
        .grant_http(&ollama.base_url())
        .setting("base_url", &elsewhere.origin());
    let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(
        &e,
        FailureKind::Other,
        "is not granted to plugin \"ollama\"",
    );
    assert_eq!(elsewhere.hits(), 0);
    assert_eq!(ollama.requests().len(), 0);
}

#[tokio::test]
async fn a_large_image_is_downsized_before_it_is_sent() {
    let ollama = OllamaStandIn::start();
    let imbed = Imbed::new(chain(ollama_plugin(&ollama)).build())
        .await
        .unwrap();
    let big = images::png(3000, 2000, 3);
    let e = embed_bytes(&imbed, big.clone()).await;
    let text = e.provenance.description.unwrap().text;
    assert!(text.starts_with("A 1024x683 image"), "{text}");
    let sent = ollama.requests_to(Route::Generate)[0].raw.len();
    assert!(
        sent < big.len() * 4 / 3,
        "sent {sent} bytes for a {} byte image",
        big.len()
    );

    let config = chain(ollama_plugin(&ollama).limit("image_max_side", "300")).build();
    let imbed = Imbed::new(config).await.unwrap();
    let e = embed_bytes(&imbed, big).await;
    assert!(e
        .provenance
        .description
        .unwrap()
        .text
        .starts_with("A 300x200 image"));
}

#[tokio::test]
async fn streaming_chat_structured_and_legacy_servers_work() {
    let ollama = OllamaStandIn::start();
    let png = images::png(40, 30, 1);
    let expected = describe_image(&png).unwrap();

    let streaming = Imbed::new(chain(ollama_plugin(&ollama).setting_raw("stream", "true")).build())
        .await
        .unwrap();
    let e = embed_bytes(&streaming, png.clone()).await;
    assert!(e
        .provenance
        .description
        .unwrap()
        .text
        .starts_with(&expected));

    let chat = Imbed::new(chain(ollama_plugin(&ollama).setting("endpoint", "chat")).build())
        .await
        .unwrap();
    let before = ollama.hits(Route::Chat);
    let e = embed_bytes(&chat, png.clone()).await;
    assert!(e
        .provenance
        .description
        .unwrap()
        .text
        .starts_with(&expected));
    assert_eq!(ollama.hits(Route::Chat), before + 1);

    let structured =
        Imbed::new(chain(ollama_plugin(&ollama).setting_raw("structured", "true")).build())
            .await
            .unwrap();
    let e = embed_bytes(&structured, png.clone()).await;
    let d = e.provenance.description.unwrap();
    let fields = d.structured.expect("structured fields");
    assert!(
        !fields.objects.is_empty() || !fields.tags.is_empty(),
        "{fields:?}"
    );
    assert!(d.text.contains(&expected[..20]), "{}", d.text);

    ollama.set_error_mid_stream(true);
    let e = embed_bytes(&streaming, png.clone()).await;
    fell_back(&e, FailureKind::Other, "failed while answering");
    ollama.set_error_mid_stream(false);

    let legacy = OllamaStandIn::start();
    legacy.set_legacy(true);
    let imbed = Imbed::new(chain(ollama_plugin(&legacy)).build())
        .await
        .unwrap();
    let e = embed_bytes(&imbed, png).await;
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
    assert!(legacy.hits(Route::Embeddings) > 0);
    assert_unit(&e.vector);
}

fn assert_unit(v: &[f32]) {
    crate::assert_unit(v)
}

#[tokio::test]
async fn a_cold_model_gets_the_load_deadline_and_later_calls_the_short_one() {
    let ollama = OllamaStandIn::start();
    ollama.set_cold_start(Duration::from_millis(1200));
    let plugin = ollama_plugin(&ollama)
        .setting_raw("request_timeout_ms", "800")
        .setting_raw("load_timeout_ms", "5000");
    let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    let e = embed_bytes(&imbed, images::png(16, 16, 1)).await;
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
    let e = embed_bytes(&imbed, images::png(16, 16, 2)).await;
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_images_are_in_flight_at_once() {
    let ollama = OllamaStandIn::start();
    let imbed = Imbed::new(chain(ollama_plugin(&ollama).instances(4)).build())
        .await
        .unwrap();
    imbed.embed_text("warm").await.unwrap();
    ollama.set_latency(Duration::from_millis(200));
    ollama.reset_log();
    let requests: Vec<ImageRequest> = (0..8)
        .map(|i| ImageRequest::new(ImageSource::Bytes(images::png(16, 16, i))))
        .collect();
    use futures::StreamExt;
    // Concurrency shows in the server's view (requests overlapping), not in wall time, which a
    // loaded machine can stretch: speed belongs to the benchmark.
    let results: Vec<_> = imbed.embed_images(requests, 8).collect().await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().map(|e| e.provenance.step == 0).unwrap_or(false)));
    let peak = ollama.peak_in_flight();
    assert!((2..=4).contains(&peak), "peak in flight {peak}");
}

#[tokio::test]
async fn doctor_reports_reachability_models_and_steps() {
    let ollama = OllamaStandIn::start();
    ollama.remove_model("llava");
    let imbed = Imbed::new(chain(ollama_plugin(&ollama)).build())
        .await
        .unwrap();
    let report = imbed::doctor::run(&imbed).await;
    // What Ollama is, and has, comes from the plugin's own health report.
    let o = report.health.iter().find(|h| h.plugin == "ollama").unwrap();
    let check = |name: &str| o.checks.iter().find(|c| c.name == name).unwrap();
    assert!(
        check("server").detail.contains("Ollama 0.33.0"),
        "{:?}",
        o.checks
    );
    let vision = check("vision model llava");
    assert_eq!(
        (vision.status, vision.fix.as_deref()),
        (HealthStatus::Failing, Some("run `ollama pull llava`"))
    );
    let embed = check("embed model nomic-embed-text");
    assert!(embed.status == HealthStatus::Ok && embed.fix.is_none());
    assert!(!report.steps[0].ok);
    assert!(report.steps[1].ok);
    assert!(report.can_answer());

    let base = format!("http://127.0.0.1:{}", imbed_tests::free_local_port());
    let down = PluginSpec::file(imbed_tests::component("ollama"))
        .grant_http(&base)
        .setting("base_url", &base);
    let imbed = Imbed::new(chain(down).build()).await.unwrap();
    let report = imbed::doctor::run(&imbed).await;
    let o = report.health.iter().find(|h| h.plugin == "ollama").unwrap();
    assert_eq!(o.checks[0].status, HealthStatus::Failing);
    assert!(o.checks[0].fix.as_deref().unwrap().contains("ollama serve"));
    match imbed.embed_text("x").await {
        Ok(e) => assert_eq!(e.provenance.step_kind, StepKind::Hash),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_doctor_command_prints_what_to_do() {
    let ollama = OllamaStandIn::start();
    ollama.remove_model("nomic-embed-text");
    let dir = tempfile::tempdir().unwrap();
    let cfg = chain(ollama_plugin(&ollama)).write(dir.path());
    let out = crate::cli::imbed(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("  server: ok — Ollama 0.33.0 at http://127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains("  embed model nomic-embed-text: PROBLEM — model \"nomic-embed-text\" is not pulled on http://127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains(": run `ollama pull nomic-embed-text`"),
        "{text}"
    );
    assert!(
        text.contains("0 describe-then-embed (ollama + ollama): cannot answer"),
        "{text}"
    );
    assert!(text.contains("1 hash (hash): can answer"), "{text}");

    let only_ollama = TestConfig::new()
        .plugin("ollama", ollama_plugin(&ollama))
        .describe_then_embed("ollama", "ollama");
    let sub = dir.path().join("only");
    std::fs::create_dir_all(&sub).unwrap();
    let cfg = only_ollama.write(&sub);
    let out = crate::cli::imbed(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"][0]["ok"], false);
}

#[tokio::test]
async fn warm_loads_the_models_at_start() {
    let ollama = OllamaStandIn::start();
    let _imbed = Imbed::new(chain(ollama_plugin(&ollama).limit("warm", "true")).build())
        .await
        .unwrap();
    // Warming runs in the background: wait for it, boundedly.
    let started = Instant::now();
    while ollama.hits(Route::Embed) == 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load = &ollama.requests_to(Route::Generate)[0];
    assert_eq!(
        (load.field("model"), load.field("prompt")),
        (Some("llava"), Some(""))
    );
    assert!(ollama.hits(Route::Embed) >= 1);
    assert_eq!(ollama.vision_calls(), 0, "warming sends no image");
}

#[tokio::test]
async fn warm_reaches_every_instance_at_once() {
    // The contract: `warm` is called once per instance. Each load takes a while at the
    // stand-in, so warming one after the other would never have three loads in flight.
    let ollama = OllamaStandIn::start();
    ollama.set_latency(Duration::from_millis(400));
    let plugin = ollama_plugin(&ollama).limit("warm", "true").instances(3);
    let _imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    let started = Instant::now();
    while ollama.hits(Route::Embed) < 3 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let loads = ollama.requests_to(Route::Generate);
    assert_eq!(loads.len(), 3, "one model load per instance");
    assert_eq!(ollama.hits(Route::Embed), 3);
    assert!(
        ollama.peak_in_flight() >= 3,
        "instances warmed one at a time (peak {} in flight)",
        ollama.peak_in_flight()
    );
}

#[tokio::test]
async fn a_backend_that_timed_out_is_not_waited_for_twice_in_one_request() {
    let ollama = OllamaStandIn::start();
    ollama.set_hang(true);
    let plugin = ollama_plugin(&ollama)
        .setting_raw("request_timeout_ms", "300")
        .setting_raw("load_timeout_ms", "300");
    // The seed's chain: Ollama describe-then-embed, then the caller's description embedded by
    // the same Ollama embedder, then hash.
    let config = TestConfig::new()
        .plugin("ollama", plugin)
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "ollama")
        .description("ollama")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let request =
        ImageRequest::new(ImageSource::Bytes(images::png(16, 16, 0))).with_description("a test");
    let e = imbed.embed_image(request).await.unwrap();
    let a = &e.provenance.attempts;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].kind, FailureKind::Timeout);
    assert_eq!(a[1].kind, FailureKind::Timeout);
    assert!(
        a[1].message
            .starts_with("skipped: plugin \"ollama\" already failed as a text embedder in step 0"),
        "{}",
        a[1].message
    );
    assert_eq!(
        ollama.hits(Route::Embed),
        1,
        "the hung embed endpoint was asked once"
    );

    let q = imbed.embed_text("query").await.unwrap();
    assert_eq!(
        q.provenance.attempts[1].message.split(':').next(),
        Some("skipped")
    );
}
