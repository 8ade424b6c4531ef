//! Contract 0.2.0 end to end (issue #16): the purpose of each text reaches the plugin, the Ollama
//! plugin applies the model's own task prefixes (the stand-in records the exact texts it gets),
//! the compatible routes embed as given unless asked, plugins report their own health, and a
//! component built for 0.1.0 still loads and answers through the host's adapter.

use imbed::server::{app, AppState};
use imbed::{HealthStatus, ImageRequest, ImageSource, Imbed, PluginHealth, Purpose, StepKind};
use imbed_tests::ollama::{describe_image, ModelSpec, OllamaStandIn};
use imbed_tests::{cosine, images, PluginSpec, TestConfig};
use serde_json::{json, Value};

const MXBAI_QUERY: &str = "Represent this sentence for searching relevant passages: ";

fn ollama_plugin(ollama: &OllamaStandIn, embed_model: &str) -> PluginSpec {
    PluginSpec::file(imbed_tests::component("ollama"))
        .grant_http(&ollama.base_url())
        .setting("base_url", &ollama.base_url())
        .setting("vision_model", "llava")
        .setting("embed_model", embed_model)
        .timeout_ms(20_000)
}

/// Ollama describe-then-embed, the caller's description through Ollama, then hash.
fn chain(plugin: PluginSpec) -> TestConfig {
    TestConfig::new()
        .plugin("ollama", plugin)
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "ollama")
        .hash("hash")
}

/// The texts the stand-in was asked to embed since the last reset, without the plugin's own
/// model probe.
fn sent(ollama: &OllamaStandIn) -> Vec<String> {
    ollama
        .embedded_texts()
        .into_iter()
        .filter(|t| t != "dimension probe")
        .collect()
}

async fn embed_png(imbed: &Imbed, w: u32, h: u32, seed: u32) -> (imbed::Embedding, Vec<u8>) {
    let png = images::png(w, h, seed);
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(png.clone())))
        .await
        .unwrap();
    (e, png)
}

#[tokio::test]
async fn nomic_descriptions_are_documents_and_queries_are_queries() {
    let ollama = OllamaStandIn::start();
    let imbed = Imbed::new(chain(ollama_plugin(&ollama, "nomic-embed-text")).build())
        .await
        .unwrap();
    ollama.reset_log();
    let (e, png) = embed_png(&imbed, 64, 48, 1).await;
    assert_eq!(e.provenance.step, 0, "{:?}", e.provenance.attempts);
    let d = e.provenance.description.as_ref().unwrap();
    assert!(d.text.starts_with(&describe_image(&png).unwrap()));
    assert_eq!(
        (d.purpose, d.prefix.as_deref()),
        (Some(Purpose::Document), Some("search_document: "))
    );
    assert_eq!(sent(&ollama), [format!("search_document: {}", d.text)]);
    // The vector is the model's embedding of the prefixed text, in the prefixed space.
    let expected = ollama
        .expected_embedding("nomic-embed-text", &format!("search_document: {}", d.text))
        .unwrap();
    assert!(cosine(&e.vector, &expected) > 0.9999);
    assert_eq!(
        Some(e.provenance.space.to_string()),
        ollama.space("nomic-embed-text")
    );
    assert!(e.provenance.space.ends_with("+tp09b78f89"));

    ollama.reset_log();
    let q = imbed.embed_text("a red car").await.unwrap();
    let qd = q.provenance.description.as_ref().unwrap();
    assert_eq!(
        (qd.purpose, qd.prefix.as_deref()),
        (Some(Purpose::Query), Some("search_query: "))
    );
    assert_eq!(q.provenance.space, e.provenance.space);
    // Callers who followed the model card are not prefixed twice, whatever the prefix.
    let again = imbed.embed_text("search_query: a blue car").await.unwrap();
    assert_eq!(again.provenance.description.as_ref().unwrap().prefix, None);
    imbed
        .embed_text("search_document: a green car")
        .await
        .unwrap();
    assert_eq!(
        sent(&ollama),
        [
            "search_query: a red car",
            "search_query: a blue car",
            "search_document: a green car"
        ]
    );

    // A caller's description is a document too.
    ollama.reset_log();
    let mut req = ImageRequest::new(ImageSource::Bytes(images::png(32, 32, 9)));
    req = req.with_description("my own words");
    let cfg = TestConfig::new()
        .plugin("ollama", ollama_plugin(&ollama, "nomic-embed-text"))
        .description("ollama");
    let only_description = Imbed::new(cfg.build()).await.unwrap();
    ollama.reset_log();
    let c = only_description.embed_image(req).await.unwrap();
    assert_eq!(c.provenance.step_kind, StepKind::Description);
    assert_eq!(sent(&ollama), ["search_document: my own words"]);
}

#[tokio::test]
async fn all_minilm_goes_bare_and_mxbai_gets_its_prompt_on_queries_only() {
    let ollama = OllamaStandIn::start();
    let minilm = Imbed::new(chain(ollama_plugin(&ollama, "all-minilm")).build())
        .await
        .unwrap();
    ollama.reset_log();
    let (e, _) = embed_png(&minilm, 40, 30, 2).await;
    let text = e.provenance.description.as_ref().unwrap().text.clone();
    minilm.embed_text("a red car").await.unwrap();
    assert_eq!(sent(&ollama), [text, "a red car".to_string()]);
    assert_eq!(
        Some(e.provenance.space.to_string()),
        ollama.bare_space("all-minilm"),
        "a model without prefixes keeps its space"
    );

    let mxbai = Imbed::new(chain(ollama_plugin(&ollama, "mxbai-embed-large")).build())
        .await
        .unwrap();
    ollama.reset_log();
    let (e, _) = embed_png(&mxbai, 40, 30, 3).await;
    let text = e.provenance.description.as_ref().unwrap().text.clone();
    let q = mxbai.embed_text("a red car").await.unwrap();
    assert_eq!(
        sent(&ollama),
        [text, format!("{MXBAI_QUERY}a red car")],
        "documents bare, queries with the instruction"
    );
    assert_eq!(
        q.provenance.description.unwrap().prefix.as_deref(),
        Some(MXBAI_QUERY)
    );
    assert_eq!(
        Some(e.provenance.space.to_string()),
        ollama.space("mxbai-embed-large")
    );
}

#[tokio::test]
async fn a_model_the_plugin_does_not_know_takes_its_prefixes_from_the_settings() {
    let ollama = OllamaStandIn::start();
    ollama.add_model(ModelSpec::embedding("house-embedder", 128));
    let plugin = ollama_plugin(&ollama, "house-embedder")
        .setting("query_prefix", "Q: ")
        .setting("document_prefix", "D: ");
    let imbed = Imbed::new(chain(plugin).build()).await.unwrap();
    ollama.reset_log();
    let (e, _) = embed_png(&imbed, 40, 30, 4).await;
    let text = e.provenance.description.as_ref().unwrap().text.clone();
    imbed.embed_text("a red car").await.unwrap();
    assert_eq!(
        sent(&ollama),
        [format!("D: {text}"), "Q: a red car".to_string()]
    );
    // The prefixes are part of the space: other prefixes, other vectors.
    let bare = ollama.bare_space("house-embedder").unwrap();
    assert!(
        e.provenance.space.starts_with(&format!("{bare}+tp")),
        "{}",
        e.provenance.space
    );
}

/// POST a JSON body through the router, without a socket.
async fn post(state: &AppState, path: &str, body: Value) -> (u16, Value) {
    use tower::ServiceExt;
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn compatible_routes_embed_as_given_unless_the_caller_names_the_input_type() {
    let ollama = OllamaStandIn::start();
    let cfg = TestConfig::new()
        .plugin("ollama", ollama_plugin(&ollama, "nomic-embed-text"))
        .description("ollama");
    let state = AppState::build(cfg.build()).await.unwrap();
    let calls: [(&str, Value, &str); 7] = [
        ("/api/embed", json!({"model": "m", "input": "one"}), "one"),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": ["two"]}),
            "two",
        ),
        (
            "/api/embed",
            json!({"model": "m", "input": "three", "input_type": "query"}),
            "search_query: three",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": "four", "input_type": "document"}),
            "search_document: four",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": "five", "input_type": "search_query"}),
            "search_query: five",
        ),
        // The native text route is for searching.
        ("/embed/text", json!({"text": "six"}), "search_query: six"),
        (
            "/embed/text",
            json!({"text": "seven", "input_type": "document"}),
            "search_document: seven",
        ),
    ];
    for (path, body, expected) in calls {
        ollama.reset_log();
        let (status, answer) = post(&state, path, body.clone()).await;
        assert_eq!(status, 200, "{path} {body}: {answer}");
        assert_eq!(sent(&ollama), [expected], "{path} {body}");
    }
    let (status, answer) = post(
        &state,
        "/v1/embeddings",
        json!({"model": "m", "input": "x", "input_type": "passage"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("unknown input_type \\\"passage\\\""),
        "{answer}"
    );
}

#[tokio::test]
async fn the_ollama_plugin_reports_its_own_health() {
    let ollama = OllamaStandIn::start();
    ollama.remove_model("llava");
    let imbed = Imbed::new(chain(ollama_plugin(&ollama, "nomic-embed-text")).build())
        .await
        .unwrap();
    let checks = imbed.plugin_checks().await;
    let o = checks.iter().find(|c| c.plugin == "ollama").unwrap();
    assert_eq!((o.contract, o.reported), ("0.2.0", true));
    let by_name = |name: &str| o.checks.iter().find(|c| c.name == name).unwrap().clone();
    let server = by_name("server");
    assert_eq!(server.status, HealthStatus::Ok);
    assert!(
        server.detail.contains("Ollama 0.33.0 at http://127.0.0.1"),
        "{}",
        server.detail
    );
    let vision = by_name("vision model llava");
    assert_eq!(
        (vision.status, vision.fix.as_deref()),
        (HealthStatus::Failing, Some("run `ollama pull llava`"))
    );
    assert_eq!(
        by_name("embed model nomic-embed-text").status,
        HealthStatus::Ok
    );
    assert_eq!(o.status(), HealthStatus::Failing);
    // The hash plugin has nothing to check and says so with an empty report.
    let h = checks.iter().find(|c| c.plugin == "hash").unwrap();
    assert_eq!((h.reported, h.checks.len()), (true, 0));
    assert_eq!(h.status(), HealthStatus::Ok);

    // A model that cannot do its role.
    let wrong =
        ollama_plugin(&ollama, "nomic-embed-text").setting("vision_model", "nomic-embed-text");
    let imbed = Imbed::new(chain(wrong).build()).await.unwrap();
    let o = imbed
        .plugin_checks()
        .await
        .into_iter()
        .find(|c| c.plugin == "ollama")
        .unwrap();
    let vision = o
        .checks
        .iter()
        .find(|c| c.name.starts_with("vision model"))
        .unwrap();
    assert_eq!(vision.status, HealthStatus::Failing);
    assert!(vision
        .fix
        .as_deref()
        .unwrap()
        .contains("set vision_model to a vision model"));

    // A stopped server.
    let base = format!("http://127.0.0.1:{}", imbed_tests::free_local_port());
    let down = PluginSpec::file(imbed_tests::component("ollama"))
        .grant_http(&base)
        .setting("base_url", &base);
    let imbed = Imbed::new(chain(down).build()).await.unwrap();
    let o = imbed
        .plugin_checks()
        .await
        .into_iter()
        .find(|c| c.plugin == "ollama")
        .unwrap();
    assert_eq!(o.checks.len(), 1, "{:?}", o.checks);
    assert_eq!(o.checks[0].status, HealthStatus::Failing);
    assert!(o.checks[0]
        .detail
        .contains(&format!("cannot reach Ollama at {base}")));
    assert!(o.checks[0].fix.as_deref().unwrap().contains("ollama serve"));
}

/// The 0.1.0 test plugin: a describer and a letter-counting text embedder.
fn legacy() -> PluginSpec {
    PluginSpec::file(imbed_tests::component("legacy-v0-1"))
}

fn letters(text: &str) -> Vec<f32> {
    let mut v = [0f32; 26];
    for b in text
        .to_ascii_lowercase()
        .bytes()
        .filter(u8::is_ascii_lowercase)
    {
        v[usize::from(b - b'a')] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

#[tokio::test]
async fn a_component_built_for_0_1_0_loads_and_answers_unchanged() {
    let (report, health) = imbed::check_plugin(&imbed_tests::component("legacy-v0-1"))
        .await
        .unwrap();
    assert_eq!(report.contract.as_deref(), Some("0.1.0"));
    assert!(report
        .imports
        .iter()
        .any(|i| i == "imbed:plugin/host@0.1.0"));
    match health {
        PluginHealth::Ready { name, roles, .. } => {
            assert_eq!(name, "legacy");
            assert!(roles.describer && roles.text_embedder && !roles.image_embedder);
        }
        PluginHealth::Failed { message, .. } => panic!("does not load: {message}"),
    }

    let cfg = TestConfig::new()
        .plugin("legacy", legacy())
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("legacy", "legacy")
        .hash("hash");
    let imbed = Imbed::new(cfg.build()).await.unwrap();
    let (e, _) = embed_png(&imbed, 64, 48, 1).await;
    let p = &e.provenance;
    assert_eq!(
        (p.step, p.space.as_str()),
        (0, "legacy/letters@1:26"),
        "{:?}",
        p.attempts
    );
    let d = p.description.as_ref().unwrap();
    assert_eq!(d.text, "a legacy description of a 64x48 image");
    // 0.1.0 cannot be told the purpose: the text went as it was, and no prefix is claimed.
    assert_eq!(
        (d.purpose, d.prefix.as_deref()),
        (Some(Purpose::Document), None)
    );
    assert!(cosine(&e.vector, &letters(&d.text)) > 0.9999);
    let q = imbed.embed_text("a legacy description").await.unwrap();
    assert!(cosine(&q.vector, &letters("a legacy description")) > 0.9999);
    // Items fail alone, as in 0.1.0.
    let both = imbed
        .embed_texts(&["abc".to_string(), "123".to_string()])
        .await;
    assert_eq!(both[0].as_ref().unwrap().provenance.step, 0);
    assert_eq!(
        both[1].as_ref().unwrap().provenance.step_kind,
        StepKind::Hash
    );
    // It has no health export: the host says so instead of guessing.
    let checks = imbed.plugin_checks().await;
    let l = checks.iter().find(|c| c.plugin == "legacy").unwrap();
    assert_eq!((l.contract, l.reported), ("0.1.0", false));
    assert_eq!(l.status(), HealthStatus::Unknown);
}
