//! The Python test plugin (`tests/programs/python-embedder`), built with `componentize-py` from
//! the same `wit/0.2.0` files as the Rust plugins: proof that the contract is not tied to Rust.
//!
//! A Python component bundles CPython (about 18 MB) and takes several seconds to build and tens
//! of seconds to compile, so both are cached under `target/python-embedder/`, keyed by what went
//! into them: a second test run neither rebuilds nor recompiles.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::repo_root;

/// The componentize-py release the plugin is built and tested with; scripts/setup installs it.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The WIT world the plugin targets.
pub const WORLD: &str = "embedder-plugin";

/// The plugin's source folder.
pub fn source_dir() -> PathBuf {
    repo_root().join("tests/programs/python-embedder")
}

/// Where the built component and its compile cache live.
fn out_dir() -> PathBuf {
    repo_root().join("target/python-embedder")
}

/// A compile cache that outlives the test process: the host keys its entries by the
/// component's SHA-256 and the engine's settings, so sharing it across runs is safe.
pub fn compile_cache_dir() -> PathBuf {
    out_dir().join("compile-cache")
}

/// The `componentize-py` program: on `PATH`, else in the scripts folder of `python3` (where
/// `pip install` puts it when that folder is not on `PATH`).
fn componentize_py() -> Result<PathBuf, String> {
    let on_path = Command::new("componentize-py").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return Ok(PathBuf::from("componentize-py"));
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match scripts.map(|d| d.join("componentize-py")) {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(format!(
            "componentize-py is not installed: run `scripts/setup --test` (it installs \
             componentize-py=={COMPONENTIZE_PY_VERSION} with pip)"
        )),
    }
}

/// Files whose content decides the component: the Python sources and the contract.
fn inputs() -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for (dir, ext) in [(source_dir(), "py"), (repo_root().join("wit/0.2.0"), "wit")] {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|x| x == ext) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Build the component, or return the one built before from the same inputs.
pub fn build() -> Result<PathBuf, String> {
    let tool = componentize_py()?;
    let version = Command::new(&tool)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    // Another release may generate other bindings or other WASI imports: build only with the
    // one this plugin was checked with.
    if version != format!("componentize-py {COMPONENTIZE_PY_VERSION}") {
        return Err(format!(
            "found {version:?}, but the Python plugin is built with componentize-py \
             {COMPONENTIZE_PY_VERSION}: run `scripts/setup --test`, or `python3 -m pip install \
             componentize-py=={COMPONENTIZE_PY_VERSION}`"
        ));
    }

    let root = repo_root();
    let mut hash = Sha256::new();
    hash.update(version.as_bytes());
    hash.update(WORLD.as_bytes());
    for file in inputs()? {
        let bytes =
            std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        hash.update(
            file.strip_prefix(&root)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = out_dir();
    let wasm = out.join(format!("py_embedder-{key}.wasm"));
    if wasm.is_file() {
        return Ok(wasm);
    }

    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    // Build under a name of this process, then rename: a concurrent test process sees either
    // no component or a whole one.
    let tmp = out.join(format!(".py_embedder-{key}.{}.wasm", std::process::id()));
    let result = Command::new(&tool)
        .arg("-d")
        .arg(root.join("wit/0.2.0"))
        .args(["-w", WORLD, "componentize", "-p"])
        .arg(source_dir())
        .arg("app")
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if !result.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "componentize-py failed to build {}:\n{}{}",
            source_dir().display(),
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    std::fs::rename(&tmp, &wasm)
        .map_err(|e| format!("cannot move the component into place: {e}"))?;
    // Earlier builds (18 MB each) and their compiled forms (35 MB each) are of no further use.
    if let Ok(entries) = std::fs::read_dir(&out) {
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("py_embedder-") && path != wasm {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = std::fs::remove_dir_all(compile_cache_dir());
    Ok(wasm)
}

/// The built component, built at most once per test process; panics with the reason (and what
/// to do) when it cannot be built.
pub fn component() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}
