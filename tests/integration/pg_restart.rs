//! PostgreSQL restarted under a running `imbed serve` (issue #17): requests that need the
//! database fail with a 503 naming it while it is down, never a panic or a hang, and the same
//! serve process answers again once it is back, with nothing written before lost.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use imbed::store::{Cache, PgOptions};
use imbed_tests::{images, PluginSpec, TestConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

fn sha_of(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A client whose timeout only turns a hang into a failure (it is far above any answer).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn embed(base: &str, png: &[u8]) -> (u16, Value) {
    let body = json!({
        "image_base64": base64::engine::general_purpose::STANDARD.encode(png)
    });
    let r = client()
        .post(format!("{base}/embed/image"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /embed/image: {e}"));
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn hit_images(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {v}"))
        .iter()
        .map(|h| h["image"].as_str().unwrap().to_string())
        .collect()
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

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_503_while_postgres_restarts_then_carries_on_with_nothing_lost() {
    let server = imbed_tests::postgres::own_server();
    let url = server.url("imbed");
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let pngs: Vec<Vec<u8>> = (0..5)
        .map(|i| images::png(48 + 4 * i, 36 + 3 * i, i + 1))
        .collect();
    let distinct: std::collections::HashSet<String> = pngs.iter().map(|p| sha_of(p)).collect();
    assert_eq!(distinct.len(), 5);
    for (i, png) in pngs[..3].iter().enumerate() {
        write(&photos, &format!("p{i}.png"), png);
    }
    let config = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .database(Path::new(&url))
        .write(dir.path());
    let out = crate::cli::imbed(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["index", photos.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = imbed_tests::free_local_port();
    let mut served = Served {
        child: crate::cli::imbed(dir.path())
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start imbed serve"),
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_until_up(&mut served).await;
    let base = served.base.clone();

    // Written through serve before the restart: an image embedded by request.
    let (status, v) = embed(&base, &pngs[3]).await;
    assert_eq!(status, 200, "{v}");
    let query = sha_of(&pngs[0]);
    let (status, before) = get(&base, &format!("/similar/{query}?k=10")).await;
    assert_eq!(status, 200, "{before}");
    // The page lists indexed files only: the two others of the folder.
    let before = hit_images(&before);
    assert_eq!(before.len(), 2, "{before:?}");

    server.stop();
    for _ in 0..3 {
        let (status, v) = get(&base, &format!("/similar/{query}?k=10")).await;
        assert_eq!(status, 503, "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("127.0.0.1:{}/imbed", server.port()))
                && message.contains("cannot be reached"),
            "the error names the database: {message}"
        );
    }
    // Embedding needs no database: it still answers (the cache never makes imbed fail),
    // and the serve process is alive.
    let (status, v) = embed(&base, &pngs[4]).await;
    assert_eq!(status, 200, "{v}");
    assert!(served.child.try_wait().unwrap().is_none());

    server.start_again();
    let (status, after) = get(&base, &format!("/similar/{query}?k=10")).await;
    assert_eq!(status, 200, "the same serve process answers again: {after}");
    assert_eq!(hit_images(&after), before);
    // Writes work again too: the image embedded during the outage is stored now, and is a
    // query the page answers from the store.
    let (status, v) = embed(&base, &pngs[4]).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = get(&base, &format!("/similar/{}?k=10", sha_of(&pngs[4]))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(hit_images(&v).len(), 3, "{v}");
    drop(served);

    // Nothing written before the restart was lost.
    let url2 = url.clone();
    let spaces = tokio::task::spawn_blocking(move || {
        Cache::open_postgres(&url2, PgOptions::default())
            .unwrap()
            .spaces()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(spaces.len(), 1, "{spaces:?}");
    assert_eq!(spaces[0].entries, 5);
    assert_eq!(spaces[0].owner.as_ref().unwrap().key, "hash");
}

#[test]
fn the_store_fails_fast_while_postgres_is_down_and_reconnects_after() {
    let server = imbed_tests::postgres::own_server();
    let url = server.url("imbed");
    let cache = Cache::open_postgres(&url, PgOptions::default()).unwrap();
    cache.put_root(Path::new("/photos")).unwrap();
    assert_eq!(cache.roots().unwrap().len(), 1);

    server.stop();
    for _ in 0..3 {
        let err = cache.roots().unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("127.0.0.1:{}/imbed", server.port())),
            "{err}"
        );
    }
    server.start_again();
    assert_eq!(
        cache.roots().unwrap(),
        vec![std::path::PathBuf::from("/photos")]
    );
    cache.put_root(Path::new("/more")).unwrap();
    assert_eq!(cache.roots().unwrap().len(), 2);
}
