//! Graph name -> verified file. A graph file is used only when its folder's manifest
//! (`imbed-model.json`, written by `imbed models pull/import`) lists it with a SHA-256 and the
//! file has that SHA-256. Hashing a big graph takes a second, so each file version
//! (path, size, modification time) is hashed once per process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{NnError, NnErrorCode as Code};
use crate::models::{Manifest, MANIFEST};

type FileVersion = (u64, Option<SystemTime>);

/// SHA-256 (hex) of each file version hashed so far.
static HASHED: Mutex<Option<HashMap<PathBuf, (FileVersion, String)>>> = Mutex::new(None);

fn remembered(path: &Path, version: FileVersion) -> Option<String> {
    let hashed = HASHED.lock().unwrap_or_else(|p| p.into_inner());
    hashed
        .as_ref()?
        .get(path)
        .filter(|(v, _)| *v == version)
        .map(|(_, sha)| sha.clone())
}

fn remember(path: &Path, version: FileVersion, sha: String) {
    HASHED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), (version, sha));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 the folder's manifest gives `<name>.onnx`.
pub(super) fn manifest_sha256(file: &Path, name: &str) -> Result<String, NnError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let manifest_path = dir.join(MANIFEST);
    let fix = "`imbed models pull <model>` or `imbed models import <model> <folder>` writes it with each file's SHA-256";
    let text = std::fs::read(&manifest_path).map_err(|e| {
        NnError::new(
            Code::Security,
            format!(
                "graph {name:?} cannot be verified: {} is missing ({e}); {fix}",
                manifest_path.display()
            ),
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        NnError::new(
            Code::Security,
            format!(
                "graph {name:?} cannot be verified: {} is not a valid manifest ({e}); {fix}",
                manifest_path.display()
            ),
        )
    })?;
    let entry = format!("{name}.onnx");
    manifest
        .files
        .get(&entry)
        .map(|s| s.to_ascii_lowercase())
        .ok_or_else(|| {
            NnError::new(
                Code::Security,
                format!(
                    "graph {name:?} cannot be verified: {} does not list {entry}; {fix}",
                    manifest_path.display()
                ),
            )
        })
}

/// Check the bytes just read against the manifest's SHA-256.
pub(super) fn verify(
    path: &Path,
    name: &str,
    size: u64,
    mtime: Option<SystemTime>,
    bytes: &[u8],
    expected: &str,
) -> Result<(), NnError> {
    let version = (size, mtime);
    let actual = match remembered(path, version) {
        // The bytes read may be a newer version than the stat said if the file is being
        // replaced right now; the length tells most of those apart.
        Some(sha) if bytes.len() as u64 == size => sha,
        _ => {
            let sha = hex(&Sha256::digest(bytes));
            remember(path, version, sha.clone());
            sha
        }
    };
    if actual != expected {
        return Err(NnError::new(
            Code::Security,
            format!(
                "graph {name:?}: {} has SHA-256 {actual}, but the folder's {MANIFEST} says {expected}: the file changed or is damaged; pull or import the model again",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Hash a granted file now (for `imbed plugins`), if it is listed and not hashed yet.
pub(super) fn verify_file(path: &Path, name: &str) {
    let Ok(expected) = manifest_sha256(path, name) else {
        return;
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let version = (meta.len(), meta.modified().ok());
    if remembered(path, version).is_some() {
        return;
    }
    if let Ok(bytes) = std::fs::read(path) {
        let _ = verify(path, name, version.0, version.1, &bytes, &expected);
    }
}

/// What `imbed plugins` says about a graph file that is not loaded, without hashing it.
pub(super) fn file_state(path: &Path, name: &str) -> (String, Option<String>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return (
            "missing".into(),
            Some(format!(
                "{} is not there: put the model's ONNX files in the plugin's model_dir",
                path.display()
            )),
        );
    };
    let expected = match manifest_sha256(path, name) {
        Ok(sha) => sha,
        Err(e) => return ("unlisted".into(), Some(e.message)),
    };
    match remembered(path, (meta.len(), meta.modified().ok())) {
        Some(sha) if sha == expected => ("verified".into(), None),
        Some(sha) => (
            "mismatch".into(),
            Some(format!(
                "{} has SHA-256 {sha}, but the manifest says {expected}: pull or import the model again",
                path.display()
            )),
        ),
        None => ("present".into(), None),
    }
}

/// The process's resident memory in bytes (0 where /proc is not there).
pub(super) fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // Linux pages are 4 KiB on the machines imbed targets (x86_64 and most aarch64).
    pages * 4096
}
