//! The Ollama stand-in itself, over a real socket: the routes, the exact statuses and error
//! texts of the real API, streaming, content that depends on what was sent, and the knobs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use image::{Rgb, RgbImage};
use imbed_tests::images;
use imbed_tests::ollama::{
    describe_image, short_sha256, Failure, ModelSpec, NanMode, OllamaStandIn, Route,
    CONTEXT_EXCEEDED, MID_STREAM_ERROR, MULTIMODAL_UNSUPPORTED, NAN_ERROR, NO_EMBEDDINGS,
    QUEUE_FULL,
};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("http client")
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Status first, then the exact `error` text.
    #[track_caller]
    fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        assert_eq!(self.json()["error"], error, "body: {}", self.text);
    }

    #[track_caller]
    fn lines(&self) -> Vec<Value> {
        self.text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
            .collect()
    }
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.expect("body");
    Answer {
        status,
        content_type,
        text,
    }
}

async fn post(o: &OllamaStandIn, path: &str, body: impl Into<String>) -> Answer {
    let resp = client(Duration::from_secs(5))
        .post(o.url(path))
        .header("content-type", "application/json")
        .body(body.into())
        .send()
        .await
        .expect("request");
    answer(resp).await
}

async fn post_json(o: &OllamaStandIn, path: &str, body: &Value) -> Answer {
    post(o, path, body.to_string()).await
}

async fn get(o: &OllamaStandIn, path: &str) -> Answer {
    let resp = client(Duration::from_secs(5))
        .get(o.url(path))
        .send()
        .await
        .expect("request");
    answer(resp).await
}

/// `stream: false` generate; the whole text.
async fn describe(o: &OllamaStandIn, model: &str, prompt: &str, image: &[u8]) -> String {
    let a = post_json(
        o,
        "/api/generate",
        &json!({ "model": model, "prompt": prompt, "images": [b64(image)], "stream": false }),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.json()["response"].as_str().expect("response").to_string()
}

async fn embed(o: &OllamaStandIn, body: Value) -> Vec<Vec<f32>> {
    let a = post_json(o, "/api/embed", &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    serde_json::from_value(a.json()["embeddings"].clone()).expect("embeddings")
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn metadata_routes() {
    let o = OllamaStandIn::start();
    let root = get(&o, "/").await;
    assert_eq!(
        (root.status, root.text.as_str()),
        (200, "Ollama is running")
    );
    assert!(root.content_type.starts_with("text/plain"));
    let head = client(Duration::from_secs(5))
        .head(o.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);

    assert_eq!(
        get(&o, "/api/version").await.json(),
        json!({ "version": "0.33.0" })
    );
    o.set_version("0.29.1");
    assert_eq!(get(&o, "/api/version").await.json()["version"], "0.29.1");

    let tags = get(&o, "/api/tags").await.json();
    let models = tags["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "llava:latest",
            "llama3.2-vision:latest",
            "llama3.2:latest",
            "nomic-embed-text:latest",
            "mxbai-embed-large:latest",
            "all-minilm:latest"
        ]
    );
    let llava = &models[0];
    for key in [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "capabilities",
        "modified_at",
    ] {
        assert!(llava.get(key).is_some(), "tags entry lacks {key}: {llava}");
    }
    assert_eq!(llava["capabilities"], json!(["completion", "vision"]));
    assert_eq!(models[2]["capabilities"], json!(["completion"]));
    assert_eq!(models[3]["capabilities"], json!(["embedding"]));
    assert_eq!(llava["digest"].as_str().unwrap().len(), 64);
    assert_eq!(llava["details"]["format"], "gguf");

    let show = post_json(&o, "/api/show", &json!({ "model": "llava" })).await;
    assert_eq!(show.status, 200);
    let show = show.json();
    assert_eq!(show["capabilities"], json!(["completion", "vision"]));
    assert_eq!(show["details"]["family"], "llama");
    let nomic = post_json(&o, "/api/show", &json!({ "model": "nomic-embed-text" }))
        .await
        .json();
    assert_eq!(nomic["model_info"]["nomic-bert.embedding_length"], 768);
    // The deprecated `name` still works.
    let minilm = post_json(&o, "/api/show", &json!({ "name": "all-minilm:latest" })).await;
    assert_eq!(minilm.json()["model_info"]["bert.embedding_length"], 384);

    post_json(&o, "/api/show", &json!({}))
        .await
        .assert_error(400, "model is required");
    post_json(&o, "/api/show", &json!({ "model": "nope" }))
        .await
        .assert_error(404, "model 'nope:latest' not found");
    post_json(&o, "/api/show", &json!({ "model": "bad name!" }))
        .await
        .assert_error(400, "invalid model name");
    post(&o, "/api/show", "")
        .await
        .assert_error(400, "missing request body");

    let custom = OllamaStandIn::builder()
        .version("0.5.7")
        .models(vec![ModelSpec::embedding("only-one", 8)])
        .start();
    assert_eq!(
        get(&custom, "/api/version").await.json()["version"],
        "0.5.7"
    );
    let tags = get(&custom, "/api/tags").await.json();
    assert_eq!(tags["models"][0]["name"], "only-one:latest");
    assert_eq!(tags["models"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_plain_text() {
    let o = OllamaStandIn::start();
    for path in ["/api/nope", "/nope", "/api"] {
        let a = get(&o, path).await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (404, "404 page not found"),
            "{path}"
        );
        assert!(
            a.content_type.starts_with("text/plain"),
            "{}",
            a.content_type
        );
    }
    let a = get(&o, "/api/generate").await;
    assert_eq!((a.status, a.text.as_str()), (405, "405 method not allowed"));
    assert!(a.content_type.starts_with("text/plain"));
    let a = post(&o, "/api/tags", "{}").await;
    assert_eq!((a.status, a.text.as_str()), (405, "405 method not allowed"));
    let log = o.requests();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|r| r.route.is_none()));
    assert_eq!(log[3].status, Some(405));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streams_ndjson_by_default() {
    let o = OllamaStandIn::start();
    let png = images::png(64, 48, 1);
    let body =
        json!({ "model": "llava", "prompt": "What is in this picture?", "images": [b64(&png)] });
    let a = post_json(&o, "/api/generate", &body).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/x-ndjson");
    let lines = a.lines();
    assert!(lines.len() >= 3, "{}", a.text);
    let (last, pieces) = lines.split_last().unwrap();
    for l in pieces {
        assert_eq!(l["done"], false);
        assert_eq!(l["model"], "llava");
        assert!(l["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(l.get("done_reason").is_none());
    }
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["response"], "");
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(last[key].as_u64().unwrap() > 0, "{key} in {last}");
    }
    assert_eq!(last["eval_count"].as_u64().unwrap() as usize, pieces.len());
    let streamed: String = pieces
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    // The same request without streaming gives the same text in one object.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let single = post_json(&o, "/api/generate", &whole).await;
    assert!(single.content_type.starts_with("application/json"));
    let single = single.json();
    assert_eq!(single["done"], true);
    assert_eq!(single["done_reason"], "stop");
    assert_eq!(single["response"], streamed.as_str());
    assert!(single["total_duration"].as_u64().unwrap() > 0);

    // Lines really are sent one by one.
    o.set_token_delay(Duration::from_millis(20));
    let resp = client(Duration::from_secs(5))
        .post(o.url("/api/generate"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let mut stream = resp.bytes_stream();
    let mut first = None;
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        first.get_or_insert_with(|| started.elapsed());
        text.extend_from_slice(&chunk.unwrap());
    }
    let total = started.elapsed();
    let first = first.unwrap();
    assert!(
        total >= first + Duration::from_millis(20 * (pieces.len() as u64 - 1)),
        "{first:?} {total:?}"
    );
    assert_eq!(
        String::from_utf8(text).unwrap().lines().count(),
        lines.len()
    );
}

#[tokio::test]
async fn descriptions_depend_on_the_image_bytes_and_the_prompt() {
    let o = OllamaStandIn::start();
    let png = images::png(64, 48, 1);
    let text = describe(
        &o,
        "llava",
        "Describe this picture in one short sentence please",
        &png,
    )
    .await;
    let sentence = describe_image(&png).unwrap();
    assert!(sentence.starts_with("A 64x48 image, mostly "), "{sentence}");
    assert!(sentence.ends_with(&format!("sha256 {}.", short_sha256(&png))));
    assert_eq!(
        text,
        format!("{sentence} Prompt: \"Describe this picture in one short sentence please\".")
    );

    // One pixel changed: a different description, same size.
    let mut img = images::picture(64, 48, 1);
    img.put_pixel(10, 10, Rgb([0, 255, 0]));
    let changed = describe(
        &o,
        "llava",
        "Describe this picture in one short sentence please",
        &images::png_of(&img),
    )
    .await;
    assert_ne!(text, changed);
    assert!(changed.starts_with("A 64x48 image"));

    // The dominant colour and the size come from the decoded image, whatever its format.
    let red = RgbImage::from_pixel(20, 30, Rgb([220, 20, 20]));
    let jpeg = images::jpeg_of(&red, 90);
    let t = describe(&o, "llama3.2-vision", "what colour?", &jpeg).await;
    assert!(t.starts_with("A 20x30 image, mostly red, sha256 "), "{t}");
    assert!(t.contains(&short_sha256(&jpeg)));

    // Line breaks inside the base64 are skipped, as Go's decoder does.
    let wrapped: String = b64(&png)
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let a = post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "x", "images": [wrapped], "stream": false }),
    )
    .await;
    assert!(a.json()["response"]
        .as_str()
        .unwrap()
        .starts_with(&sentence));

    // Two images: both described, in order.
    let second = images::png(32, 32, 2);
    let a = post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "compare", "images": [b64(&png), b64(&second)], "stream": false }),
    )
    .await
    .json();
    let t = a["response"].as_str().unwrap();
    assert!(
        t.starts_with("Image 1: A 64x48 image") && t.contains("Image 2: A 32x32 image"),
        "{t}"
    );
    assert!(a["prompt_eval_count"].as_u64().unwrap() > 1000);
}

#[tokio::test]
async fn chat_streams_message_content() {
    let o = OllamaStandIn::start();
    let png = images::png(40, 40, 3);
    let body = json!({
        "model": "llava:latest",
        "messages": [
            { "role": "system", "content": "You describe images." },
            { "role": "user", "content": "Describe it", "images": [b64(&png)] },
        ],
    });
    let a = post_json(&o, "/api/chat", &body).await;
    assert_eq!(
        (a.status, a.content_type.as_str()),
        (200, "application/x-ndjson")
    );
    let lines = a.lines();
    assert!(lines.len() >= 3);
    let (last, pieces) = lines.split_last().unwrap();
    assert!(pieces
        .iter()
        .all(|l| l["message"]["role"] == "assistant" && l["done"] == false));
    let text: String = pieces
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        text,
        format!("{} Prompt: \"Describe it\".", describe_image(&png).unwrap())
    );
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(
        last["message"],
        json!({ "role": "assistant", "content": "" })
    );
    assert!(last["eval_duration"].as_u64().unwrap() > 0);

    let mut whole = body;
    whole["stream"] = json!(false);
    let single = post_json(&o, "/api/chat", &whole).await.json();
    assert_eq!(single["message"]["content"], text.as_str());
    assert_eq!(single["message"]["role"], "assistant");

    // A text-only model chats without images.
    let a = post_json(
        &o,
        "/api/chat",
        &json!({ "model": "llama3.2", "stream": false, "messages": [{ "role": "user", "content": "hello there" }] }),
    )
    .await;
    assert_eq!(
        a.json()["message"]["content"],
        "No image was provided. Prompt: \"hello there\"."
    );
}

#[tokio::test]
async fn json_format_answers_a_json_object() {
    let o = OllamaStandIn::start();
    let png = images::png(64, 48, 2);
    let schema = json!({ "type": "object", "properties": { "description": { "type": "string" } } });
    for format in [json!("json"), schema] {
        let a = post_json(
            &o,
            "/api/generate",
            &json!({ "model": "llava", "prompt": "Describe as JSON", "images": [b64(&png)], "format": format, "stream": false }),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        let inner: Value = serde_json::from_str(a.json()["response"].as_str().unwrap()).unwrap();
        assert!(inner["description"]
            .as_str()
            .unwrap()
            .starts_with(&describe_image(&png).unwrap()));
        assert!(!inner["objects"].as_array().unwrap().is_empty());
        assert_eq!(inner["visible_text"], "");
        let tags = inner["tags"].as_array().unwrap();
        assert!(tags.contains(&json!("64x48")) && tags.contains(&json!("landscape")));
    }
    post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "x", "format": "xml", "stream": false }),
    )
    .await
    .assert_error(
        500,
        "invalid format: \"\\\"xml\\\"\"; expected \"json\" or a valid JSON Schema object",
    );
}

#[tokio::test]
async fn empty_prompts_load_and_keep_alive_zero_unloads() {
    let o = OllamaStandIn::start();
    // Loading answers one JSON object even though streaming is the default.
    let a = post_json(&o, "/api/generate", &json!({ "model": "llava" })).await;
    assert!(a.content_type.starts_with("application/json"));
    let v = a.json();
    assert_eq!(
        (v["done"].clone(), v["done_reason"].clone()),
        (json!(true), json!("load"))
    );
    assert_eq!(v["response"], "");
    let v = post_json(
        &o,
        "/api/chat",
        &json!({ "model": "llava", "messages": [] }),
    )
    .await
    .json();
    assert_eq!(v["done_reason"], "load");
    assert_eq!(v["message"], json!({ "role": "assistant", "content": "" }));
    for keep_alive in [json!(0), json!("0s")] {
        let v = post_json(
            &o,
            "/api/generate",
            &json!({ "model": "llava", "keep_alive": keep_alive }),
        )
        .await
        .json();
        assert_eq!(v["done_reason"], "unload");
    }
    post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "keep_alive": "5x" }),
    )
    .await
    .assert_error(400, "time: unknown unit \"x\" in duration \"5x\"");
    // num_predict cuts the answer short.
    let v = post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llama3.2", "prompt": "tell me a long story", "stream": false, "options": { "num_predict": 2 } }),
    )
    .await
    .json();
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["eval_count"], 2);
    assert_eq!(v["response"], "No image ");
}

#[tokio::test]
async fn request_errors_have_the_real_statuses_and_texts() {
    let o = OllamaStandIn::start();
    let long = vec!["word"; 300].join(" ");
    let cases: Vec<(&str, String, u16, String)> = vec![
        // Bodies.
        ("/api/generate", "".into(), 400, "missing request body".into()),
        ("/api/chat", "  \n".into(), 400, "missing request body".into()),
        ("/api/embed", "".into(), 400, "missing request body".into()),
        ("/api/embeddings", "".into(), 400, "missing request body".into()),
        ("/api/generate", "{\"model\":".into(), 400, "unexpected EOF".into()),
        ("/api/embed", "hello".into(), 400, "invalid character 'h' looking for beginning of value".into()),
        ("/api/chat", "{\"model\":\"llava\",}".into(), 400, "invalid character '}' looking for beginning of object key string".into()),
        ("/api/generate", json!({ "model": "llava", "stream": "yes" }).to_string(), 400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool".into()),
        ("/api/embed", "[1]".into(), 400, "json: cannot unmarshal array into Go value of type api.EmbedRequest".into()),
        // Missing model.
        ("/api/generate", json!({ "prompt": "hi" }).to_string(), 404, "model '' not found".into()),
        ("/api/embed", json!({ "input": "hi" }).to_string(), 404, "model '' not found".into()),
        ("/api/chat", json!({ "messages": [] }).to_string(), 400, "model is required".into()),
        ("/api/embeddings", json!({ "prompt": "hi" }).to_string(), 400, "model is required".into()),
        // Unknown model.
        ("/api/generate", json!({ "model": "nope", "prompt": "hi" }).to_string(), 404, "model 'nope' not found".into()),
        ("/api/chat", json!({ "model": "nope" }).to_string(), 404, "model 'nope' not found".into()),
        ("/api/embed", json!({ "model": "nope", "input": "hi" }).to_string(), 404,
            "model \"nope\" not found, try pulling it first".into()),
        ("/api/embeddings", json!({ "model": "nope", "prompt": "hi" }).to_string(), 404,
            "model \"nope\" not found, try pulling it first".into()),
        // Wrong kind of model.
        ("/api/generate", json!({ "model": "nomic-embed-text", "prompt": "hi" }).to_string(), 400,
            "\"nomic-embed-text\" does not support generate".into()),
        ("/api/chat", json!({ "model": "all-minilm", "messages": [{ "role": "user", "content": "hi" }] }).to_string(), 400,
            "\"all-minilm\" does not support chat".into()),
        ("/api/embed", json!({ "model": "llava", "input": "hi" }).to_string(), 501, NO_EMBEDDINGS.into()),
        ("/api/embeddings", json!({ "model": "llama3.2", "prompt": "hi" }).to_string(), 500, NO_EMBEDDINGS.into()),
        // Embedding inputs; the input's type is checked before the model.
        ("/api/embed", json!({ "model": "nomic-embed-text", "input": 5 }).to_string(), 400, "invalid input type".into()),
        ("/api/embed", json!({ "model": "nomic-embed-text", "input": ["a", 1] }).to_string(), 400, "invalid input type".into()),
        ("/api/embed", json!({ "input": { "a": 1 } }).to_string(), 400, "invalid input type".into()),
        ("/api/embed", json!({ "model": "all-minilm", "input": long, "truncate": false }).to_string(), 400, CONTEXT_EXCEEDED.into()),
        ("/api/embed", json!({ "model": "nomic-embed-text", "input": ["ok", "a b c"], "truncate": false, "options": { "num_ctx": 2 } }).to_string(), 400,
            CONTEXT_EXCEEDED.into()),
        ("/api/embed", json!({ "model": "nomic-embed-text", "input": "x", "dimensions": 1.5 }).to_string(), 400,
            "json: cannot unmarshal number 1.5 into Go struct field EmbedRequest.dimensions of type int".into()),
    ];
    for (path, body, status, error) in &cases {
        let a = post(&o, path, body.clone()).await;
        assert_eq!(a.status, *status, "{path} {body}: {}", a.text);
        assert!(
            a.content_type.starts_with("application/json"),
            "{path} {body}"
        );
        assert_eq!(a.json()["error"], error.as_str(), "{path} {body}");
    }
    // Every one of them was counted on its route.
    let total: usize = Route::ALL.iter().map(|r| o.hits(*r)).sum();
    assert_eq!(total, cases.len());
    assert!(o
        .requests()
        .iter()
        .all(|r| r.status.is_some_and(|s| s >= 400)));
    // With truncation (the default) a long input is fine.
    let v = embed(&o, json!({ "model": "all-minilm", "input": long })).await;
    assert_eq!(v[0].len(), 384);
}

#[tokio::test]
async fn image_errors() {
    let o = OllamaStandIn::start();
    let gen = |images: Value| json!({ "model": "llava", "prompt": "describe", "images": images, "stream": false });
    let png_b64 = b64(&images::png(8, 8, 1));
    let cases = [
        // A data: URI is not base64.
        (format!("data:image/png;base64,{png_b64}"), 4),
        // URL-safe alphabet.
        ("-_8=".to_string(), 0),
        (
            format!("{}-", &png_b64[..png_b64.len() - 4]),
            png_b64.len() - 4,
        ),
        // Missing padding ("QUJDREU=" is "ABCDE").
        ("QUJDREU".to_string(), 4),
        ("QQ".to_string(), 0),
        // Spaces.
        ("QUJD QUJD".to_string(), 4),
    ];
    for (image, at) in &cases {
        post_json(&o, "/api/generate", &gen(json!([image])))
            .await
            .assert_error(400, &format!("illegal base64 data at input byte {at}"));
    }
    // The same check inside chat messages, and it comes before the model lookup.
    post_json(
        &o,
        "/api/chat",
        &json!({ "model": "nope", "messages": [{ "role": "user", "content": "x", "images": ["QQ"] }] }),
    )
    .await
    .assert_error(400, "illegal base64 data at input byte 0");
    post_json(&o, "/api/generate", &gen(json!("QUJD")))
        .await
        .assert_error(400, "json: cannot unmarshal string into Go struct field GenerateRequest.images of type []api.ImageData");

    // Valid base64, not an image: the runner fails.
    let a = post_json(
        &o,
        "/api/generate",
        &gen(json!([b64(b"not an image at all")])),
    )
    .await;
    assert_eq!(a.status, 500);
    let error = a.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("could not be decoded"), "{error}");

    // Images to a text-only model: the runner's own JSON as the error text.
    for (path, body) in [
        (
            "/api/generate",
            json!({ "model": "llama3.2", "prompt": "x", "images": [png_b64] }),
        ),
        (
            "/api/chat",
            json!({ "model": "llama3.2", "messages": [{ "role": "user", "content": "x", "images": [png_b64] }] }),
        ),
    ] {
        let a = post_json(&o, path, &body).await;
        assert_eq!(a.status, 400, "{}", a.text);
        let error = a.json()["error"].as_str().unwrap().to_string();
        let inner: Value = serde_json::from_str(&error).expect("the error text is JSON");
        assert!(inner.to_string().contains(MULTIMODAL_UNSUPPORTED));
    }
}

#[tokio::test]
async fn embed_returns_normalised_vectors_that_follow_the_words() {
    let o = OllamaStandIn::start();
    let texts = [
        "a red bicycle leaning on a brick wall",
        "a red bicycle parked in the street",
        "quarterly tax report spreadsheet",
    ];
    let a = post_json(
        &o,
        "/api/embed",
        &json!({ "model": "nomic-embed-text", "input": texts }),
    )
    .await;
    let v = a.json();
    assert_eq!(v["model"], "nomic-embed-text");
    assert!(v["total_duration"].as_u64().unwrap() > 0);
    assert!(v["load_duration"].as_u64().unwrap() > 0);
    assert_eq!(v["prompt_eval_count"], 8 + 7 + 4);
    let e: Vec<Vec<f32>> = serde_json::from_value(v["embeddings"].clone()).unwrap();
    assert_eq!(e.len(), 3);
    for x in &e {
        assert_eq!(x.len(), 768);
        assert!((norm(x) - 1.0).abs() < 1e-4);
    }
    assert!(dot(&e[0], &e[1]) > dot(&e[0], &e[2]) + 0.2);
    assert!(dot(&e[1], &e[2]) < 0.3);
    // Deterministic, and the same for a single string.
    let one = embed(
        &o,
        json!({ "model": "nomic-embed-text", "input": texts[0] }),
    )
    .await;
    assert_eq!(one, vec![e[0].clone()]);
    assert_eq!(
        o.expected_embedding("nomic-embed-text", texts[0]).unwrap(),
        e[0]
    );
    // Each model has its own space and dimension.
    assert_eq!(
        embed(&o, json!({ "model": "mxbai-embed-large", "input": "x" })).await[0].len(),
        1024
    );
    assert_eq!(
        embed(&o, json!({ "model": "all-minilm", "input": "x" })).await[0].len(),
        384
    );
    // `dimensions` truncates and renormalises.
    let short = embed(
        &o,
        json!({ "model": "nomic-embed-text", "input": texts[0], "dimensions": 256 }),
    )
    .await;
    assert_eq!(short[0].len(), 256);
    assert!((norm(&short[0]) - 1.0).abs() < 1e-4);
    // Empty input: no vectors.
    for input in [json!(""), json!([]), Value::Null] {
        let a = post_json(
            &o,
            "/api/embed",
            &json!({ "model": "nomic-embed-text", "input": input }),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.json(),
            json!({ "model": "nomic-embed-text", "embeddings": [] })
        );
    }
    // A completion model with empty input is loaded, not refused.
    let a = post_json(&o, "/api/embed", &json!({ "model": "llava", "input": [] })).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn legacy_embeddings_route() {
    let o = OllamaStandIn::start();
    let a = post_json(
        &o,
        "/api/embeddings",
        &json!({ "model": "nomic-embed-text", "prompt": "hello world" }),
    )
    .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["embedding"]
    );
    let raw: Vec<f64> = serde_json::from_value(v["embedding"].clone()).unwrap();
    assert_eq!(raw.len(), 768);
    let raw: Vec<f32> = raw.iter().map(|x| *x as f32).collect();
    // Not normalised for nomic-embed-text, but the same direction as /api/embed.
    let n = norm(&raw);
    assert!(n > 5.0, "norm {n}");
    let unit: Vec<f32> = raw.iter().map(|x| x / n).collect();
    let modern = embed(
        &o,
        json!({ "model": "nomic-embed-text", "input": "hello world" }),
    )
    .await;
    assert!(dot(&unit, &modern[0]) > 0.9999);
    // Normalised for BERT models.
    let v = post_json(
        &o,
        "/api/embeddings",
        &json!({ "model": "all-minilm", "prompt": "hello world" }),
    )
    .await
    .json();
    let e: Vec<f32> = serde_json::from_value(v["embedding"].clone()).unwrap();
    assert_eq!(e.len(), 384);
    assert!((norm(&e) - 1.0).abs() < 1e-4);
    // An empty prompt only loads the model.
    let v = post_json(
        &o,
        "/api/embeddings",
        &json!({ "model": "all-minilm", "prompt": "" }),
    )
    .await
    .json();
    assert_eq!(v, json!({ "embedding": [] }));
}

#[tokio::test]
async fn legacy_server_has_no_embed_route() {
    let o = OllamaStandIn::start();
    o.set_legacy(true);
    let a = post_json(
        &o,
        "/api/embed",
        &json!({ "model": "nomic-embed-text", "input": "x" }),
    )
    .await;
    assert_eq!((a.status, a.text.as_str()), (404, "404 page not found"));
    assert!(a.content_type.starts_with("text/plain"));
    assert_eq!(o.hits(Route::Embed), 1);
    let a = post_json(
        &o,
        "/api/embeddings",
        &json!({ "model": "nomic-embed-text", "prompt": "x" }),
    )
    .await;
    assert_eq!(a.status, 200);
    o.set_legacy(false);
    assert_eq!(
        post_json(
            &o,
            "/api/embed",
            &json!({ "model": "nomic-embed-text", "input": "x" })
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn nan_embeddings_are_refused_unless_told_to_misbehave() {
    let o = OllamaStandIn::start();
    let body = json!({ "model": "nomic-embed-text", "input": ["fine", "bad __nan__ item"] });
    post_json(&o, "/api/embed", &body)
        .await
        .assert_error(500, NAN_ERROR);
    post_json(
        &o,
        "/api/embeddings",
        &json!({ "model": "all-minilm", "prompt": "__nan__" }),
    )
    .await
    .assert_error(500, NAN_ERROR);

    o.set_nan_mode(NanMode::Null);
    let v = post_json(&o, "/api/embed", &body).await.json();
    assert!(v["embeddings"][0][0].is_number());
    assert!(v["embeddings"][1][0].is_null());
    assert!(v["embeddings"][1][1].is_number());

    o.set_nan_mode(NanMode::Literal);
    let a = post_json(&o, "/api/embed", &body).await;
    assert_eq!(a.status, 200);
    assert!(
        a.text.contains("[NaN,"),
        "{}",
        &a.text[..200.min(a.text.len())]
    );
    assert!(serde_json::from_str::<Value>(&a.text).is_err());
}

#[tokio::test]
async fn latency_and_cold_start() {
    let o = OllamaStandIn::start();
    // Delays far above a local round trip, so the "at once" checks hold on a loaded machine.
    o.set_latency(Duration::from_millis(800));
    let t = Instant::now();
    let a = post_json(
        &o,
        "/api/embed",
        &json!({ "model": "all-minilm", "input": "x" }),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(800));
    // A bad request is refused at once, before the scheduler.
    let t = Instant::now();
    post(&o, "/api/embed", "")
        .await
        .assert_error(400, "missing request body");
    assert!(t.elapsed() < Duration::from_millis(800));
    o.set_latency(Duration::ZERO);

    o.set_cold_start(Duration::from_millis(800));
    let t = Instant::now();
    let v = post_json(
        &o,
        "/api/embed",
        &json!({ "model": "nomic-embed-text", "input": "x" }),
    )
    .await
    .json();
    assert!(t.elapsed() >= Duration::from_millis(800));
    assert!(v["load_duration"].as_u64().unwrap() >= 800_000_000);
    let t = Instant::now();
    let v = post_json(
        &o,
        "/api/embed",
        &json!({ "model": "nomic-embed-text", "input": "x" }),
    )
    .await
    .json();
    assert!(t.elapsed() < Duration::from_millis(800));
    assert!(v["load_duration"].as_u64().unwrap() < 800_000_000);
    // all-minilm was loaded before the cold start was set.
    let t = Instant::now();
    post_json(
        &o,
        "/api/embed",
        &json!({ "model": "all-minilm", "input": "x" }),
    )
    .await;
    assert!(t.elapsed() < Duration::from_millis(800));
    o.unload_models();
    let v = post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llama3.2", "prompt": "hi", "stream": false }),
    )
    .await
    .json();
    assert!(v["load_duration"].as_u64().unwrap() >= 300_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_holds_requests_until_released() {
    let o = OllamaStandIn::start();
    o.set_hang(true);
    let body = json!({ "model": "all-minilm", "input": "x" });
    let err = client(Duration::from_millis(300))
        .post(o.url("/api/embed"))
        .body(body.to_string())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let url = o.url("/api/embed");
    let waiting = tokio::spawn(async move {
        client(Duration::from_secs(5))
            .post(url)
            .body(body.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    assert!(o.in_flight() >= 1);
    // Metadata routes still answer, as a real server does while a model load is stuck.
    assert_eq!(get(&o, "/api/tags").await.status, 200);
    assert_eq!(o.requests_to(Route::Embed).last().unwrap().status, None);
    o.set_hang(false);
    let status = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn failures_are_injected_reproducibly() {
    let o = OllamaStandIn::start();
    let body = json!({ "model": "all-minilm", "input": "x" });
    o.set_failure_rate(1.0);
    post_json(&o, "/api/embed", &body)
        .await
        .assert_error(503, QUEUE_FULL);
    // Validation still comes first, and metadata routes never fail.
    post(&o, "/api/embed", "")
        .await
        .assert_error(400, "missing request body");
    assert_eq!(get(&o, "/api/tags").await.status, 200);

    let run = || async {
        let mut statuses = Vec::new();
        for _ in 0..16 {
            statuses.push(post_json(&o, "/api/embed", &body).await.status);
        }
        statuses
    };
    o.set_failure_rate(0.5);
    let first = run().await;
    o.set_failure_rate(0.5);
    let second = run().await;
    assert_eq!(first, second);
    assert!(first.contains(&503) && first.contains(&200), "{first:?}");

    o.set_failure_rate(0.0);
    o.set_failure(Failure::Status {
        status: 500,
        error: "boom".into(),
    });
    o.fail_next(2);
    let gen = json!({ "model": "llama3.2", "prompt": "hi", "stream": false });
    post_json(&o, "/api/generate", &gen)
        .await
        .assert_error(500, "boom");
    post_json(&o, "/api/generate", &gen)
        .await
        .assert_error(500, "boom");
    assert_eq!(post_json(&o, "/api/generate", &gen).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let o = OllamaStandIn::start();
    o.set_max_queue(Some(1));
    o.set_hang(true);
    let url = o.url("/api/generate");
    let body = json!({ "model": "llava", "prompt": "hi", "stream": false });
    let first = {
        let body = body.clone();
        tokio::spawn(async move {
            client(Duration::from_secs(5))
                .post(url)
                .body(body.to_string())
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let t = Instant::now();
    while o.in_flight() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the first request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    post_json(&o, "/api/generate", &body)
        .await
        .assert_error(503, QUEUE_FULL);
    o.set_hang(false);
    assert_eq!(first.await.unwrap().unwrap(), 200);
    assert_eq!(post_json(&o, "/api/generate", &body).await.status, 200);
    assert_eq!(o.peak_in_flight(), 1);
}

#[tokio::test]
async fn errors_can_arrive_mid_stream() {
    let o = OllamaStandIn::start();
    o.set_error_mid_stream(true);
    let png = b64(&images::png(16, 16, 1));
    let a = post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "x", "images": [png] }),
    )
    .await;
    assert_eq!(a.status, 200);
    let lines = a.lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["done"], false);
    assert!(lines[0]["response"].is_string());
    assert_eq!(lines[1], json!({ "error": MID_STREAM_ERROR }));
    let a = post_json(
        &o,
        "/api/chat",
        &json!({ "model": "llava", "messages": [{ "role": "user", "content": "x" }] }),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.lines()[1], json!({ "error": MID_STREAM_ERROR }));
    post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "x", "stream": false }),
    )
    .await
    .assert_error(500, MID_STREAM_ERROR);
}

#[tokio::test]
async fn counters_and_request_log() {
    let o = OllamaStandIn::start();
    let png = b64(&images::png(16, 16, 1));
    get(&o, "/api/version").await;
    get(&o, "/api/tags").await;
    post_json(&o, "/api/show", &json!({ "model": "llava" })).await;
    post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "a", "images": [png], "stream": false }),
    )
    .await;
    post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "b", "stream": false }),
    )
    .await;
    post_json(&o, "/api/chat", &json!({ "model": "llava", "stream": false, "messages": [{ "role": "user", "content": "c", "images": [png, png] }] })).await;
    post_json(&o, "/api/chat", &json!({ "model": "nope" })).await;
    post_json(
        &o,
        "/api/embed",
        &json!({ "model": "all-minilm", "input": ["a", "b"] }),
    )
    .await;
    post_json(
        &o,
        "/api/embeddings",
        &json!({ "model": "all-minilm", "prompt": "a" }),
    )
    .await;
    let counts: Vec<(&str, usize)> = Route::ALL.iter().map(|r| (r.name(), o.hits(*r))).collect();
    assert_eq!(
        counts,
        [
            ("root", 0),
            ("version", 1),
            ("tags", 1),
            ("show", 1),
            ("generate", 2),
            ("chat", 2),
            ("embed", 1),
            ("embeddings", 1)
        ]
    );
    assert_eq!(o.vision_calls(), 2);
    let chats = o.requests_to(Route::Chat);
    assert_eq!(chats[0].images, 2);
    assert_eq!(chats[0].method, "POST");
    assert_eq!(chats[0].path, "/api/chat");
    assert_eq!(chats[0].status, Some(200));
    assert_eq!(chats[1].status, Some(404));
    assert_eq!(chats[1].field("model"), Some("nope"));
    assert_eq!(chats[0].header("content-type"), Some("application/json"));
    let embed = &o.requests_to(Route::Embed)[0];
    assert_eq!(embed.body.as_ref().unwrap()["input"], json!(["a", "b"]));
    o.reset_log();
    assert!(o.requests().is_empty());
    assert_eq!(o.hits(Route::Generate), 0);
}

#[tokio::test]
async fn models_can_be_added_and_removed() {
    let o = OllamaStandIn::start();
    assert!(o.remove_model("llava"));
    assert!(!o.remove_model("llava"));
    post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llava", "prompt": "x" }),
    )
    .await
    .assert_error(404, "model 'llava' not found");
    o.add_model(ModelSpec::embedding("tiny-embed:v1", 16).with_context_length(3));
    let v = embed(
        &o,
        json!({ "model": "tiny-embed:v1", "input": "one two three four" }),
    )
    .await;
    assert_eq!(v[0].len(), 16);
    post_json(
        &o,
        "/api/embed",
        &json!({ "model": "tiny-embed:v1", "input": "one two three four", "truncate": false }),
    )
    .await
    .assert_error(400, CONTEXT_EXCEEDED);
    // Names resolve as Ollama resolves them.
    for name in [
        "LLaMA3.2",
        "llama3.2:latest",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
    ] {
        let a = post_json(
            &o,
            "/api/generate",
            &json!({ "model": name, "prompt": "x", "stream": false }),
        )
        .await;
        assert_eq!(a.status, 200, "{name}");
        assert_eq!(a.json()["model"], name);
    }
    post_json(
        &o,
        "/api/generate",
        &json!({ "model": "llama3.2:1b", "prompt": "x" }),
    )
    .await
    .assert_error(404, "model 'llama3.2:1b' not found");
    assert_eq!(o.models().len(), 6);
}

#[tokio::test]
async fn dropping_does_not_wait_for_hung_requests() {
    let o = OllamaStandIn::start();
    o.set_hang(true);
    let url = o.url("/api/embed");
    let pending = tokio::spawn(async move {
        client(Duration::from_secs(10))
            .post(url)
            .body(json!({ "model": "all-minilm", "input": "x" }).to_string())
            .send()
            .await
    });
    let t = Instant::now();
    while o.in_flight() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    drop(o);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    // The hung client sees the connection close instead of waiting out its timeout.
    let result = tokio::time::timeout(Duration::from_secs(3), pending)
        .await
        .expect("the client was let go")
        .unwrap();
    assert!(result.is_err());
}

/// No runtime at all on the caller's side: the stand-in brings its own.
#[test]
fn serves_plain_threads_without_a_runtime() {
    let o = OllamaStandIn::start();
    let exchange = |request: String| {
        let mut s = TcpStream::connect(o.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let out = exchange("GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into());
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("{\"version\":\"0.33.0\"}"), "{out}");
    let body = json!({ "model": "all-minilm", "input": "hi" }).to_string();
    let out = exchange(format!(
        "POST /api/embed HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"embeddings\":[["));
}
