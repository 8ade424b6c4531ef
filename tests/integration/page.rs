//! The search page of `imbed serve`: its JSON routes and thumbnails through the router (the
//! security cases: paths as hashes, symlinks out of the folder, changed and vanished files,
//! oversized and non-image uploads, API keys), then the page itself in a real browser against
//! the real binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use futures::StreamExt;
use imbed::index::IndexOptions;
use imbed::server::{app, AppState};
use imbed::store::Cache;
use imbed::{Imbed, ImbedOptions};
use imbed_tests::ollama::OllamaStandIn;
use imbed_tests::{images, PluginSpec, TestConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const HASH_IMAGE_SPACE: &str = "imbed-hash/image@v1:256";

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A picture unique to `seed`, `w`×`h`.
fn unique_png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut img = images::picture(w, h, seed);
    for k in 0..12 {
        let (x, y) = ((seed * 7 + k * 5) % w, (seed * 3 + k * 11) % h);
        img.put_pixel(x, y, image::Rgb([(seed % 251) as u8, (k * 20) as u8, 255]));
    }
    images::png_of(&img)
}

/// A folder indexed with the hash plugin, the way `imbed index` does it (roots recorded).
struct Collection {
    dir: tempfile::TempDir,
    photos: PathBuf,
    state: AppState,
    store: Cache,
    /// Content hashes by file name.
    hashes: std::collections::HashMap<&'static str, String>,
    /// The bytes of `outside/secret.png`, which a link in the folder points to.
    secret: Vec<u8>,
    near_duplicate: Vec<u8>,
    /// The PostgreSQL database, when the collection lives in one.
    _pg: Option<imbed_tests::postgres::TestDb>,
}

async fn collection(server: &[(&str, &str)]) -> Collection {
    collection_on(server, false).await
}

/// [`collection`] in SQLite, or with `postgres` in a database of the test server.
async fn collection_on(server: &[(&str, &str)], postgres: bool) -> Collection {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let mut hashes = std::collections::HashMap::new();
    let pic = images::picture(640, 480, 1);
    let original = images::png_of(&pic);
    hashes.insert("original.png", sha_hex(&original));
    write(&photos, "original.png", &original);
    let near_duplicate = images::jpeg_of(&pic, 60);
    // The same content twice: one hit with two copies.
    let twin = unique_png(64, 48, 7);
    hashes.insert("twin.png", sha_hex(&twin));
    write(&photos, "twin.png", &twin);
    write(&photos, "sub/twin-copy.png", &twin);
    for (name, seed) in [
        ("changed.png", 11),
        ("touched.png", 12),
        ("vanished.png", 13),
    ] {
        let bytes = unique_png(80, 60, seed);
        hashes.insert(name, sha_hex(&bytes));
        write(&photos, name, &bytes);
    }
    for i in 0..6u32 {
        write(
            &photos,
            &format!("other{i}.png"),
            &unique_png(60, 40, 100 + i),
        );
    }
    // Taken sideways: orientation 6 says "turn clockwise"; stored 40 wide, 90 high.
    let upright = images::picture(90, 40, 2);
    let stored = images::stored_for_orientation(&upright, 6);
    let sideways = images::jpeg_with_orientation(&images::jpeg_of(&stored, 90), 6);
    hashes.insert("sideways.jpg", sha_hex(&sideways));
    write(&photos, "sideways.jpg", &sideways);
    // A link inside the folder to a file outside it.
    let secret = unique_png(50, 50, 999);
    hashes.insert("secret.png", sha_hex(&secret));
    let outside = write(&dir.path().join("outside"), "secret.png", &secret);
    std::os::unix::fs::symlink(&outside, photos.join("link-to-secret.png")).unwrap();

    let pg = postgres.then(imbed_tests::postgres::database);
    let db = match &pg {
        Some(pg) => PathBuf::from(pg.url()),
        None => dir.path().join("imbed.db"),
    };
    let mut cfg = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .database(&db);
    for (key, value) in server {
        cfg = cfg.server(key, value);
    }
    let config = cfg.build();
    let store = match &pg {
        Some(pg) => {
            let mut options = imbed::store::PgOptions::default();
            options.local_dir = dir.path().join("pg-local");
            Cache::open_postgres(pg.url(), options).unwrap()
        }
        None => Cache::open(&db).unwrap(),
    };
    let imbed = Imbed::with_options(config.clone(), ImbedOptions::default().store(store.clone()))
        .await
        .unwrap();
    // Off the async threads, as `imbed index` does: a PostgreSQL store blocks.
    let (for_roots, folder) = (store.clone(), photos.clone());
    let roots = tokio::task::spawn_blocking(move || {
        imbed::index::record_roots(&for_roots, std::slice::from_ref(&folder))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(roots, vec![std::fs::canonicalize(&photos).unwrap()]);
    let (files, problems) = imbed::index::find_images(std::slice::from_ref(&photos));
    assert!(problems.is_empty(), "{problems:?}");
    let mut stream = imbed::index::index_files(&imbed, files, &IndexOptions::new(2)).unwrap();
    while let Some(report) = stream.next().await {
        if let imbed::index::Outcome::Failed { message } = &report.outcome {
            panic!("{}: {message}", report.path.display());
        }
    }
    let (for_paths, secret_hash) = (store.clone(), hashes["secret.png"].clone());
    let secret_paths = tokio::task::spawn_blocking(move || for_paths.paths_of(&secret_hash))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !secret_paths.is_empty(),
        "the link was indexed: the store knows the secret's content"
    );
    let state = AppState::new(imbed, config.server.clone());
    Collection {
        dir,
        photos,
        state,
        store,
        hashes,
        secret,
        near_duplicate,
        _pg: pg,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Collection {
    async fn call(&self, request: Request<Body>) -> Answer {
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn get_with(&self, uri: &str, name: &str, value: &str) -> Answer {
        self.call(
            Request::get(uri)
                .header(name, value)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    fn thumb(&self, name: &str) -> String {
        format!("/thumb/{}", self.hashes[name])
    }

    /// No answer holds the bytes of the file outside the folder.
    #[track_caller]
    fn assert_no_secret(&self, a: &Answer) {
        let probe = &self.secret[self.secret.len() / 2..][..64];
        assert!(
            !a.body.windows(probe.len()).any(|w| w == probe),
            "the answer holds the secret's bytes"
        );
    }

    /// A search answer names no absolute path: nothing of where the collection lives.
    #[track_caller]
    fn assert_no_folder(&self, a: &Answer) {
        let dir = self.dir.path().display().to_string();
        assert!(
            !a.text().contains(&dir),
            "the answer names the collection's folder: {}",
            a.text()
        );
    }
}

/// Whether HTML has an inline event handler attribute (`onclick=`, ...), which the CSP forbids.
fn has_inline_handler(html: &str) -> bool {
    html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    })
}

fn multipart(field: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "imbed-test-boundary-7d1f";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn upload(uri: &str, bytes: &[u8]) -> Request<Body> {
    let (content_type, body) = multipart("image", "query.jpg", bytes);
    Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_come_by_content_hash_only_from_unchanged_files_under_indexed_folders() {
    let c = collection(&[]).await;

    let a = c.get(&c.thumb("original.png")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header(header::CONTENT_TYPE), "image/jpeg");
    assert_eq!(
        a.header(header::CACHE_CONTROL),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(a.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let etag = a.header(header::ETAG).to_string();
    assert!(etag.contains(&c.hashes["original.png"]), "{etag}");
    let thumb = image::load_from_memory(&a.body).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 240), "downsized");
    let kept = std::fs::read_dir(c.store.thumb_dir()).unwrap().count();
    assert_eq!(kept, 1, "the thumbnail is kept beside the database");

    // The client has it: 304 with no body, after the same checks.
    let a = c
        .get_with(&c.thumb("original.png"), "if-none-match", &etag)
        .await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    assert!(a.body.is_empty());
    let a = c
        .get_with(&c.thumb("original.png"), "if-none-match", "\"other\"")
        .await;
    assert_eq!(a.status, StatusCode::OK);

    // EXIF orientation applied: stored 40x90, shown upright 90x40.
    let a = c.get(&c.thumb("sideways.jpg")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let t = image::load_from_memory(&a.body).unwrap();
    assert_eq!((t.width(), t.height()), (90, 40));

    // Paths, traversal and malformed hashes: 404, the same answer as an unknown hash.
    let unknown = "0".repeat(64);
    let upper = c.hashes["original.png"].to_uppercase();
    let short = &c.hashes["original.png"][..63];
    for uri in [
        format!("/thumb/{unknown}"),
        "/thumb/..%2F..%2F..%2Fetc%2Fpasswd".into(),
        "/thumb/%2Fetc%2Fpasswd".into(),
        "/thumb/../../etc/passwd".into(),
        format!("/thumb/{}", c.photos.join("original.png").display()),
        format!("/thumb/{upper}"),
        format!("/thumb/{short}"),
        format!("/thumb/{}%2F..", c.hashes["original.png"]),
        "/thumb/".into(),
    ] {
        let a = c.get(&uri).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}: {}", a.text());
        assert!(
            a.header(header::CONTENT_TYPE)
                .starts_with("application/json"),
            "{uri}"
        );
        assert!(!a.text().contains("root:"), "{uri}");
        c.assert_no_secret(&a);
    }

    // A link inside the folder to a file outside it: the store knows the content, the server
    // still refuses to read it.
    let a = c.get(&c.thumb("secret.png")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    c.assert_no_secret(&a);

    // Changed content: the old hash is no longer there. Touched but the same: still served.
    std::thread::sleep(Duration::from_millis(20));
    write(&c.photos, "changed.png", &unique_png(80, 60, 500));
    let a = c.get(&c.thumb("changed.png")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    let touched = std::fs::read(c.photos.join("touched.png")).unwrap();
    write(&c.photos, "touched.png", &touched);
    let a = c.get(&c.thumb("touched.png")).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "same bytes, new mtime: {}",
        a.text()
    );
    std::fs::remove_file(c.photos.join("vanished.png")).unwrap();
    let a = c.get(&c.thumb("vanished.png")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());

    // A cached thumbnail is not served once its file is gone.
    std::fs::rename(
        c.photos.join("original.png"),
        c.dir.path().join("moved-out.png"),
    )
    .unwrap();
    let a = c.get(&c.thumb("original.png")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());

    // One metrics label for every hash.
    let m = c.get("/metrics").await.text();
    assert!(m.contains("route=\"/thumb/{hash}\""), "{m}");
    assert!(
        !m.contains(&c.hashes["original.png"]),
        "metrics name no hash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_recorded_folders_serves_no_file() {
    let c = collection(&[]).await;
    // As an index made before folders were recorded left it: the paths alone are not enough.
    let bare = tempfile::tempdir().unwrap();
    let db = bare.path().join("old.db");
    let store = Cache::open(&db).unwrap();
    let config = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .database(&db)
        .build();
    let imbed = Imbed::with_options(config.clone(), ImbedOptions::default().store(store.clone()))
        .await
        .unwrap();
    let (files, _) = imbed::index::find_images(std::slice::from_ref(&c.photos));
    let mut stream = imbed::index::index_files(&imbed, files, &IndexOptions::new(2)).unwrap();
    while stream.next().await.is_some() {}
    assert!(store.roots().unwrap().is_empty());
    let state = AppState::new(imbed, config.server.clone());
    let response = app(state)
        .oneshot(
            Request::get(c.thumb("twin.png"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_say_what_they_searched_and_name_images_by_hash_and_relative_name() {
    searches_answer_the_same(collection(&[("max_body_mb", "1")]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_answer_the_same_from_postgres() {
    searches_answer_the_same(collection_on(&[("max_body_mb", "1")], true).await).await;
}

async fn searches_answer_the_same(c: Collection) {
    // More like this: the near-duplicate... here the original's neighbours, itself left out.
    let twin = &c.hashes["twin.png"];
    let a = c.get(&format!("/similar/{twin}?k=3")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let v = a.json();
    assert_eq!(v["mode"], "similar");
    assert_eq!(v["space"], HASH_IMAGE_SPACE);
    assert_eq!(v["method"], "exact");
    assert_eq!(v["degraded"], false);
    assert!(v["searched"].as_u64().unwrap() >= 12, "{v}");
    assert!(v["ms"].as_f64().unwrap() >= 0.0);
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h["image"] != *twin), "{v}");
    c.assert_no_folder(&a);

    // With itself: first, once, with both copies counted and named relative to the folder.
    let a = c.get(&format!("/similar/{twin}?k=3&self=true")).await;
    let v = a.json();
    let first = &v["hits"][0];
    assert_eq!(first["image"], *twin);
    assert!((first["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    assert_eq!(first["copies"], 2);
    assert_eq!(
        first["files"],
        serde_json::json!(["twin.png", "sub/twin-copy.png"])
    );
    assert_eq!(first["thumb"], format!("/thumb/{twin}"));
    let images: Vec<&Value> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["image"])
        .collect();
    assert_eq!(
        images.iter().filter(|i| **i == twin).count(),
        1,
        "copies are one hit"
    );
    c.assert_no_folder(&a);

    // Paging: pages do not overlap, and `more` says when another page holds anything.
    let mut pages = Vec::new();
    for offset in [0, 5, 10] {
        let uri = format!("/similar/{twin}?k=5&offset={offset}");
        pages.push(c.get(&uri).await.json());
    }
    let (p0, p1, p2) = (&pages[0], &pages[1], &pages[2]);
    let ids = |v: &Value| -> Vec<String> {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["image"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(p0["more"], true);
    assert!(ids(p0).iter().all(|i| !ids(p1).contains(i)));
    let total = p0["hits"].as_array().unwrap().len()
        + p1["hits"].as_array().unwrap().len()
        + p2["hits"].as_array().unwrap().len();
    // Every image with a file, but the query itself, and no path-less image.
    let store = c.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats())
        .await
        .unwrap();
    let with_files = stats.unwrap().images as usize - 1;
    assert_eq!(total, with_files, "{p0}\n{p1}\n{p2}");
    assert_eq!(p2["more"], false);

    // An uploaded image: its near-duplicate first, as a form or as JSON base64.
    let a = c.call(upload("/search/image?k=3", &c.near_duplicate)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    assert_eq!(v["mode"], "image");
    assert_eq!(v["hits"][0]["image"], c.hashes["original.png"], "{v}");
    assert_eq!(v["query_image"], sha_hex(&c.near_duplicate));
    use base64::Engine as _;
    let body = serde_json::json!({
        "image_base64": base64::engine::general_purpose::STANDARD.encode(&c.near_duplicate)
    });
    let a = c
        .call(
            Request::post("/search/image")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.json()["hits"][0]["image"], c.hashes["original.png"]);
    // The upload was stored by the chain, but it has no file: never a hit, and reloadable.
    let reload = format!("/similar/{}?self=true&k=3", sha_hex(&c.near_duplicate));
    let v = c.get(&reload).await.json();
    assert_eq!(v["hits"][0]["image"], c.hashes["original.png"], "{v}");
    assert!(v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["image"] != sha_hex(&c.near_duplicate)));

    // Not an image: 400. Too big: 413, with or without a declared length.
    let a = c
        .call(upload("/search/image", b"just some text, not a picture"))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert!(
        a.text().contains("not an image") || a.text().contains("text"),
        "{}",
        a.text()
    );
    let big = vec![7u8; 3 << 20];
    let a = c.call(upload("/search/image", &big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
    let (content_type, body) = multipart("image", "big.png", &big);
    let chunks = futures::stream::iter(
        body.chunks(64 << 10)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let a = c
        .call(
            Request::post("/search/image")
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from_stream(chunks))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
    let a = c
        .call(
            Request::post("/search/image")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"nothing\": 1}"))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // A text query lands in the hash plugin's text space, where nothing is indexed: no error,
    // the answer says so and names the spaces the cache holds.
    let a = c.get("/search?q=a%20cat&k=5").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    assert_eq!(v["hits"], serde_json::json!([]));
    assert_eq!(v["searched"], 0);
    assert!(
        v["notice"].as_str().unwrap().contains(HASH_IMAGE_SPACE),
        "{v}"
    );

    // Bad requests say what to send.
    for (uri, want) in [
        ("/search", StatusCode::BAD_REQUEST),
        ("/search?q=%20", StatusCode::BAD_REQUEST),
        ("/search?q=x&k=0", StatusCode::BAD_REQUEST),
        ("/search?q=x&k=201", StatusCode::BAD_REQUEST),
        ("/search?q=x&k=abc", StatusCode::BAD_REQUEST),
        ("/search?q=x&offset=20000", StatusCode::BAD_REQUEST),
        ("/search?q=x&method=fast", StatusCode::BAD_REQUEST),
        ("/similar/..%2F..%2Fetc%2Fpasswd", StatusCode::NOT_FOUND),
        ("/similar/not-a-hash", StatusCode::NOT_FOUND),
    ] {
        let a = c.get(uri).await;
        assert_eq!(a.status, want, "{uri}: {}", a.text());
        assert!(a.json()["error"]["message"].is_string(), "{uri}");
    }
    let unknown = format!("/similar/{}", "a".repeat(64));
    assert_eq!(c.get(&unknown).await.status, StatusCode::NOT_FOUND);
    let other_space = format!("/similar/{twin}?space=ollama/nomic-embed-text");
    assert_eq!(c.get(&other_space).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_page_shell_is_open_and_every_data_route_needs_the_key() {
    let c = collection(&[("api_keys", "[\"s3cret-page-key\"]")]).await;

    // The shell: no data, a strict CSP, no inline script or style to allow.
    let a = c.get("/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header(header::CONTENT_TYPE).starts_with("text/html"));
    let csp = a.header(header::CONTENT_SECURITY_POLICY);
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(a.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let html = a.text();
    assert!(!html.contains("<script>") && !html.contains(" style="));
    assert!(!has_inline_handler(&html));
    assert!(
        has_inline_handler("<a onclick=\"x()\">"),
        "the check can fail"
    );
    let js = c.get("/page.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js
        .header(header::CONTENT_TYPE)
        .starts_with("text/javascript"));
    let css = c.get("/page.css").await;
    assert!(css.header(header::CONTENT_TYPE).starts_with("text/css"));

    let twin = &c.hashes["twin.png"];
    let data_routes = [
        "/search?q=cat".to_string(),
        format!("/similar/{twin}"),
        format!("/thumb/{twin}"),
    ];
    for uri in &data_routes {
        let a = c.get(uri).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(a.header(header::WWW_AUTHENTICATE), "Bearer");
        assert!(!a.body.starts_with(b"\x89PNG") && !a.body.starts_with(b"\xff\xd8"));
        let a = c.get_with(uri, "authorization", "Bearer wrong").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri}");
        let a = c
            .get_with(uri, "authorization", "Bearer s3cret-page-key")
            .await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text());
    }
    let a = c.call(upload("/search/image", &c.near_duplicate)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // A shared cache must not keep what needed a key.
    let a = c
        .get_with(
            &format!("/thumb/{twin}"),
            "authorization",
            "Bearer s3cret-page-key",
        )
        .await;
    assert_eq!(
        a.header(header::CACHE_CONTROL),
        "private, max-age=31536000, immutable"
    );
}

// ---------------------------------------------------------------------------------------------
// The page in a real browser, against the real binary.

/// `imbed serve` in the background, stopped when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, config: &TestConfig) -> Served {
    std::fs::create_dir_all(dir).unwrap();
    let file = config.write(dir);
    let port = imbed_tests::free_local_port();
    let child = crate::cli::imbed(dir)
        .args(["--config"])
        .arg(&file)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start imbed serve");
    Served {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_until_up(served: &mut Served) {
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{}/page.css", served.base)).await {
            if r.status().is_success() {
                return;
            }
        }
        if let Some(status) = served.child.try_wait().unwrap() {
            panic!("imbed serve exited: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "imbed serve did not start listening on {}",
            served.base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A colour picture of a size no other image of the collection has (so its description, which
/// names size and colour, is its own).
fn coloured(rgb: [u8; 3], n: u32) -> image::RgbImage {
    let (w, h) = (40 + 4 * n, 30 + 3 * n);
    image::RgbImage::from_fn(w, h, |x, y| {
        if (x * 7 + y * 13 + n * 31).is_multiple_of(29) {
            image::Rgb([(n * 53 % 256) as u8, (n * 17 % 256) as u8, 9])
        } else {
            image::Rgb(rgb)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_page_works_in_a_real_browser() {
    let browser = imbed_tests::browser::browser().unwrap_or_else(|e| panic!("{e}"));
    let out = imbed_tests::browser::output_dir("page-browser");
    let ollama = OllamaStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let colours = [
        ("red", [210, 25, 25]),
        ("blue", [25, 25, 210]),
        ("green", [25, 190, 25]),
        ("yellow", [230, 220, 30]),
    ];
    let mut n = 0;
    let mut query = Vec::new();
    for (name, rgb) in colours {
        for i in 0..5 {
            let img = coloured(rgb, n);
            write(&photos, &format!("{name}-{i}.png"), &images::png_of(&img));
            if (name, i) == ("blue", 3) {
                query = images::jpeg_of(&img, 70);
            }
            n += 1;
        }
    }
    write(
        &photos,
        "copies/red-1-copy.png",
        &std::fs::read(photos.join("red-1.png")).unwrap(),
    );
    let upload = write(dir.path(), "query.jpg", &query);

    let db = dir.path().join("imbed.db");
    let ollama_plugin = || {
        PluginSpec::file(imbed_tests::component("ollama"))
            .grant_http(&ollama.base_url())
            .setting("base_url", &ollama.base_url())
            .setting("vision_model", "llava")
            .setting("embed_model", "nomic-embed-text")
            .instances(4)
            .timeout_ms(20_000)
    };
    // Descriptions by the stand-in (size and colour), embedded by the hash plugin's text side:
    // text queries and images share one space.
    let config = TestConfig::new()
        .plugin("ollama", ollama_plugin())
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "hash")
        .database(&db);
    let out_index = crate::cli::imbed(dir.path())
        .args(["--config"])
        .arg(config.write(dir.path()))
        .arg("index")
        .arg(&photos)
        .output()
        .unwrap();
    assert!(
        out_index.status.success(),
        "{}",
        String::from_utf8_lossy(&out_index.stderr)
    );

    let key = "page-test-key";
    let keyed = config.clone().server("api_keys", &format!("[\"{key}\"]"));
    // The first step cannot answer: queries are embedded by the second, and the page says so.
    let degraded = TestConfig::new()
        .plugin("down", PluginSpec::misbehave("unavailable"))
        .plugin("ollama", ollama_plugin())
        .plugin("hash", PluginSpec::hash())
        .image_embed("down")
        .describe_then_embed("ollama", "hash")
        .database(&db);
    let mut open = serve(&dir.path().join("open"), &config);
    let mut with_key = serve(&dir.path().join("keyed"), &keyed);
    let mut fell_back = serve(&dir.path().join("degraded"), &degraded);
    for s in [&mut open, &mut with_key, &mut fell_back] {
        wait_until_up(s).await;
    }

    let script = imbed_tests::repo_root().join("tests/browser/page_test.py");
    let run = tokio::task::spawn_blocking({
        let (open, with_key, fell_back) = (
            open.base.clone(),
            with_key.base.clone(),
            fell_back.base.clone(),
        );
        let out = out.clone();
        move || {
            Command::new("python3")
                .arg(script)
                .args(["--open-url", &open, "--keyed-url", &with_key])
                .args(["--degraded-url", &fell_back, "--key", key])
                .args(["--text", "red", "--upload"])
                .arg(&upload)
                .args(["--upload-match", "blue-3.png", "--out"])
                .arg(&out)
                .arg("--chromium")
                .arg(&browser.chromium)
                .arg("--driver")
                .arg(&browser.driver)
                .env("PYTHONPATH", &browser.selenium)
                .env("HOME", out.join("home"))
                .output()
                .expect("run python3")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the browser test failed (screenshots in {}):\n{stdout}\n{stderr}",
        out.display()
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}): {stdout}"));
    let shots = report["screenshots"].as_array().unwrap();
    assert!(shots.len() >= 12, "{report}");
    for shot in shots {
        let path = out.join(shot.as_str().unwrap());
        let png = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(png.width() >= 390, "{}", path.display());
    }
}
