//! The OpenAI-compatible plugin end to end: the real component, the host, and the OpenAI stand-in
//! over 127.0.0.1; and the stand-in itself checked against the official Python client.

use std::time::{Duration, Instant};

use imbed::{Env, FailureKind, ImageRequest, ImageSource, Imbed, StepKind};
use imbed_tests::openai::{Failure, ModelSpec, OpenAiStandIn, Route};
use imbed_tests::{cosine, images, PluginSpec, TestConfig};

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
    let statuses: Vec<Option<u16>> = server
        .requests_to(Route::Embeddings)
        .iter()
        .take(2)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [Some(429), Some(200)]);
    let retried = &server.requests_to(Route::Embeddings)[1];
    assert_eq!(retried.bearer(), Some("sk-standin-key"));
}

/// The plugin's default prompt (the same as the Ollama plugin's).
const DEFAULT_PROMPT: &str = "Describe this image in detail, including objects, colors, scene, context, and any text visible.";

const KEY: &str = "sk-standin-0123456789abcdef";

/// The OpenAI plugin pointed at `server`, its key from `${OPENAI_API_KEY}` (see [`env`]).
fn openai_plugin(server: &OpenAiStandIn) -> PluginSpec {
    PluginSpec::file(imbed_tests::component("openai"))
        .grant_http(&server.origin())
        .setting("base_url", &server.base_url())
        .setting("api_key", "${OPENAI_API_KEY:-}")
        .setting("vision_model", "gpt-4o-mini")
        .setting("embed_model", "text-embedding-3-small")
        .timeout_ms(20_000)
}

/// The environment the config's `${...}` are read from: only the key.
fn env() -> Env {
    Env::isolated().set("OPENAI_API_KEY", KEY)
}

/// OpenAI describe-then-embed, then the hash plugin.
fn chain(plugin: PluginSpec) -> TestConfig {
    TestConfig::new()
        .plugin("openai", plugin)
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("openai", "openai")
        .hash("hash")
}

async fn start(plugin: PluginSpec) -> Imbed {
    Imbed::new(chain(plugin).build_with_env(&env()))
        .await
        .unwrap()
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
        (kind, Some("openai")),
        "{}",
        a.message
    );
    assert!(
        a.message.contains(needle),
        "expected {needle:?} in {:?}",
        a.message
    );
}

fn statuses(server: &OpenAiStandIn, route: Route) -> Vec<Option<u16>> {
    server.requests_to(route).iter().map(|r| r.status).collect()
}

#[tokio::test]
async fn describe_then_embed_through_the_real_plugin() {
    let server = OpenAiStandIn::builder().api_key(KEY).start();
    let imbed = start(openai_plugin(&server)).await;
    let png = images::png(64, 48, 1);
    let e = embed_bytes(&imbed, png.clone()).await;
    let p = &e.provenance;
    assert_eq!((p.step, p.degraded), (0, false), "{:?}", p.attempts);
    let space = format!("openai-compat/{}/text-embedding-3-small", server.addr());
    assert_eq!(
        (p.model.as_str(), p.space.as_str(), p.dimensions),
        ("text-embedding-3-small", space.as_str(), 1536)
    );
    let d = p.description.as_ref().unwrap();
    // The stand-in's description names the decoded size and the hash of the bytes it received.
    let expected = OpenAiStandIn::expected_description(&png, DEFAULT_PROMPT).unwrap();
    assert_eq!(d.text, expected);
    assert_eq!(d.model.as_deref(), Some("gpt-4o-mini"));
    // The vector is the server's embedding of exactly that description.
    let want = server
        .expected_embedding("text-embedding-3-small", &d.text, None)
        .unwrap();
    assert!(cosine(&e.vector, &want) > 0.9999);

    let chat = &server.requests_to(Route::ChatCompletions)[0];
    let body = chat.body.as_ref().unwrap();
    assert_eq!(
        (
            body["temperature"].as_f64(),
            body["seed"].as_i64(),
            body["max_tokens"].as_i64()
        ),
        (Some(0.0), Some(42), Some(300))
    );
    assert_eq!(body["stream"], false);
    let parts = &body["messages"][0]["content"];
    assert_eq!(parts[0]["text"], DEFAULT_PROMPT);
    assert!(parts[1]["image_url"]["url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,iVBOR"));
    let embed = server.requests_to(Route::Embeddings).pop().unwrap();
    assert_eq!(embed.body.as_ref().unwrap()["encoding_format"], "float");
    // Every request carried the key from the settings.
    assert!(server.requests().iter().all(|r| r.bearer() == Some(KEY)));

    // A text query lands in the same space and finds the image's description.
    let q = imbed.embed_text(&d.text).await.unwrap();
    assert_eq!(q.provenance.space, p.space);
    assert!(q.similarity(&e).unwrap() > 0.999);
}

#[tokio::test]
async fn texts_embed_in_batches_placed_by_index_and_an_empty_text_fails_alone() {
    let server = OpenAiStandIn::start();
    // The stand-in answers `data` in reverse order; the `index` of each item is what counts.
    server.set_shuffle_embeddings(true);
    let imbed = start(openai_plugin(&server).setting_raw("batch_size", "2")).await;
    imbed.embed_text("warm").await.unwrap();
    server.reset_log();
    let texts: Vec<String> = ["a cat", "", "a dog on a sofa", "a red car", "tax report"]
        .map(String::from)
        .to_vec();
    let results = imbed.embed_texts(&texts).await;
    for i in [0, 2, 3, 4] {
        let e = results[i].as_ref().unwrap();
        assert_eq!(
            e.provenance.step, 0,
            "item {i}: {:?}",
            e.provenance.attempts
        );
        let want = server
            .expected_embedding("text-embedding-3-small", &texts[i], None)
            .unwrap();
        assert!(cosine(&e.vector, &want) > 0.9999, "item {i}");
    }
    // The host refuses the empty text itself; the others are not held up by it.
    let empty = results[1].as_ref().unwrap_err();
    assert!(
        empty.to_string().contains("the text to embed is empty"),
        "{empty}"
    );
    let sizes: Vec<usize> = server
        .requests_to(Route::Embeddings)
        .iter()
        .map(|r| r.body.as_ref().unwrap()["input"].as_array().unwrap().len())
        .collect();
    assert_eq!(
        sizes,
        [2, 2],
        "four texts in batches of two; the empty one never sent"
    );
}

#[tokio::test]
async fn dimensions_are_passed_through_and_change_the_space() {
    let server = OpenAiStandIn::start();
    let imbed = start(openai_plugin(&server).setting_raw("dimensions", "256")).await;
    let e = imbed.embed_text("a lighthouse at dusk").await.unwrap();
    assert_eq!(
        e.provenance.space,
        format!("openai-compat/{}/text-embedding-3-small:256", server.addr())
    );
    assert_eq!(e.vector.len(), 256);
    let want = server
        .expected_embedding("text-embedding-3-small", "a lighthouse at dusk", Some(256))
        .unwrap();
    assert!(cosine(&e.vector, &want) > 0.9999);
    assert!(server
        .requests_to(Route::Embeddings)
        .iter()
        .all(|r| r.body.as_ref().unwrap()["dimensions"] == 256));

    // A model that refuses `dimensions` says so, and which setting to change.
    let imbed = start(
        openai_plugin(&server)
            .setting("embed_model", "text-embedding-ada-002")
            .setting_raw("dimensions", "256"),
    )
    .await;
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(&e, FailureKind::Other, "remove the dimensions setting");
}

#[tokio::test]
async fn a_missing_or_wrong_key_says_to_check_api_key() {
    let server = OpenAiStandIn::builder().api_key(KEY).start();
    let none = Imbed::new(chain(openai_plugin(&server)).build())
        .await
        .unwrap();
    let e = embed_bytes(&none, images::png(16, 16, 0)).await;
    fell_back(
        &e,
        FailureKind::Other,
        "no api_key is set: add api_key = \"${OPENAI_API_KEY}\"",
    );

    let wrong_key = "sk-wrong-9999999999999999";
    let wrong = openai_plugin(&server).setting("api_key", wrong_key);
    let e = embed_bytes(&start(wrong).await, images::png(16, 16, 0)).await;
    fell_back(&e, FailureKind::Other, "check api_key");
    let message = &e.provenance.attempts[0].message;
    assert!(
        message.contains("Incorrect API key provided: sk-"),
        "{message}"
    );
    assert!(
        !message.contains(wrong_key),
        "the key itself is never repeated: {message}"
    );
}

#[tokio::test]
async fn the_key_comes_from_settings_never_from_the_plugins_environment() {
    let server = OpenAiStandIn::builder().api_key(KEY).start();
    // Granted the variable, but not told to use it: the plugin does not look there.
    let env_only = PluginSpec::file(imbed_tests::component("openai"))
        .grant_http(&server.origin())
        .grant_env("OPENAI_API_KEY")
        .setting("base_url", &server.base_url());
    let imbed = Imbed::new(chain(env_only).build_with_env(&env()))
        .await
        .unwrap();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(&e, FailureKind::Other, "no api_key is set");
    assert!(server
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));

    // The config hands it over as a setting, with no environment granted at all.
    server.reset_log();
    let imbed = start(openai_plugin(&server)).await;
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
    assert!(!server.requests().is_empty());
    assert!(server.requests().iter().all(|r| r.bearer() == Some(KEY)));
    let listed = imbed.plugins();
    let openai = listed.iter().find(|p| p.key == "openai").unwrap();
    assert!(openai.env.is_empty(), "{:?}", openai.env);
}

#[tokio::test]
async fn model_errors_name_the_model_and_the_setting() {
    let server = OpenAiStandIn::start();
    let cases: Vec<(PluginSpec, FailureKind, &str)> = vec![
        (
            openai_plugin(&server).setting("vision_model", "gpt-9"),
            FailureKind::ModelNotFound,
            "model \"gpt-9\" not found",
        ),
        (
            openai_plugin(&server).setting("embed_model", "nope"),
            FailureKind::ModelNotFound,
            "set embed_model to a model it serves",
        ),
        (
            openai_plugin(&server).setting("vision_model", "gpt-3.5-turbo"),
            FailureKind::Other,
            "model \"gpt-3.5-turbo\" cannot see images",
        ),
        (
            openai_plugin(&server).setting("vision_model", "text-embedding-3-small"),
            FailureKind::Other,
            "cannot describe images",
        ),
        (
            openai_plugin(&server).setting("embed_model", "gpt-4o-mini"),
            FailureKind::Other,
            "cannot embed text",
        ),
    ];
    for (plugin, kind, needle) in cases {
        let e = embed_bytes(&start(plugin).await, images::png(16, 16, 0)).await;
        fell_back(&e, kind, needle);
    }
}

#[tokio::test]
async fn a_reasoning_model_s_parameter_refusals_are_learnt_once() {
    let server = OpenAiStandIn::start();
    let imbed = start(
        openai_plugin(&server)
            .setting("vision_model", "o4-mini")
            .instances(1),
    )
    .await;
    let png = images::png(32, 32, 2);
    let e = embed_bytes(&imbed, png.clone()).await;
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
    assert_eq!(
        statuses(&server, Route::ChatCompletions),
        [Some(400), Some(400), Some(200)]
    );
    let last = server.requests_to(Route::ChatCompletions).pop().unwrap();
    let body = last.body.unwrap();
    assert_eq!(body["max_completion_tokens"], 300);
    assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
    // The same instance asks right the first time from now on.
    embed_bytes(&imbed, images::png(32, 32, 3)).await;
    assert_eq!(server.hits(Route::ChatCompletions), 4);
}

#[tokio::test]
async fn rate_limits_are_waited_out_when_short_and_passed_on_when_long() {
    let server = OpenAiStandIn::start();
    let imbed = start(openai_plugin(&server)).await;
    imbed.embed_text("warm").await.unwrap();
    server.reset_log();
    server.rate_limit_next(1, Some(Duration::from_millis(150)));
    let e = imbed.embed_text("a short wait").await.unwrap();
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
    let log = server.requests_to(Route::Embeddings);
    assert_eq!(statuses(&server, Route::Embeddings), [Some(429), Some(200)]);
    assert!(
        log[1].at.duration_since(log[0].at) >= Duration::from_millis(150),
        "waited as asked"
    );

    // An overloaded server that says when to come back is treated the same.
    server.reset_log();
    server.fail_next(1, Failure::Overloaded(Some(Duration::from_millis(50))));
    assert_eq!(imbed.embed_text("again").await.unwrap().provenance.step, 0);
    assert_eq!(statuses(&server, Route::Embeddings), [Some(503), Some(200)]);

    // A long wait is not worth it: the chain moves on at once.
    server.reset_log();
    server.rate_limit_next(1, Some(Duration::from_secs(30)));
    let started = Instant::now();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(&e, FailureKind::Unavailable, "is rate-limiting");
    assert!(
        e.provenance.attempts[0]
            .message
            .contains("asked to wait 30.0 s"),
        "{}",
        e.provenance.attempts[0].message
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(statuses(&server, Route::ChatCompletions), [Some(429)]);

    // A spent quota is not a rate limit: no retry, and it says what to do.
    server.reset_log();
    server.set_insufficient_quota(true);
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(&e, FailureKind::Other, "check the plan and billing");
    assert_eq!(server.hits(Route::ChatCompletions), 1);
    server.set_insufficient_quota(false);

    // A plain server error is passed on as unavailable, without retrying.
    server.reset_log();
    server.fail_next(1, Failure::Server);
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(&e, FailureKind::Unavailable, "The server had an error");
    assert_eq!(server.hits(Route::ChatCompletions), 1);
}

#[tokio::test]
async fn a_server_that_is_down_sends_the_chain_on_to_hash() {
    let base = format!("http://127.0.0.1:{}", imbed_tests::free_local_port());
    let plugin = PluginSpec::file(imbed_tests::component("openai"))
        .grant_http(&base)
        .setting("base_url", &format!("{base}/v1"));
    let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    fell_back(
        &e,
        FailureKind::Unavailable,
        &format!("is the server running at {base}/v1?"),
    );
    assert_unit(&e.vector);
}

#[tokio::test]
async fn a_hanging_server_hits_the_deadline_and_the_chain_falls_back() {
    let server = OpenAiStandIn::start();
    server.set_hang(true);
    let imbed = start(openai_plugin(&server).setting_raw("request_timeout_ms", "400")).await;
    let started = Instant::now();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    // The embedder's model probe is the first request that hangs.
    fell_back(
        &e,
        FailureKind::Timeout,
        "did not answer POST /embeddings within 400 ms",
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The host's own per-call deadline bounds a plugin whose own timeout is too generous.
    let imbed = start(openai_plugin(&server).timeout_ms(700)).await;
    let started = Instant::now();
    let e = embed_bytes(&imbed, images::png(16, 16, 0)).await;
    assert_eq!(e.provenance.step_kind, StepKind::Hash);
    assert_eq!(
        e.provenance.attempts[0].kind,
        FailureKind::Timeout,
        "{:?}",
        e.provenance.attempts
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    server.set_hang(false);
}

#[tokio::test]
async fn streamed_descriptions_match_and_a_cut_stream_is_refused() {
    let server = OpenAiStandIn::start();
    let imbed = start(openai_plugin(&server).setting_raw("stream", "true")).await;
    let png = images::png(40, 30, 1);
    let e = embed_bytes(&imbed, png.clone()).await;
    assert_eq!(
        e.provenance.description.unwrap().text,
        OpenAiStandIn::expected_description(&png, DEFAULT_PROMPT).unwrap()
    );
    assert_eq!(
        server.requests_to(Route::ChatCompletions)[0]
            .body
            .as_ref()
            .unwrap()["stream"],
        true
    );
    server.set_cut_streams(true);
    let e = embed_bytes(&imbed, png).await;
    fell_back(
        &e,
        FailureKind::Unavailable,
        "event stream ended before the answer was complete",
    );
}

#[tokio::test]
async fn the_plugin_reaches_no_origin_but_the_granted_one() {
    let server = OpenAiStandIn::start();
    let elsewhere = OpenAiStandIn::start();
    let plugin = openai_plugin(&server).setting("base_url", &elsewhere.base_url());
    let e = embed_bytes(&start(plugin).await, images::png(16, 16, 0)).await;
    fell_back(
        &e,
        FailureKind::Other,
        "is not granted to plugin \"openai\"",
    );
    assert!(elsewhere.requests().is_empty() && server.requests().is_empty());
}

fn assert_unit(v: &[f32]) {
    crate::assert_unit(v)
}

#[test]
fn the_example_config_checks_and_embeds_through_the_cli() {
    let server = OpenAiStandIn::builder().api_key(KEY).start();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["openai", "hash"] {
        std::fs::copy(
            imbed_tests::component(name),
            plugins.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let config = imbed_tests::repo_root().join("config/openai.toml");
    let run = |args: &[&str]| {
        crate::cli::imbed(dir.path())
            .env("IMBED_PLUGIN_DIR", &plugins)
            .env("OPENAI_SERVER", server.origin())
            .env("OPENAI_API_KEY", KEY)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["config", "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("plugin openai: loads (openai 0.1.0)") && text.contains("3 of 3 steps"),
        "{text}"
    );

    let image = dir.path().join("photo.png");
    std::fs::write(&image, images::png(48, 32, 2)).unwrap();
    let out = run(&["embed", image.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &line["provenance"];
    assert_eq!(p["step"], 0, "{p}");
    assert_eq!(
        p["space"],
        format!("openai-compat/{}/text-embedding-3-small", server.addr())
    );
    assert_eq!(p["plugin"]["name"], "openai");
    assert!(server.requests().iter().all(|r| r.bearer() == Some(KEY)));
}

#[tokio::test]
async fn a_text_too_long_for_the_model_fails_alone() {
    let server = OpenAiStandIn::builder()
        .model(ModelSpec::embedding("short-context", 64).with_context(5))
        .start();
    let imbed = start(openai_plugin(&server).setting("embed_model", "short-context")).await;
    imbed.embed_text("warm").await.unwrap();
    server.reset_log();
    let texts: Vec<String> = ["a cat", "one two three four five six seven", "a dog"]
        .map(String::from)
        .to_vec();
    let results = imbed.embed_texts(&texts).await;
    for i in [0, 2] {
        let e = results[i].as_ref().unwrap();
        assert_eq!(
            e.provenance.step, 0,
            "item {i}: {:?}",
            e.provenance.attempts
        );
        let want = server
            .expected_embedding("short-context", &texts[i], None)
            .unwrap();
        assert!(cosine(&e.vector, &want) > 0.9999, "item {i}");
    }
    let long = results[1].as_ref().unwrap();
    assert_eq!(long.provenance.step_kind, StepKind::Hash);
    let a = &long.provenance.attempts[0];
    assert_eq!(a.kind, FailureKind::BadInput, "{}", a.message);
    assert!(
        a.message.contains("too long for model \"short-context\"")
            && a.message.contains("maximum context length is 5 tokens"),
        "{}",
        a.message
    );
    // The batch was refused whole, then each text was sent alone.
    assert_eq!(
        statuses(&server, Route::Embeddings),
        [Some(400), Some(200), Some(400), Some(200)]
    );
}

#[tokio::test]
async fn a_known_asymmetric_model_gets_its_prefixes_and_its_own_space() {
    let server = OpenAiStandIn::builder().api_key(KEY).start();
    // LM Studio names nomic's model this way; any server may serve it.
    server.add_model(ModelSpec::embedding(
        "text-embedding-nomic-embed-text-v1.5",
        768,
    ));
    let imbed = start(
        openai_plugin(&server).setting("embed_model", "text-embedding-nomic-embed-text-v1.5"),
    )
    .await;
    server.reset_log();
    let e = embed_bytes(&imbed, images::png(32, 32, 5)).await;
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
    let d = e.provenance.description.clone().unwrap();
    imbed.embed_text("a red car").await.unwrap();
    let inputs: Vec<String> = server
        .requests_to(Route::Embeddings)
        .iter()
        .flat_map(|r| match &r.body.as_ref().unwrap()["input"] {
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().unwrap().to_string())
                .collect(),
            other => vec![other.as_str().unwrap().to_string()],
        })
        .filter(|t| t != "dimension probe")
        .collect();
    assert_eq!(
        inputs,
        [
            format!("search_document: {}", d.text),
            "search_query: a red car".to_string()
        ]
    );
    assert!(
        e.provenance
            .space
            .ends_with("text-embedding-nomic-embed-text-v1.5@tp09b78f89"),
        "{}",
        e.provenance.space
    );

    // A model it does not know, with prefixes from the settings.
    let custom = start(openai_plugin(&server).setting("query_prefix", "Q: ")).await;
    server.reset_log();
    custom.embed_text("a red car").await.unwrap();
    let last = server.requests_to(Route::Embeddings).pop().unwrap();
    assert_eq!(
        last.body.unwrap()["input"],
        serde_json::json!(["Q: a red car"])
    );
}
