//! `imbed models`: pull over real HTTP from a local server serving files the tests generate
//! (with a registry the tests write, so nothing depends on Hugging Face), resume, corruption,
//! list/verify/remove/import, and the CLI end to end.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;

use imbed::models::{
    FileOutcome, Format, Formats, Manifest, ModelError, ModelState, Models, NoProgress, Progress,
    ProgressEvent, Registry, MANIFEST,
};
use imbed::Env;
use imbed_tests::files::FileServer;
use imbed_tests::{PluginSpec, TestConfig};
use sha2::{Digest, Sha256};

use crate::cli::imbed;

const NAME: &str = "tiny-model";

/// Deterministic bytes that do not compress or repeat.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A model of generated files: the registry text naming them, and their contents.
struct Fixture {
    files: Vec<(&'static str, Vec<u8>)>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            files: vec![
                ("weights.safetensors", bytes(3 << 20, 1)),
                ("config.json", br#"{"hidden_size": 8}"#.to_vec()),
                ("1_Pooling/config.json", br#"{"mean": true}"#.to_vec()),
            ],
        }
    }

    fn registry_toml(&self, name: &str, source: &str) -> String {
        let mut t = format!(
            "[[models]]\nname = \"{name}\"\nplugin = \"tiny\"\ndescription = \"generated\"\nsource = \"{source}\"\n"
        );
        for (path, data) in &self.files {
            t.push_str(&format!(
                "[[models.files]]\npath = \"{path}\"\nsize = {}\nsha256 = \"{}\"\n",
                data.len(),
                sha(data)
            ));
        }
        t
    }

    fn registry(&self, source: &str) -> Registry {
        Registry::from_toml_str(&self.registry_toml(NAME, source), "<test>").unwrap()
    }

    /// Serve the files under `<prefix>/<path>`.
    fn serve(&self, server: &FileServer, prefix: &str) {
        for (path, data) in &self.files {
            server.file(&format!("{prefix}/{path}"), data.clone());
        }
    }

    /// Write the files into a folder, as an already-downloaded copy.
    fn write_folder(&self, dir: &Path) {
        for (path, data) in &self.files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
    }

    fn data(&self, path: &str) -> &[u8] {
        &self.files.iter().find(|(p, _)| *p == path).unwrap().1
    }
}

/// Everything under `dir`, relative, sorted; lock files left out.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if e.file_name() != ".imbed-lock" {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[track_caller]
fn assert_model_matches(dir: &Path, fixture: &Fixture) {
    for (path, data) in &fixture.files {
        let on_disk = std::fs::read(dir.join(path)).unwrap_or_default();
        assert!(on_disk == *data, "{path} differs from what was served");
    }
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest.name, NAME);
    for (path, data) in &fixture.files {
        assert_eq!(manifest.files.get(*path), Some(&sha(data)), "{path}");
    }
    assert_eq!(manifest.files.len(), fixture.files.len());
    assert!(
        !tree(dir)
            .iter()
            .any(|p| p.ends_with(".part") || p.ends_with(".tmp")),
        "{:?}",
        tree(dir)
    );
}

/// Records events, to check what a progress bar would have been told.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn event(&self, event: ProgressEvent<'_>) {
        let line = match event {
            ProgressEvent::Downloading {
                file, size, offset, ..
            } => format!("download {file} {size} from {offset}"),
            ProgressEvent::Advanced { file, done } => format!("advance {file} {done}"),
            ProgressEvent::Finished { file, outcome } => format!("finish {file} {outcome:?}"),
            ProgressEvent::Checking { file, .. } => format!("check {file}"),
            ProgressEvent::Importing { file, .. } => format!("import {file}"),
            _ => "other".into(),
        };
        self.0.lock().unwrap().push(line);
    }
}

#[tokio::test]
async fn pull_downloads_verifies_and_writes_the_manifest_last() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, "/repo");
    let models = Models::new(fixture.registry(&server.url("/repo")), tmp.path());
    let progress = Recorder::default();

    let report = models.pull(NAME, None, &progress).await.unwrap();

    let dir = tmp.path().join(NAME);
    assert_eq!(report.dir, dir);
    assert_eq!(report.source, server.url("/repo"));
    assert_eq!(report.downloaded.len(), 3);
    assert_eq!(
        report.bytes_downloaded,
        fixture.files.iter().map(|f| f.1.len() as u64).sum::<u64>()
    );
    assert_model_matches(&dir, &fixture);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
    let keys: Vec<_> = manifest.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["name", "files", "source", "weights_sha256"]);
    assert_eq!(manifest["source"], server.url("/repo"));
    // The weights name the space: recorded whichever formats are pulled.
    assert_eq!(
        manifest["weights_sha256"],
        manifest["files"]["weights.safetensors"]
    );

    let events = progress.0.lock().unwrap().clone();
    let size = 3 << 20;
    assert!(events.contains(&format!("download weights.safetensors {size} from 0")));
    assert!(events.contains(&format!("advance weights.safetensors {size}")));
    assert!(events.contains(&"finish weights.safetensors Downloaded".to_string()));
    let advances: Vec<u64> = events
        .iter()
        .filter_map(|e| e.strip_prefix("advance weights.safetensors "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(advances.windows(2).all(|w| w[0] < w[1]), "{advances:?}");

    // Again: everything is hashed, found right, and nothing is fetched.
    server.clear_requests();
    let again = models.pull(NAME, None, &NoProgress).await.unwrap();
    assert!(again.downloaded.is_empty());
    assert_eq!(again.already_present.len(), 3);
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_model_matches(&dir, &fixture);
}

#[tokio::test]
async fn sources_come_from_flag_env_per_model_url_mirror_then_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    for prefix in [
        "/registry".to_string(),
        "/direct".into(),
        format!("/mirror/{NAME}"),
        format!("/env/{NAME}"),
        "/flag".into(),
    ] {
        fixture.serve(&server, &prefix);
    }
    let registry_file = tmp.path().join("registry.toml");
    std::fs::write(
        &registry_file,
        fixture.registry_toml(NAME, &server.url("/registry")),
    )
    .unwrap();
    let config_with = |models_section: &str| {
        let text = format!(
            "{}[models]\ndir = \"{}\"\nregistry = \"{}\"\n{models_section}",
            TestConfig::new()
                .plugin("hash", PluginSpec::file("/nonexistent/hash.wasm"))
                .hash("hash")
                .toml(),
            tmp.path().join("models").display(),
            registry_file.display()
        );
        imbed::Config::from_toml_str(&text, "<test>", None, &Env::isolated()).unwrap()
    };
    let first_path = |server: &FileServer| {
        let r = server.requests();
        assert!(!r.is_empty());
        r[0].path.clone()
    };
    let cases: [(&str, Option<&str>, Option<String>, String); 5] = [
        ("", None, None, "/registry".into()),
        (
            &format!("mirror = \"{}\"\n", server.url("/mirror")),
            None,
            None,
            format!("/mirror/{NAME}"),
        ),
        (
            &format!(
                "mirror = \"{}\"\n[models.urls]\n{NAME} = \"{}\"\n",
                server.url("/mirror"),
                server.url("/direct")
            ),
            None,
            None,
            "/direct".into(),
        ),
        (
            &format!("[models.urls]\n{NAME} = \"{}\"\n", server.url("/direct")),
            None,
            Some(server.url("/env")),
            format!("/env/{NAME}"),
        ),
        ("", Some("/flag"), Some(server.url("/env")), "/flag".into()),
    ];
    for (section, from, env_mirror, expected_prefix) in cases {
        let config = config_with(section);
        let env = match &env_mirror {
            Some(m) => Env::isolated().set("IMBED_MODEL_MIRROR", m),
            None => Env::isolated(),
        };
        let models = Models::from_config(&config, &env).unwrap();
        models.remove(NAME).await.unwrap();
        server.clear_requests();
        let from = from.map(|f| server.url(f));
        let report = models
            .pull(NAME, from.as_deref(), &NoProgress)
            .await
            .unwrap();
        assert!(
            first_path(&server).starts_with(&format!("{expected_prefix}/")),
            "{section} {env_mirror:?}: {:?}",
            server.requests()
        );
        assert_eq!(report.source, server.url(&expected_prefix));
        assert_model_matches(&tmp.path().join("models").join(NAME), &fixture);
    }
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_nothing_is_left_under_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, "/repo");
    // Same size, one byte changed: only the hash can tell.
    let mut bad = fixture.data("weights.safetensors").to_vec();
    bad[1_000_000] ^= 0x40;
    server.file("/repo/weights.safetensors", bad);
    let models = Models::new(fixture.registry(&server.url("/repo")), tmp.path());

    let err = models.pull(NAME, None, &NoProgress).await.unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("weights.safetensors"), "{msg}");
    assert!(
        msg.contains(&sha(fixture.data("weights.safetensors"))),
        "{msg}"
    );
    assert!(msg.contains("deleted"), "{msg}");
    let dir = tmp.path().join(NAME);
    assert_eq!(
        tree(&dir),
        Vec::<String>::new(),
        "nothing may be left behind"
    );

    // A file of the wrong size is refused from its Content-Length, before its body arrives.
    server.file("/repo/weights.safetensors", bytes(5 << 20, 9));
    let err = models.pull(NAME, None, &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("announces 5242880 bytes"), "{err}");
    assert_eq!(tree(&dir), Vec::<String>::new());

    // Fixed at the source, the next pull succeeds.
    fixture.serve(&server, "/repo");
    models.pull(NAME, None, &NoProgress).await.unwrap();
    assert_model_matches(&dir, &fixture);
}

#[tokio::test]
async fn an_interrupted_download_is_resumed_by_the_next_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, "/repo");
    let cut_at = 1_234_567;
    server.cut("/repo/weights.safetensors", cut_at, 1);
    let models = Models::new(fixture.registry(&server.url("/repo")), tmp.path());
    let dir = tmp.path().join(NAME);

    let err = models.pull(NAME, None, &NoProgress).await.unwrap_err();
    let ModelError::Interrupted { done, part, .. } = &err else {
        panic!("expected an interruption, got: {err}");
    };
    assert_eq!(*done, cut_at as u64);
    assert_eq!(std::fs::metadata(part).unwrap().len(), cut_at as u64);
    assert!(err.to_string().contains("again to resume"), "{err}");
    assert!(!dir.join("weights.safetensors").exists());
    assert!(!dir.join(MANIFEST).exists(), "the manifest comes last");

    server.clear_requests();
    let progress = Recorder::default();
    let report = models.pull(NAME, None, &progress).await.unwrap();
    assert_eq!(report.resumed, ["weights.safetensors"]);
    let ranged: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/repo/weights.safetensors")
        .collect();
    assert_eq!(ranged.len(), 1);
    assert_eq!(ranged[0].range.as_deref(), Some("bytes=1234567-"));
    let total: u64 = fixture.files.iter().map(|f| f.1.len() as u64).sum();
    assert_eq!(report.bytes_downloaded, total - cut_at as u64);
    assert!(progress.0.lock().unwrap().contains(&format!(
        "download weights.safetensors {} from {cut_at}",
        3 << 20
    )));
    assert_model_matches(&dir, &fixture);
}

#[tokio::test]
async fn a_server_that_ignores_ranges_makes_the_pull_start_over() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, "/repo");
    server
        .ranges(false)
        .cut("/repo/weights.safetensors", 700_000, 1);
    let models = Models::new(fixture.registry(&server.url("/repo")), tmp.path());

    models.pull(NAME, None, &NoProgress).await.unwrap_err();
    let report = models.pull(NAME, None, &NoProgress).await.unwrap();
    assert!(report.resumed.is_empty());
    assert_model_matches(&tmp.path().join(NAME), &fixture);
}

#[tokio::test]
async fn a_resumed_part_that_does_not_add_up_is_deleted_and_the_next_pull_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, "/repo");
    let models = Models::new(fixture.registry(&server.url("/repo")), tmp.path());
    // A part file whose bytes are not the start of the real file (say, from another version).
    let dir = tmp.path().join(NAME);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("weights.safetensors.part"), bytes(1000, 77)).unwrap();

    let err = models.pull(NAME, None, &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("starts from zero"), "{err}");
    assert!(!dir.join("weights.safetensors.part").exists());
    models.pull(NAME, None, &NoProgress).await.unwrap();
    assert_model_matches(&dir, &fixture);
}

#[tokio::test]
async fn list_verify_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, "/repo");
    let models = Models::new(fixture.registry(&server.url("/repo")), tmp.path());
    let status = |verify| {
        let models = models.clone();
        async move { models.list(verify, &NoProgress).await.unwrap().remove(0) }
    };

    let s = status(false).await;
    assert_eq!(s.state, ModelState::Absent);
    assert_eq!(s.size_on_disk, 0);

    models.pull(NAME, None, &NoProgress).await.unwrap();
    let s = status(true).await;
    assert_eq!(s.state, ModelState::Complete, "{:?}", s.problems);
    assert!(s.verified);
    assert_eq!(s.size_on_disk, s.size);
    assert_eq!(s.source.as_deref(), Some(server.url("/repo").as_str()));

    // Flip a byte in place: sizes still agree, only --verify sees it.
    let weights = tmp.path().join(NAME).join("weights.safetensors");
    let mut data = std::fs::read(&weights).unwrap();
    data[10] ^= 1;
    std::fs::write(&weights, &data).unwrap();
    assert_eq!(status(false).await.state, ModelState::Complete);
    let s = status(true).await;
    assert_eq!(s.state, ModelState::Corrupt);
    assert!(
        s.problems[0].contains("weights.safetensors")
            && s.problems[0].contains(&format!("imbed models pull {NAME}")),
        "{:?}",
        s.problems
    );

    // A missing file makes it incomplete; pull repairs both.
    std::fs::remove_file(tmp.path().join(NAME).join("config.json")).unwrap();
    let s = status(false).await;
    assert_eq!(s.state, ModelState::Incomplete);
    assert!(
        s.problems
            .iter()
            .any(|p| p.starts_with("config.json is missing")),
        "{:?}",
        s.problems
    );
    let report = models.pull(NAME, None, &NoProgress).await.unwrap();
    assert_eq!(report.downloaded, ["weights.safetensors", "config.json"]);
    assert_eq!(status(true).await.state, ModelState::Complete);

    assert!(models.remove(NAME).await.unwrap());
    assert!(!tmp.path().join(NAME).exists());
    assert_eq!(status(false).await.state, ModelState::Absent);
    assert!(
        !models.remove(NAME).await.unwrap(),
        "nothing left to remove"
    );
}

#[tokio::test]
async fn import_takes_a_verified_folder_and_refuses_a_wrong_one() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let models = Models::new(
        fixture.registry("http://127.0.0.1:9/unused"),
        tmp.path().join("models"),
    );
    let dir = tmp.path().join("models").join(NAME);

    // A wrong file: refused, naming it, and nothing is created.
    let wrong = tmp.path().join("wrong");
    fixture.write_folder(&wrong);
    std::fs::write(wrong.join("config.json"), br#"{"hidden_size": 9}"#).unwrap();
    std::fs::remove_file(wrong.join("1_Pooling/config.json")).unwrap();
    let err = models.import(NAME, &wrong, &NoProgress).await.unwrap_err();
    let ModelError::ImportRejected { problems, .. } = &err else {
        panic!("expected a refusal, got: {err}");
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("config.json does not have the registry's SHA-256"));
    assert!(problems[1].starts_with("1_Pooling/config.json is missing"));
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert!(!dir.exists());

    // The right folder: every file placed (linked: same file system), manifest last.
    let good = tmp.path().join("good");
    fixture.write_folder(&good);
    std::fs::write(good.join("README.md"), "not in the registry").unwrap();
    let progress = Recorder::default();
    let report = models.import(NAME, &good, &progress).await.unwrap();
    assert!(
        report.files.iter().all(|(_, o)| *o == FileOutcome::Linked),
        "{:?}",
        report.files
    );
    assert_model_matches(&dir, &fixture);
    assert!(!dir.join("README.md").exists(), "only the registry's files");
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
    let canonical = std::fs::canonicalize(&good).unwrap();
    assert_eq!(manifest.source, format!("import:{}", canonical.display()));
    let s = models.list(true, &NoProgress).await.unwrap().remove(0);
    assert_eq!(s.state, ModelState::Complete, "{:?}", s.problems);

    // A wrong folder later leaves the complete model as it was.
    models.import(NAME, &wrong, &NoProgress).await.unwrap_err();
    assert_model_matches(&dir, &fixture);
}

#[tokio::test]
async fn a_model_another_process_is_changing_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, "/repo");
    let models = Models::new(fixture.registry(&server.url("/repo")), tmp.path());
    let dir = tmp.path().join(NAME);
    std::fs::create_dir_all(&dir).unwrap();
    let held = std::fs::File::create(dir.join(".imbed-lock")).unwrap();
    held.try_lock().unwrap();

    let err = models.pull(NAME, None, &NoProgress).await.unwrap_err();
    assert!(matches!(err, ModelError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("wait for it to finish"), "{err}");
    assert!(server.requests().is_empty());
    assert!(matches!(
        models.remove(NAME).await.unwrap_err(),
        ModelError::Busy { .. }
    ));

    drop(held);
    models.pull(NAME, None, &NoProgress).await.unwrap();
    assert_model_matches(&dir, &fixture);
}

#[test]
fn bad_models_settings_are_config_errors_with_their_line() {
    let base = TestConfig::new()
        .plugin("hash", PluginSpec::file("/nonexistent/hash.wasm"))
        .hash("hash")
        .toml();
    for (section, expect) in [
        ("mirror = \"ftp://x\"\n", "[models] mirror"),
        ("[models.urls]\nm = \"not a url\"\n", "[models] urls.m"),
        ("surprise = 1\n", "surprise"),
    ] {
        let text = format!("{base}[models]\n{section}");
        let line = text.lines().count();
        let err = imbed::Config::from_toml_str(&text, "<test>", None, &Env::isolated())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{err}");
        assert!(err.starts_with(&format!("<test>:{line}")), "{err}");
    }
    // Empty means unset, so the mirror can come from a variable that may be empty.
    let text = format!("{base}[models]\nmirror = \"${{IMBED_MODEL_MIRROR:-}}\"\n");
    let config = imbed::Config::from_toml_str(&text, "<test>", None, &Env::isolated()).unwrap();
    assert_eq!(config.models.mirror, None);
    assert_eq!(
        config.models.dir,
        PathBuf::from(Env::isolated().get("IMBED_HOME").unwrap()).join("models")
    );
}

#[tokio::test]
async fn unknown_names_list_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let models = Models::new(fixture.registry("http://127.0.0.1:9/x"), tmp.path());
    let pull = models.pull("nope", None, &NoProgress).await.unwrap_err();
    let import = models
        .import("nope", tmp.path(), &NoProgress)
        .await
        .unwrap_err();
    let remove = models.remove("nope").await.unwrap_err();
    for err in [pull, import, remove] {
        assert!(err.is_usage());
        assert_eq!(
            err.to_string(),
            format!("unknown model \"nope\": known models are {NAME}")
        );
    }
}

/// The real MiniLM files, as `scripts/setup` leaves them (from the PyPI wheel), import against
/// the built-in registry: its sizes and SHA-256 values are those of the real files.
#[tokio::test]
async fn the_builtin_minilm_entry_matches_the_real_files() {
    let real = imbed_tests::models::minilm_dir();
    let tmp = tempfile::tempdir_in(imbed_tests::repo_root().join("target")).unwrap();
    let models = Models::new(Registry::builtin().unwrap(), tmp.path());
    let report = models
        .import("all-minilm-l6-v2", &real, &NoProgress)
        .await
        .unwrap();
    // The six registry files and the text.onnx scripts/setup converted from them.
    assert_eq!(report.files.len(), 7, "{:?}", report.files);
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(tmp.path().join("all-minilm-l6-v2").join(MANIFEST)).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.converted, ["text.onnx"]);
    assert_eq!(
        manifest.files["text.onnx"],
        sha(&std::fs::read(real.join("text.onnx")).unwrap())
    );
    assert_eq!(
        manifest.weights_sha256.as_deref(),
        Some(manifest.files["model.safetensors"].as_str())
    );
    let s = models.list(true, &NoProgress).await.unwrap();
    let minilm = s.iter().find(|m| m.name == "all-minilm-l6-v2").unwrap();
    assert_eq!(minilm.state, ModelState::Complete, "{:?}", minilm.problems);
    assert_eq!(minilm.formats, [Format::Safetensors, Format::Onnx]);
    let clip = s
        .iter()
        .find(|m| m.name == "clip-vit-base-patch32")
        .unwrap();
    assert_eq!(clip.state, ModelState::Absent);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_cli_pulls_lists_imports_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Fixture::new();
    let server = FileServer::start();
    fixture.serve(&server, &format!("/mirror/{NAME}"));
    let registry_file = tmp.path().join("registry.toml");
    std::fs::write(
        &registry_file,
        fixture.registry_toml(NAME, "http://127.0.0.1:9/unreachable"),
    )
    .unwrap();
    // No `dir`: the default, ${IMBED_HOME}/models, is where plugins' model_dir grants point.
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{}[models]\nregistry = \"{}\"\n",
            TestConfig::new()
                .plugin("hash", PluginSpec::file("/nonexistent/hash.wasm"))
                .hash("hash")
                .toml(),
            registry_file.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| -> Output {
        imbed(tmp.path())
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("IMBED_MODEL_MIRROR", server.url("/mirror"))
            .env_remove("IMBED_HOME")
            .output()
            .unwrap()
    };
    let dir: PathBuf = tmp.path().join("data/imbed/models").join(NAME);

    let out = run(&["models", "pull", NAME]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_model_matches(&dir, &fixture);
    // Not a terminal: plain lines, no progress bar escapes.
    let err = stderr(&out);
    assert!(err.contains("weights.safetensors"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
    // No plugin of this config reads the folder: the CLI says which grant to set.
    assert!(
        err.contains("no plugin in") && err.contains("[plugins.tiny.grants]"),
        "{err}"
    );

    let out = run(&["models", "list", "--json", "--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == NAME)
        .unwrap();
    assert_eq!(ours["state"], "complete");
    assert_eq!(ours["verified"], true);
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"all-minilm-l6-v2") && names.contains(&"clip-vit-base-patch32"));

    let out = run(&["models", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(NAME) && text.contains("complete"), "{text}");

    let out = run(&["models", "pull", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("known models are all-minilm-l6-v2, clip-vit-base-patch32, tiny-model"),
        "{}",
        stderr(&out)
    );

    let out = run(&["models", "remove", NAME]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!dir.exists());

    let wrong = tmp.path().join("wrong");
    fixture.write_folder(&wrong);
    std::fs::write(wrong.join("weights.safetensors"), b"short").unwrap();
    let out = run(&["models", "import", NAME, wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("weights.safetensors is 5 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.exists());

    // Now a plugin is granted the folder: no note.
    std::fs::write(
        &config,
        format!(
            "{}[models]\nregistry = \"{}\"\n",
            TestConfig::new()
                .plugin(
                    "tiny",
                    PluginSpec::file("/nonexistent/tiny.wasm").grant_model_dir(&dir)
                )
                .hash("tiny")
                .toml(),
            registry_file.display()
        ),
    )
    .unwrap();
    let good = tmp.path().join("good");
    fixture.write_folder(&good);
    let out = run(&["models", "import", NAME, good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_model_matches(&dir, &fixture);
    assert!(!stderr(&out).contains("no plugin in"), "{}", stderr(&out));

    // A mirror serving a corrupt file: exit 1, the file named, nothing left behind.
    run(&["models", "remove", NAME]);
    let mut bad = fixture.data("weights.safetensors").to_vec();
    bad[0] ^= 1;
    server.file(&format!("/mirror/{NAME}/weights.safetensors"), bad);
    let out = run(&["models", "pull", NAME]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match the registry"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("weights.safetensors").exists());
    assert!(!dir.join("weights.safetensors.part").exists());
}

#[tokio::test]
async fn doctor_checks_granted_model_folders_against_the_registry() {
    let tmp = tempfile::tempdir_in(imbed_tests::repo_root().join("target")).unwrap();
    let minilm = tmp.path().join("all-minilm-l6-v2");
    let clip = tmp.path().join("clip-vit-base-patch32");
    Models::new(Registry::builtin().unwrap(), tmp.path())
        .import(
            "all-minilm-l6-v2",
            &imbed_tests::models::minilm_dir(),
            &NoProgress,
        )
        .await
        .unwrap();
    let cfg = TestConfig::new()
        .plugin(
            "minilm",
            PluginSpec::file("/nonexistent/minilm.wasm").grant_model_dir(&minilm),
        )
        .plugin(
            "clip",
            PluginSpec::file("/nonexistent/clip.wasm").grant_model_dir(&clip),
        )
        .plugin("hash", PluginSpec::hash())
        .hash("hash");
    let doctor = || async {
        let imbed = imbed::Imbed::new(cfg.build()).await.unwrap();
        imbed::doctor::run(&imbed).await.model_dirs
    };
    let of = |dirs: &[imbed::doctor::ModelDirCheck], plugin: &str| {
        dirs.iter().find(|d| d.plugin == plugin).unwrap().clone()
    };

    let dirs = doctor().await;
    let m = of(&dirs, "minilm");
    assert_eq!(
        (m.model.as_deref(), m.state),
        (Some("all-minilm-l6-v2"), Some(ModelState::Complete)),
        "{:?}",
        m.problems
    );
    let c = of(&dirs, "clip");
    assert_eq!(
        (c.model.as_deref(), c.state, c.exists),
        (
            Some("clip-vit-base-patch32"),
            Some(ModelState::Absent),
            false
        )
    );

    // A truncated weights file: corrupt, with the command that repairs it.
    let weights = minilm.join("model.safetensors");
    let data = std::fs::read(&weights).unwrap();
    std::fs::remove_file(&weights).unwrap(); // a hard link: do not truncate the original
    std::fs::write(&weights, &data[..1000]).unwrap();
    let m = of(&doctor().await, "minilm");
    assert_eq!(m.state, Some(ModelState::Corrupt));
    assert!(
        m.problems
            .iter()
            .any(|p| p.contains("model.safetensors is 1000 bytes")
                && p.contains("imbed models pull all-minilm-l6-v2")),
        "{:?}",
        m.problems
    );
}

/// A model with both formats: the safetensors from the model's source, graphs from another
/// repository (their own `url`) under local names.
fn two_format_registry(server: &FileServer) -> (Registry, Vec<(&'static str, Vec<u8>)>) {
    let files: Vec<(&'static str, Vec<u8>, Option<&str>)> = vec![
        ("config.json", br#"{"hidden_size": 8}"#.to_vec(), None),
        ("model.safetensors", bytes(1 << 20, 7), Some("safetensors")),
        ("vision.onnx", bytes(300_000, 8), Some("onnx")),
        ("text.onnx", bytes(200_000, 9), Some("onnx")),
    ];
    let mut t = format!(
        "[[models]]\nname = \"{NAME}\"\nplugin = \"tiny\"\nsource = \"{}\"\n",
        server.url("/repo")
    );
    for (path, data, format) in &files {
        t.push_str(&format!(
            "[[models.files]]\npath = \"{path}\"\nsize = {}\nsha256 = \"{}\"\n",
            data.len(),
            sha(data)
        ));
        if let Some(format) = format {
            t.push_str(&format!("format = \"{format}\"\n"));
        }
        match *path {
            "vision.onnx" | "text.onnx" => {
                // Published elsewhere, under another name.
                let remote = format!("/exports/{}/model.onnx", path.trim_end_matches(".onnx"));
                server.file(&remote, data.clone());
                t.push_str(&format!("url = \"{}\"\n", server.url(&remote)));
            }
            _ => {
                server.file(&format!("/repo/{path}"), data.clone());
            }
        }
    }
    let registry = Registry::from_toml_str(&t, "<test>").unwrap();
    (
        registry,
        files.into_iter().map(|(p, d, _)| (p, d)).collect(),
    )
}

#[tokio::test]
async fn formats_are_pulled_on_request_from_their_own_urls_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FileServer::start();
    let (registry, files) = two_format_registry(&server);
    let models = Models::new(registry, tmp.path());
    let dir = tmp.path().join(NAME);

    // The default: the safetensors set, no graphs.
    let report = models.pull(NAME, None, &NoProgress).await.unwrap();
    assert_eq!(report.downloaded, ["config.json", "model.safetensors"]);
    assert!(!dir.join("text.onnx").exists());
    let status = models.list(false, &NoProgress).await.unwrap().remove(0);
    assert_eq!(status.state, ModelState::Complete, "{:?}", status.problems);
    assert_eq!(status.formats, [Format::Safetensors]);

    // The graphs too: fetched from their own URLs, stored under their local names, and the
    // safetensors stay listed.
    server.clear_requests();
    let report = models
        .pull_formats(NAME, None, Formats::onnx(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.downloaded, ["vision.onnx", "text.onnx"]);
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths.contains(&"/exports/vision/model.onnx".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/exports/text/model.onnx".to_string()),
        "{paths:?}"
    );
    for (path, data) in &files {
        assert_eq!(&std::fs::read(dir.join(path)).unwrap(), data, "{path}");
    }
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest.files.len(), 4, "{manifest:?}");
    assert_eq!(manifest.weights_sha256, Some(sha(&files[1].1)));
    let status = models.list(true, &NoProgress).await.unwrap().remove(0);
    assert_eq!(status.state, ModelState::Complete, "{:?}", status.problems);
    assert_eq!(status.formats, [Format::Safetensors, Format::Onnx]);

    // Graphs only, elsewhere: complete without the safetensors, same weights named.
    let only = tempfile::tempdir().unwrap();
    let models = Models::new(models.registry().clone(), only.path());
    models
        .pull_formats(NAME, None, Formats::onnx(), &NoProgress)
        .await
        .unwrap();
    assert!(!only.path().join(NAME).join("model.safetensors").exists());
    let status = models.list(false, &NoProgress).await.unwrap().remove(0);
    assert_eq!(status.state, ModelState::Complete, "{:?}", status.problems);
    assert_eq!(status.formats, [Format::Onnx]);
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(only.path().join(NAME).join(MANIFEST)).unwrap())
            .unwrap();
    assert_eq!(manifest.weights_sha256, Some(sha(&files[1].1)));
    // A missing graph is reported with the pull that fetches it.
    std::fs::remove_file(only.path().join(NAME).join("text.onnx")).unwrap();
    let status = models.list(false, &NoProgress).await.unwrap().remove(0);
    assert_eq!(status.state, ModelState::Incomplete);
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.contains("text.onnx is missing") && p.contains("--format onnx")),
        "{:?}",
        status.problems
    );
}

#[tokio::test]
async fn import_takes_either_format_and_records_converted_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FileServer::start();
    let (registry, files) = two_format_registry(&server);
    let models = Models::new(registry, tmp.path().join("models"));
    let data = |p: &str| files.iter().find(|(f, _)| *f == p).unwrap().1.clone();

    // Graphs only, one of them converted locally (not the registry's bytes).
    let folder = tmp.path().join("graphs");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("config.json"), data("config.json")).unwrap();
    std::fs::write(folder.join("vision.onnx"), data("vision.onnx")).unwrap();
    let converted = bytes(123_456, 42);
    std::fs::write(folder.join("text.onnx"), &converted).unwrap();
    models.import(NAME, &folder, &NoProgress).await.unwrap();
    let dir = models.model_dir(NAME);
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest.converted, ["text.onnx"]);
    assert_eq!(manifest.files["text.onnx"], sha(&converted));
    assert_eq!(manifest.files["vision.onnx"], sha(&data("vision.onnx")));
    assert!(!manifest.files.contains_key("model.safetensors"));
    assert_eq!(
        manifest.weights_sha256,
        Some(sha(&data("model.safetensors")))
    );
    let status = models.list(true, &NoProgress).await.unwrap().remove(0);
    assert_eq!(status.state, ModelState::Complete, "{:?}", status.problems);
    // A converted graph that changes afterwards is caught by --verify.
    std::fs::write(dir.join("text.onnx"), bytes(123_456, 43)).unwrap();
    let status = models.list(true, &NoProgress).await.unwrap().remove(0);
    assert_eq!(status.state, ModelState::Corrupt, "{:?}", status.problems);

    // Half a format is refused, naming what is missing; so is no format at all; so are
    // safetensors that are not the registry's (they name the space).
    std::fs::remove_file(folder.join("vision.onnx")).unwrap();
    let err = models
        .import(NAME, &folder, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text.onnx is there but vision.onnx is missing"),
        "{err}"
    );
    std::fs::remove_file(folder.join("text.onnx")).unwrap();
    let err = models
        .import(NAME, &folder, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no format"), "{err}");
    std::fs::write(folder.join("model.safetensors"), bytes(1 << 20, 8)).unwrap();
    let err = models
        .import(NAME, &folder, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors does not have the registry's SHA-256"),
        "{err}"
    );
}
