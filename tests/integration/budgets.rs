//! Budgets for what a plugin sends back (issue #21): a plugin flooding the log, and one
//! returning a giant description, against the real `imbed` binary. The budgets are checked on
//! the host's own types, after each contract version's conversion, so they hold for every
//! version it serves (0.1.0 and 0.2.0).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use imbed::{ImageRequest, ImageSource, Imbed};
use imbed_tests::{images, PluginSpec, TestConfig};
use serde_json::Value;

use crate::cli::imbed;

/// Run `imbed embed a.png` in `dir` and watch its peak resident memory (VmHWM, read from
/// /proc while it runs; the last reading before it exits is its peak).
fn embed_watching_memory(dir: &Path, config: &Path) -> (Output, u64) {
    std::fs::write(dir.join("a.png"), images::png(64, 48, 1)).unwrap();
    let mut child = imbed(dir)
        .arg("--config")
        .arg(config)
        .args(["embed", "a.png"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out_pipe, &mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err_pipe, &mut v).unwrap();
        v
    });
    let mut peak_kb = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, peak_kb << 10)
}

/// Stderr without the terminal colours the log may carry.
fn plain(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn first_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or_else(|| {
        panic!(
            "no output; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

fn chain(vision: PluginSpec) -> TestConfig {
    TestConfig::new()
        .plugin("vision", vision)
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("vision", "hash")
        .hash("hash")
}

#[test]
fn a_log_flood_stays_within_the_budget_and_says_how_many_lines_were_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // Floods until its 2-second deadline stops it: the chain moves on to the hash step.
    let config = chain(PluginSpec::misbehave("log-flood").timeout_ms(2000)).write(dir.path());
    let (out, _) = embed_watching_memory(dir.path(), &config);
    let stderr = plain(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v = first_line(&out);
    assert_eq!(v["provenance"]["step_kind"], "hash", "{v}");
    assert_eq!(v["provenance"]["attempts"][0]["plugin"], "vision", "{v}");
    assert_eq!(v["provenance"]["attempts"][0]["kind"], "timeout", "{v}");

    let flood: Vec<&str> = stderr.lines().filter(|l| l.contains("flood ")).collect();
    // The default budget: 100 lines and 64 KiB per call.
    assert_eq!(flood.len(), 100, "{}", &stderr[..stderr.len().min(4000)]);
    assert!(
        flood.iter().all(|l| l.contains("plugin=\"vision\"")),
        "log lines keep the plugin key: {}",
        flood[0]
    );
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("log line(s) past its log budget") && l.contains("plugin=\"vision\"")
        })
        .collect();
    assert_eq!(summary.len(), 1, "one summary line: {stderr:.4000}");
    let dropped: u64 = summary[0]
        .split("dropped ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {}", summary[0]));
    // Two seconds of a tight loop write far more than the budget lets through.
    assert!(dropped > 1000, "{}", summary[0]);
    assert!(
        stderr.len() < 100 << 10,
        "stderr holds {} bytes, more than the budget allows",
        stderr.len()
    );
}

#[test]
fn an_over_long_log_line_is_cut_with_a_marker_and_the_call_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let vision = PluginSpec::misbehave("log-flood")
        .setting("lines", "3")
        .setting("line_bytes", "100000");
    let config = chain(vision).write(dir.path());
    let (out, _) = embed_watching_memory(dir.path(), &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr:.4000}");
    // Three lines of 100 kB, each cut to 4 KiB: together within the 64 KiB per call.
    let flood: Vec<&str> = stderr.lines().filter(|l| l.contains("flood ")).collect();
    assert_eq!(flood.len(), 3, "{stderr:.4000}");
    assert!(flood
        .iter()
        .all(|l| l.contains("[cut by imbed: line over log_line_max_bytes]") && l.len() < 5000));
    let v = first_line(&out);
    assert_eq!(
        v["provenance"]["step_kind"], "describe-then-embed",
        "the flooding describer still answered: {v}"
    );
}

/// Peak resident memory the host may reach while a describer returns 100 MiB: the guest's own
/// linear memory holds the text (about 100 MiB), wasmtime lifts one copy into the host (another
/// 100 MiB), plus the host itself. Without the cap the text also went into the embedder's
/// memory and the host peaked near 1 GB.
const HUGE_DESCRIPTION_PEAK: u64 = 520 << 20;

#[test]
fn a_huge_description_is_malformed_the_chain_moves_on_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = chain(PluginSpec::misbehave("huge-description").memory_mb(512)).write(dir.path());
    let (out, peak) = embed_watching_memory(dir.path(), &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr:.4000}");
    let v = first_line(&out);
    assert_eq!(v["provenance"]["step_kind"], "hash", "{v}");
    let attempt = &v["provenance"]["attempts"][0];
    assert_eq!(attempt["plugin"], "vision", "{v}");
    assert_eq!(attempt["kind"], "malformed", "{v}");
    let message = attempt["message"].as_str().unwrap();
    assert!(
        message.contains("104857600 bytes") && message.contains("description_max_bytes"),
        "{message}"
    );
    eprintln!("peak resident memory: {} MiB", peak >> 20);
    assert!(
        peak < HUGE_DESCRIPTION_PEAK,
        "the host peaked at {} MiB",
        peak >> 20
    );
}

#[tokio::test]
async fn too_many_structured_fields_are_malformed_naming_the_cap() {
    let config = chain(PluginSpec::misbehave("many-fields")).build();
    let imbed = Imbed::new(config).await.unwrap();
    let e = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            64, 48, 1,
        ))))
        .await
        .unwrap();
    assert_eq!(e.provenance.step_kind.to_string(), "hash");
    let a = &e.provenance.attempts[0];
    assert_eq!(a.kind.to_string(), "malformed");
    assert!(
        a.message.contains("100000 structured fields")
            && a.message.contains("structured_max_fields"),
        "{}",
        a.message
    );

    // Raised in the config, the same answer passes.
    let config = chain(
        PluginSpec::misbehave("many-fields")
            .setting("fields", "300")
            .limit("structured_max_fields", "300"),
    )
    .build();
    let e = Imbed::new(config)
        .await
        .unwrap()
        .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
            64, 48, 1,
        ))))
        .await
        .unwrap();
    assert_eq!(e.provenance.step_kind.to_string(), "describe-then-embed");
}

#[test]
fn a_zero_budget_in_the_config_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        chain(PluginSpec::misbehave("ok").limit("log_lines_per_call", "0")).write(dir.path());
    std::fs::write(dir.path().join("a.png"), images::png(64, 48, 1)).unwrap();
    let out: Output = imbed(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["embed", "a.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("log_lines_per_call must be at least 1"),
        "{stderr}"
    );
}

#[tokio::test]
async fn metrics_count_dropped_plugin_log_lines_by_plugin() {
    use tower::ServiceExt;
    // The host budgets only lines it would print: give this thread (the test's current-thread
    // runtime, where the plugin's calls run) a subscriber at warn level that prints nowhere.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::sink)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // 250 lines, 100 written: 150 dropped.
    let config = chain(PluginSpec::misbehave("log-flood").setting("lines", "250")).build();
    let state = imbed::server::AppState::build(config).await.unwrap();
    let body = serde_json::json!({
        "image_base64": base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            images::png(8, 8, 0)
        )
    });
    let request = axum::http::Request::post("/embed/image")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let response = imbed::server::app(state.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = imbed::server::app(state)
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("imbed_plugin_log_lines_dropped_total{plugin=\"vision\"} 150\n"),
        "{text}"
    );
}
