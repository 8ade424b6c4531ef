//! wasi-nn test support: the tiny ONNX graphs of `tests/fixtures/nn/make_graphs.py` (made once per
//! test process with the `onnx` package that `scripts/setup --test` installs), and model folders
//! holding them with the manifest `imbed models import` would write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::repo_root;

/// The folder of generated graphs: `tiny.onnx`, `types.onnx`, `slow.onnx`.
pub fn graphs() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = repo_root().join("tests/fixtures/nn/make_graphs.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .output()
            .expect("cannot run python3");
        assert!(
            out.status.success(),
            "{} failed (run scripts/setup --test for the onnx package):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

/// The ONNX Runtime library `scripts/setup` unpacks for the tests.
pub fn library() -> PathBuf {
    repo_root().join("target/onnxruntime/libonnxruntime.so.1.22.1")
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read file");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A model folder with copies of `graphs` and a manifest listing each with its SHA-256; the
/// names in `tampered` are listed with a wrong SHA-256 instead.
pub fn model_dir(graphs_wanted: &[&str], tampered: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = serde_json::Map::new();
    for name in graphs_wanted {
        let file = format!("{name}.onnx");
        let dest = dir.path().join(&file);
        std::fs::copy(graphs().join(&file), &dest).expect("copy graph");
        let sha = if tampered.contains(name) {
            "0".repeat(64)
        } else {
            sha256_file(&dest)
        };
        files.insert(file, serde_json::Value::String(sha));
    }
    let manifest = serde_json::json!({
        "name": "nn-test",
        "files": files,
        "source": "import:tests",
    });
    std::fs::write(
        dir.path().join("imbed-model.json"),
        serde_json::to_string_pretty(&manifest).expect("json"),
    )
    .expect("write manifest");
    dir
}
