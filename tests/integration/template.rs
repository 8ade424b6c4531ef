//! `imbed plugins new`: the generated crate builds to a component offline, passes
//! `imbed plugins check`, its own unit tests pass, and it answers in a chain through the library.
//! docs/PLUGINS.md shows exactly this generated code and this test's chain.

use std::path::{Path, PathBuf};
use std::process::Command;

use imbed::{ImageRequest, ImageSource, Imbed};
use imbed_tests::{images, repo_root, PluginSpec, TestConfig};
use serde_json::Value;

use crate::cli::imbed;

/// A cargo command for a generated crate. Every generated crate shares one target folder under
/// the repository's target/, so the SDK and its dependencies compile once across runs.
fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", repo_root().join("target/template-test"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cannot run cargo")
}

#[track_caller]
fn succeeded(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `imbed plugins new NAME --kind KIND` into a fresh folder; the crate's folder.
fn new_plugin(tmp: &Path, name: &str, kind: &str) -> PathBuf {
    let dir = tmp.join(name);
    let out = imbed(tmp)
        .args(["plugins", "new", name, "--kind", kind, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    succeeded("imbed plugins new", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cargo build --release"));
    dir
}

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host")
}

#[tokio::test]
async fn a_new_embedder_builds_offline_checks_and_answers_in_a_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_plugin(tmp.path(), "letters", "embedder");

    // The guide's example is the generated code, word for word.
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    let guide = std::fs::read_to_string(repo_root().join("docs/PLUGINS.md")).unwrap();
    assert!(
        guide.contains(&lib),
        "docs/PLUGINS.md must show the src/lib.rs that `imbed plugins new letters` writes:\n{lib}"
    );

    succeeded(
        "the generated crate's build",
        &cargo(&dir, &["build", "--release", "--offline"]),
    );
    let tests = cargo(&dir, &["test", "--offline", "--target", &host_triple()]);
    succeeded("the generated crate's unit tests", &tests);
    assert!(String::from_utf8_lossy(&tests.stdout).contains("2 passed"));
    let wasm = repo_root().join("target/template-test/wasm32-wasip2/release/letters.wasm");

    let out = imbed(tmp.path())
        .args(["plugins", "check", "--json"])
        .arg(&wasm)
        .output()
        .unwrap();
    succeeded("imbed plugins check", &out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["component"]["exports"],
        serde_json::json!(["imbed:plugin/plugin@0.2.0", "imbed:plugin/embedder@0.2.0"])
    );
    assert_eq!(report["health"]["state"], "ready");
    assert_eq!(report["health"]["name"], "letters");

    // guide:start
    let config = TestConfig::new()
        .plugin(
            "letters",
            PluginSpec::file(&wasm).setting_raw("dimensions", "32"),
        )
        .plugin("hash", PluginSpec::hash())
        .description("letters")
        .hash("hash")
        .build();
    let imbed = Imbed::new(config).await.unwrap();
    let cat = imbed.embed_text("a cat on a mat").await.unwrap();
    assert_eq!(cat.provenance.space, "letters/letter-bigrams@v1:32");
    assert_eq!(cat.vector.len(), 32);
    // guide:end

    let cats = imbed.embed_text("the cats on the mat").await.unwrap();
    let other = imbed.embed_text("quantum chromodynamics").await.unwrap();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(dot(&cat.vector, &cats.vector) > dot(&cat.vector, &other.vector));

    // In the chain: the caller's description is embedded by the new plugin.
    let req = ImageRequest::new(ImageSource::Bytes(images::png(32, 24, 3)))
        .with_description("a cat on a mat");
    let e = imbed.embed_image(req).await.unwrap();
    assert_eq!(e.provenance.plugin.name, "letters");
    assert_eq!(e.vector, cat.vector);
    // Text it cannot embed falls through to the next step, with the reason recorded.
    let req = ImageRequest::new(ImageSource::Bytes(images::png(32, 24, 3))).with_description("?!");
    let e = imbed.embed_image(req).await.unwrap();
    assert_eq!(e.provenance.plugin.name, "hash");
    assert!(e.provenance.attempts[0]
        .message
        .contains("no letters or digits"));

    // The guide's chain test is this one, word for word.
    let source =
        std::fs::read_to_string(repo_root().join("tests/integration/template.rs")).unwrap();
    let snippet = source
        .split("// guide:start\n")
        .nth(1)
        .and_then(|s| s.split("    // guide:end").next())
        .unwrap();
    let snippet: String = snippet
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        guide.contains(&snippet),
        "docs/PLUGINS.md must show:\n{snippet}"
    );
}

#[test]
fn bad_names_and_used_folders_are_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["My_Plugin", "2fast", "a--b", "test"] {
        let out = imbed(tmp.path())
            .args(["plugins", "new", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{bad:?}")) && err.contains("use lowercase letters"),
            "{err}"
        );
    }
    let out = imbed(tmp.path())
        .args(["plugins", "new", "fine", "--kind", "sorter"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dual-embedder"));

    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    std::fs::write(tmp.path().join("taken/keep.txt"), "mine").unwrap();
    let out = imbed(tmp.path())
        .args(["plugins", "new", "taken"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("taken/keep.txt")).unwrap(),
        "mine"
    );

    let out = imbed(tmp.path())
        .args(["plugins", "new", "lost", "--sdk", "/nonexistent/sdk"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --sdk"));
    assert!(
        !tmp.path().join("lost").exists(),
        "nothing is written when the SDK is missing"
    );
}

#[test]
fn every_kind_is_generated_with_its_roles() {
    // Building each kind would cost minutes; the host's unit tests check every kind's files,
    // and this checks what the command writes to disk for one that reads pixels.
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_plugin(tmp.path(), "shapes", "describer-embedder");
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("export_plugin!(Shapes: describer, embedder);"));
    let cargo_toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(cargo_toml.contains("features = [\"image\"]"));
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("describer = \"shapes\"\nembedder = \"shapes\""));
    assert!(std::fs::read_to_string(dir.join(".cargo/config.toml"))
        .unwrap()
        .contains("target = \"wasm32-wasip2\""));
}
