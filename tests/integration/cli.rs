//! The `imbed` binary: output format and exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use imbed_tests::{component, images, PluginSpec, TestConfig};
use serde_json::Value;

/// A command with a clean environment: no user config, home and data dirs inside `dir`.
pub(crate) fn imbed(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imbed"));
    cmd.current_dir(dir)
        .env_remove("IMBED_CONFIG")
        .env_remove("IMBED_PLUGIN_DIR")
        .env_remove("OLLAMA_BASE_URL")
        .env_remove("OLLAMA_VISION_MODEL")
        .env_remove("OLLAMA_EMBED_MODEL")
        .env_remove("RUST_BACKTRACE")
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("IMBED_LOG", "warn");
    cmd
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[track_caller]
fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn hash_config(dir: &Path) -> std::path::PathBuf {
    TestConfig::new()
        .plugin("down", PluginSpec::misbehave("unavailable"))
        .plugin("hash", PluginSpec::hash())
        .image_embed("down")
        .description("hash")
        .hash("hash")
        .write(dir)
}

#[test]
fn the_embedded_default_falls_through_to_hash_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("data/imbed/plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(component("hash"), plugins.join("hash.wasm")).unwrap();
    std::fs::write(dir.path().join("a.png"), images::png(40, 30, 1)).unwrap();
    let out = imbed(dir.path()).args(["embed", "a.png"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = &lines(&out)[0];
    assert_eq!(v["input"], "a.png");
    assert_eq!(v["provenance"]["step_kind"], "hash");
    assert_eq!(v["provenance"]["degraded"], true);
    assert_eq!(v["provenance"]["space"], "imbed-hash/image@v1:256");
    let attempts = v["provenance"]["attempts"].as_array().unwrap();
    let plugins: Vec<_> = attempts
        .iter()
        .map(|a| a["plugin"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(plugins, ["ollama", "clip", "-"]);
    assert_eq!(attempts[0]["kind"], "not-installed");
    assert_eq!(v["vector"].as_array().unwrap().len(), 256);
    assert!(
        stderr(&out).contains("answered by step 3 (hash"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn many_inputs_one_line_each_and_stdin_and_base64() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let cfg = hash_config(dir.path());
    std::fs::write(dir.path().join("a.png"), images::png(16, 16, 0)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(images::png(16, 16, 2));
    let mut child = imbed(dir.path())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "embed",
            "a.png",
            "-",
            "--base64",
            &b64,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&images::png(16, 16, 1))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let inputs: Vec<_> = lines(&out)
        .iter()
        .map(|v| v["input"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inputs, ["a.png", "<stdin>", "<base64 #1>"]);
}

#[test]
fn the_json_output_is_one_array() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = hash_config(dir.path());
    std::fs::write(dir.path().join("a.png"), images::png(16, 16, 0)).unwrap();
    let out = imbed(dir.path())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "embed",
            "a.png",
            "a.png",
            "--output",
            "json",
            "--description",
            "a test",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["provenance"]["step_kind"], "description");
    assert_eq!(v[0]["provenance"]["description"]["text"], "a test");
}

#[test]
fn exit_codes_tell_bad_input_from_exhausted_chains_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = hash_config(dir.path());
    std::fs::write(dir.path().join("a.png"), images::png(16, 16, 0)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();

    let out = imbed(dir.path())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "embed",
            "a.png",
            "notes.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "bad input: {}", stderr(&out));
    let l = lines(&out);
    assert!(l[0]["vector"].is_array());
    assert_eq!(l[1]["error"]["kind"], "bad-input");
    assert!(
        stderr(&out).contains("notes.txt is not an image"),
        "{}",
        stderr(&out)
    );

    let only_down = TestConfig::new()
        .plugin("down", PluginSpec::misbehave("unavailable"))
        .image_embed("down");
    let sub = dir.path().join("down");
    std::fs::create_dir_all(&sub).unwrap();
    let down_cfg = only_down.write(&sub);
    let out = imbed(dir.path())
        .args(["--config", down_cfg.to_str().unwrap(), "embed", "a.png"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "exhausted: {}", stderr(&out));
    assert_eq!(
        lines(&out)[0]["error"]["attempts"][0]["kind"],
        "unavailable"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[chain]\nsteps = []\ncolour = 1\n").unwrap();
    let out = imbed(dir.path())
        .args(["--config", bad.to_str().unwrap(), "embed", "a.png"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "bad config: {}", stderr(&out));
    assert!(stderr(&out).contains("bad.toml:3:"), "{}", stderr(&out));

    let out = imbed(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "embed"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "usage: {}", stderr(&out));
    let out = imbed(dir.path())
        .args(["embed", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
}

#[test]
fn embed_text_plugins_and_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = hash_config(dir.path());
    let c = cfg.to_str().unwrap();
    let out = imbed(dir.path())
        .args(["--config", c, "embed-text", "cat on a laptop", "a dog"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let l = lines(&out);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["provenance"]["space"], "imbed-hash/text@v1:256");
    assert_eq!(l[0]["provenance"]["description"]["source"], "query");

    let out = imbed(dir.path())
        .args(["--config", c, "plugins", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hash = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "hash")
        .unwrap();
    assert_eq!(hash["health"]["state"], "ready");
    assert_eq!(hash["health"]["roles"]["image_embedder"], true);
    assert_eq!(hash["http"].as_array().unwrap().len(), 0);

    let out = imbed(dir.path())
        .args(["--config", c, "plugins"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hash: ready — hash 1.0.0"), "{text}");
    assert!(
        text.contains("grants:  http none; env none; files none"),
        "{text}"
    );

    let out = imbed(dir.path())
        .args(["--config", c, "config", "check"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("valid") && text.contains("3 of 3 steps"),
        "{text}"
    );
}

#[test]
fn dotenv_and_environment_feed_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new()
        .plugin(
            "hash",
            PluginSpec::hash().setting("dimensions", "${HASH_DIMS:-256}"),
        )
        .hash("hash")
        .write(dir.path());
    std::fs::write(dir.path().join(".env"), "HASH_DIMS=96\n").unwrap();
    let out = imbed(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "embed-text", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["provenance"]["dimensions"], 96);
    // The process environment wins over .env.
    let out = imbed(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "embed-text", "x"])
        .env("HASH_DIMS", "48")
        .output()
        .unwrap();
    assert_eq!(lines(&out)[0]["provenance"]["dimensions"], 48);
    // IMBED_CONFIG selects the file when --config is absent.
    let out = imbed(dir.path())
        .args(["embed-text", "x"])
        .env("IMBED_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(lines(&out)[0]["provenance"]["dimensions"], 96);
}

#[test]
fn plugins_check_describes_a_component_and_refuses_other_contract_versions() {
    let dir = tempfile::tempdir().unwrap();
    let out = imbed(dir.path())
        .args([
            "plugins",
            "check",
            component("hash").to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["component"]["contract"], "0.2.0");
    assert_eq!(v["health"]["state"], "ready");
    assert_eq!(v["health"]["roles"]["text_embedder"], true);
    let exports: Vec<&str> = v["component"]["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        exports.contains(&"imbed:plugin/image-embedder@0.2.0"),
        "{exports:?}"
    );

    let out = imbed(dir.path())
        .args(["plugins", "check", component("misbehave").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("capability:   http"), "{text}");

    let out = imbed(dir.path())
        .args([
            "plugins",
            "check",
            component("future-contract").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("built for imbed:plugin@9.0.0, but this host serves imbed:plugin@0.1.0 and imbed:plugin@0.2.0"),
        "{text}"
    );

    std::fs::write(dir.path().join("x.wasm"), "not wasm").unwrap();
    let out = imbed(dir.path())
        .args(["plugins", "check", "x.wasm"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("x.wasm is not a valid WebAssembly component"),
        "{}",
        stderr(&out)
    );

    // Checking needs no config: a broken ./imbed.toml does not stop it, while commands that
    // need the config refuse with exit 2.
    std::fs::write(dir.path().join("imbed.toml"), "this is = = broken").unwrap();
    let hash = component("hash");
    let out = imbed(dir.path())
        .args(["plugins", "check", hash.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = imbed(dir.path())
        .args(["embed-text", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("imbed.toml:1"), "{}", stderr(&out));
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    // `imbed embed ... | head -1`: the pipe closes after the first line; imbed stops quietly
    // and exits 0, as ripgrep does.
    let dir = tempfile::tempdir().unwrap();
    let cfg = hash_config(dir.path());
    let mut args = vec![
        "--config".to_string(),
        cfg.display().to_string(),
        "embed".into(),
    ];
    for i in 0..6 {
        let name = format!("{i}.png");
        std::fs::write(dir.path().join(&name), images::png(32, 24, i)).unwrap();
        args.push(name);
    }
    let mut child = imbed(dir.path())
        .args(&args)
        .arg("--concurrency=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("\"vector\""), "{first}");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert!(!err.to_lowercase().contains("pipe"), "{err}");
}

#[test]
fn stdin_is_read_only_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .input("max_bytes", "1000000")
        .write(dir.path());
    let started = std::time::Instant::now();
    let out = imbed(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "embed", "-"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the image <stdin> is larger than 1000000 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // A device given as a path is refused before anything is read.
    let out = imbed(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "embed", "/dev/zero"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/dev/zero: it is a character device"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_engine_that_cannot_start_has_its_own_exit_code() {
    // No file descriptors to spare: the async runtime cannot make its event queue, so nothing
    // can run. That is not "no step answered" (1), and scripts can tell.
    let dir = tempfile::tempdir().unwrap();
    let cfg = hash_config(dir.path());
    std::fs::write(dir.path().join("a.png"), images::png(16, 16, 0)).unwrap();
    let bin = env!("CARGO_BIN_EXE_imbed");
    let out = Command::new("sh")
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env("IMBED_BIN", bin)
        .env("IMBED_CFG", &cfg)
        .args([
            "-c",
            "ulimit -n 4 && exec \"$IMBED_BIN\" --config \"$IMBED_CFG\" embed a.png",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot start"), "{}", stderr(&out));
}
