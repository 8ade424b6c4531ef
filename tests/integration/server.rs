//! `imbed serve` through a real socket, and its router without one.

use std::time::{Duration, Instant};

use base64::Engine;
use imbed::server::{app, serve, AppState};
use imbed_tests::{images, PluginSpec, Reply, TestConfig, TestServer};
use serde_json::{json, Value};

struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn config() -> TestConfig {
    TestConfig::new()
        .plugin("vision", PluginSpec::misbehave("ok"))
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("vision", "hash")
        .hash("hash")
}

async fn start(cfg: TestConfig) -> Running {
    start_with(AppState::build(cfg.build()).await.unwrap()).await
}

async fn start_with(state: AppState) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(serve(listener, state, async {
        let _ = rx.await;
    }));
    Running {
        base,
        stop: Some(tx),
        handle,
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes))),
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_embeddings_for_texts_and_images() {
    let s = start(config()).await;
    let (status, v) = post(
        &s.url("/v1/embeddings"),
        json!({ "model": "imbed", "input": "a cat on a laptop" }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 256);
    assert_eq!(v["data"][0]["imbed"]["space"], "imbed-hash/text@v1:256");
    assert_eq!(v["model"], "imbed-hash/text@v1:256");

    let png = images::png(20, 10, 1);
    let input =
        json!(["first text", { "image": format!("data:image/png;base64,{}", b64(&png)) }, "third"]);
    let (status, v) = post(
        &s.url("/v1/embeddings"),
        json!({ "input": input, "encoding_format": "base64" }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(
        data.iter()
            .map(|d| d["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(data[1]["imbed"]["description"]["text"]
        .as_str()
        .unwrap()
        .contains("20 by 10 pixels"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data[0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = raw
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (_, plain) = post(&s.url("/v1/embeddings"), json!({ "input": ["first text"] })).await;
    let expected: Vec<f32> = plain["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, expected);

    // A space as `model` pins it: the hash text space is refused when another is asked for.
    let (status, v) = post(
        &s.url("/v1/embeddings"),
        json!({ "model": "ollama/nomic-embed-text", "input": "x" }),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the requested"),
        "{v}"
    );

    let (status, v) = post(&s.url("/v1/embeddings"), json!({ "input": [1, 2, 3] })).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_compatible_routes() {
    let s = start(config()).await;
    let (status, v) = post(
        &s.url("/api/embed"),
        json!({ "model": "imbed", "input": ["a", "b c"] }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(v["model"], "imbed");
    let (status, v) = post(
        &s.url("/api/embed"),
        json!({ "model": "imbed", "input": "" }),
    )
    .await;
    assert_eq!(
        (status, v["embeddings"].as_array().unwrap().len()),
        (200, 0)
    );
    let (status, v) = post(
        &s.url("/api/embed"),
        json!({ "model": "imbed", "input": 5 }),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid input type"))
    );
    let tags: Value = reqwest::get(s.url("/api/tags"))
        .await
        .unwrap()
        .json_value()
        .await;
    assert_eq!(tags["models"][0]["name"], "imbed:latest");
    let version: Value = reqwest::get(s.url("/api/version"))
        .await
        .unwrap()
        .json_value()
        .await;
    assert!(version["version"].is_string());
    s.shutdown().await;
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_endpoints_json_multipart_batch_and_describe() {
    let s = start(config()).await;
    let png = images::png(30, 20, 2);
    let (status, v) = post(
        &s.url("/embed/image"),
        json!({ "image_base64": b64(&png), "description": "x" }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["provenance"]["step"], 0);

    let mut body = b"--XX\r\ncontent-disposition: form-data; name=\"image\"; filename=\"a.png\"\r\ncontent-type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(&png);
    body.extend_from_slice(b"\r\n--XX--\r\n");
    let r = reqwest::Client::new()
        .post(s.url("/embed/image"))
        .header("content-type", "multipart/form-data; boundary=XX")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v = r.json_value().await;
    assert!(v["provenance"]["description"]["text"]
        .as_str()
        .unwrap()
        .contains("30 by 20"));

    let (status, v) = post(&s.url("/embed/text"), json!({ "texts": ["one", "two"] })).await;
    assert_eq!((status, v["results"].as_array().unwrap().len()), (200, 2));

    let items =
        json!([{ "text": "hello" }, { "image_base64": "%%%" }, { "image_base64": b64(&png) }]);
    let (status, v) = post(&s.url("/embed/batch"), json!({ "items": items })).await;
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert!(results[0]["vector"].is_array());
    assert_eq!(results[1]["error"]["status"], 400);
    assert!(results[2]["vector"].is_array());

    let (status, v) = post(
        &s.url("/describe"),
        json!({ "image_base64": b64(&png), "prompt": "short" }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["description"]["text"],
        "a image/png picture of 30 by 20 pixels (short)"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_cannot_reach_private_addresses() {
    let target = TestServer::start();
    target.route("/cat.png", Reply::ok("image/png", images::png(16, 16, 1)));
    let s = start(config()).await;
    for url in [
        target.url("/cat.png"),
        format!(
            "http://localhost:{}/cat.png",
            target.url("").rsplit(':').next().unwrap()
        ),
        "http://10.0.0.1/x.png".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[::1]/x.png".into(),
        "file:///etc/passwd".into(),
    ] {
        let started = Instant::now();
        let (status, v) = post(&s.url("/embed/image"), json!({ "image_url": url })).await;
        assert_eq!(status, 400, "{url}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("not public")
                || msg.contains("not a public address")
                || msg.contains("use http or https"),
            "{url}: {msg}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(target.hits(), 0, "no request may reach the private server");
    s.shutdown().await;

    // An allowlisted address is reachable.
    let s = start(config().server("url_allow", "[\"127.0.0.1\"]")).await;
    let (status, v) = post(
        &s.url("/embed/image"),
        json!({ "image_url": target.url("/cat.png") }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_private_address_is_refused() {
    let hop = RedirectServer::start("http://10.0.0.1/secret.png");
    let s = start(config().server("url_allow", "[\"127.0.0.1\"]")).await;
    let (status, v) = post(&s.url("/embed/image"), json!({ "image_url": hop.url() })).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("redirect to http://10.0.0.1/secret.png refused"),
        "{v}"
    );
    s.shutdown().await;
}

/// Answers every request with a redirect to `location`.
struct RedirectServer {
    addr: std::net::SocketAddr,
}

impl RedirectServer {
    fn start(location: &str) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let location = location.to_string();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                let _ = write!(stream, "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        RedirectServer { addr }
    }

    fn url(&self) -> String {
        format!("http://{}/start.png", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_slow_downloads_and_bad_bodies() {
    let target = TestServer::start();
    target
        .route("/big.png", Reply::ok("image/png", images::png(200, 200, 1)))
        .route(
            "/slow.png",
            Reply::ok("image/png", images::png(16, 16, 1)).delayed(Duration::from_secs(3)),
        );
    let cfg = config()
        .server("url_allow", "[\"127.0.0.1\"]")
        .input("max_bytes", "1000")
        .input("download_timeout_ms", "300");
    let s = start(cfg).await;
    let (status, v) = post(
        &s.url("/embed/image"),
        json!({ "image_url": target.url("/big.png") }),
    )
    .await;
    assert_eq!(status, 413, "{v}");
    let (status, v) = post(
        &s.url("/embed/image"),
        json!({ "image_url": target.url("/slow.png") }),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no complete answer within 300 ms"),
        "{v}"
    );

    let r = reqwest::Client::new()
        .post(s.url("/v1/embeddings"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v = r.json_value().await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let r = reqwest::Client::new()
        .post(s.url("/api/embed"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json_value().await["error"].is_string());
    let (status, v) = post(&s.url("/embed/image"), json!({ "image_base64": "!!!" })).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid base64"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_body_limit_busy_and_deadline() {
    let target = TestServer::start();
    target.route(
        "/slow.png",
        Reply::ok("image/png", images::png(16, 16, 1)).delayed(Duration::from_millis(1500)),
    );
    let cfg = config()
        .server("api_keys", "[\"secret-key-1\"]")
        .server("max_body_mb", "1")
        .server("max_in_flight", "1")
        .server("request_timeout_ms", "800")
        .server("url_allow", "[\"127.0.0.1\"]");
    let s = start(cfg).await;
    let client = reqwest::Client::new();
    let r = client
        .post(s.url("/v1/embeddings"))
        .body(json!({"input": "x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json_value().await["error"]["type"],
        "invalid_request_error"
    );
    let r = client
        .post(s.url("/v1/embeddings"))
        .bearer_auth("secret-key-1")
        .body(json!({"input": "x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        client
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    // Announce a body over the limit and send only the headers: the answer must come from the
    // announcement alone (a client that streamed the whole body could race the early answer).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = format!(
            "POST /api/embed HTTP/1.1\r\nhost: x\r\nauthorization: Bearer secret-key-1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            2 << 20
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("larger than"), "{answer}");
    }

    // One slow request holds the only slot: the next is refused at once, then the slow one
    // hits the deadline.
    let slow = {
        let client = client.clone();
        let url = s.url("/embed/image");
        let body = json!({ "image_url": target.url("/slow.png") }).to_string();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth("secret-key-1")
                .body(body)
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = client
        .post(s.url("/embed/text"))
        .bearer_auth("secret-key-1")
        .body(json!({"text": "x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let r = slow.await.unwrap();
    assert_eq!(r.status().as_u16(), 504);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let target = TestServer::start();
    target.route(
        "/slow.png",
        Reply::ok("image/png", images::png(16, 16, 1)).delayed(Duration::from_millis(700)),
    );
    let s = start(config().server("url_allow", "[\"127.0.0.1\"]")).await;
    let slow = {
        let url = s.url("/embed/image");
        let body = json!({ "image_url": target.url("/slow.png") });
        tokio::spawn(async move { post(&url, body).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = s.base.clone();
    s.shutdown().await;
    let (status, v) = slow.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(
        reqwest::get(format!("{base}/health")).await.is_err(),
        "the server should be gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let cfg = TestConfig::new()
        .plugin("down", PluginSpec::misbehave("unavailable"))
        .plugin("hash", PluginSpec::hash())
        .image_embed("down")
        .hash("hash");
    let s = start(cfg).await;
    let (status, _) = post(
        &s.url("/embed/image"),
        json!({ "image_base64": b64(&images::png(8, 8, 0)) }),
    )
    .await;
    assert_eq!(status, 200);
    let r = reqwest::get(s.url("/health")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v = r.json_value().await;
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["steps"][0]["ok"], false);
    assert_eq!(v["steps"][1]["ok"], true);
    // The batch routes count too: two texts through the OpenAI route, both answered by hash.
    let (status, _) = post(&s.url("/v1/embeddings"), json!({ "input": ["a", "b"] })).await;
    assert_eq!(status, 200);
    let text = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "imbed_requests_total{route=\"/embed/image\",status=\"200\"} 1",
        "imbed_requests_total{route=\"/v1/embeddings\",status=\"200\"} 1",
        "imbed_step_answers_total{step=\"1\",kind=\"hash\"} 3",
        "imbed_fallbacks_total 3",
        "imbed_step_failures_total{plugin=\"down\",kind=\"unavailable\"} 3",
        "imbed_request_duration_seconds_count{route=\"/embed/image\"} 1",
        "imbed_embed_duration_seconds_count{step=\"1:hash\"} 3",
    ] {
        assert!(text.contains(expected), "{expected} missing in:\n{text}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn handlers_answer_without_a_socket() {
    use tower::ServiceExt;
    let state = AppState::build(config().build()).await.unwrap();
    let request = axum::http::Request::post("/api/embed")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({ "model": "m", "input": "hi" }).to_string(),
        ))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let response = app(state)
        .oneshot(
            axum::http::Request::get("/nope")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_and_ollama_clients_work_unchanged() {
    let s = start(config()).await;
    let script = imbed_tests::repo_root().join("tests/clients/check_clients.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&s.base)
        .output()
        .await
        .expect("python3 runs (scripts/setup --test installs the clients)");
    assert!(
        out.status.success(),
        "the Python clients failed (run scripts/setup --test to install them):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("clients ok"));
    s.shutdown().await;
}

/// The dimensions `/embed/text` answers with now.
async fn text_dims(s: &Running) -> usize {
    let (status, v) = post(&s.url("/embed/text"), json!({ "text": "hello" })).await;
    assert_eq!(status, 200, "{v}");
    v["vector"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_take_effect_without_a_restart_and_broken_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = TestServer::start();
    target.route(
        "/slow.png",
        Reply::ok("image/png", images::png(16, 16, 1)).delayed(Duration::from_millis(800)),
    );
    let write = |dims: u32| {
        config()
            .plugin(
                "hash",
                PluginSpec::hash().setting_raw("dimensions", &dims.to_string()),
            )
            .server("url_allow", "[\"127.0.0.1\"]")
            .write(dir.path())
    };
    let path = write(256);
    let state = AppState::build(imbed::Config::load(&path, &imbed::Env::isolated()).unwrap())
        .await
        .unwrap();
    let watcher = state.watch(
        path.clone(),
        imbed::Env::isolated(),
        Duration::from_millis(50),
    );
    let s = start_with(state.clone()).await;
    assert_eq!(text_dims(&s).await, 256);

    // A request in flight across the reload finishes on the config it started with.
    let slow = {
        let url = s.url("/embed/image");
        let body = json!({ "image_url": target.url("/slow.png") });
        tokio::spawn(async move { post(&url, body).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Same size, other content: the fingerprint must still see it (mtime).
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(128);
    let waited = Instant::now();
    while text_dims(&s).await != 128 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the edit was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, v) = slow.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["provenance"]["dimensions"], 256,
        "the in-flight request kept its config"
    );

    // Replacing a plugin file is picked up too.
    let copy = dir.path().join("h.wasm");
    std::fs::copy(imbed_tests::component("hash"), &copy).unwrap();
    config()
        .plugin("hash", PluginSpec::file(&copy))
        .server("url_allow", "[\"127.0.0.1\"]")
        .write(dir.path());
    let waited = Instant::now();
    while text_dims(&s).await != 256 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the edit was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::copy(
        imbed_tests::component("misbehave"),
        dir.path().join("h.tmp"),
    )
    .unwrap();
    std::fs::rename(dir.path().join("h.tmp"), &copy).unwrap();
    let waited = Instant::now();
    while text_dims(&s).await != 8 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the new plugin file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken config is refused and the running one kept, with the reason in /health.
    std::fs::write(&path, "[chain]\nsteps = [\n").unwrap();
    let waited = Instant::now();
    while state.reload_status().last_error.is_none() {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the broken edit was not looked at"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text_dims(&s).await, 8);
    let health = reqwest::get(s.url("/health"))
        .await
        .unwrap()
        .json_value()
        .await;
    assert!(
        health["reload"]["last_error"]
            .as_str()
            .unwrap()
            .contains("imbed.toml"),
        "{health}"
    );
    assert_eq!(health["reload"]["reloads"], 3);

    // A config whose plugin file no longer loads is refused too.
    let broken_wasm = dir.path().join("broken.wasm");
    std::fs::write(&broken_wasm, b"\0asm garbage").unwrap();
    config()
        .plugin("hash", PluginSpec::file(&broken_wasm))
        .write(dir.path());
    let waited = Instant::now();
    while !state
        .reload_status()
        .last_error
        .unwrap_or_default()
        .contains("would no longer load")
    {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the broken plugin was not looked at"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text_dims(&s).await, 8);
    watcher.abort();
    s.shutdown().await;
}

#[tokio::test]
async fn the_server_answers_repeated_images_from_the_cache_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = imbed::Cache::open(dir.path().join("imbed.db")).unwrap();
    let state = AppState::build_with_store(config().build(), Some(store.clone()))
        .await
        .unwrap();
    let s = start_with(state).await;
    let png = images::png(30, 20, 2);
    let body = json!({ "image_base64": b64(&png) });
    let (status, first) = post(&s.url("/embed/image"), body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["provenance"]["cached"], false);
    let (status, second) = post(&s.url("/embed/image"), body).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["provenance"]["cached"], true, "{second}");
    assert_eq!(first["vector"], second["vector"]);
    let stats = store.stats().unwrap();
    assert_eq!((stats.images, stats.descriptions), (1, 1));
    assert_eq!(stats.spaces[0].entries, 1);
    s.shutdown().await;
}
