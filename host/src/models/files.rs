//! The file-system steps pulls and imports share: locks, `.part` names, durable renames,
//! hashing while reading or copying, and the manifest.

use super::error::ModelError;
use super::registry::ModelFile;
use super::report::{FileOutcome, Manifest, Progress, ProgressEvent};
use super::{CHUNK, LOCK_FILE, MANIFEST};
use sha2::Digest;
use sha2::Sha256;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(super) fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// An exclusive lock on the model's folder for as long as the returned file is open.
///
/// A lock just released can look held for a moment: a child process forked by another thread
/// shares the lock's open file until it execs. So a held lock is retried briefly before the
/// folder is reported busy; a real concurrent pull holds it far longer.
pub(super) async fn lock(dir: &Path, name: &str) -> Result<std::fs::File, ModelError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ModelError::io("create", &path, e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ModelError::Busy {
                    model: name.to_string(),
                    lock: path,
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ModelError::io("lock", &path, e)),
        }
    }
}

pub(super) async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.is_file())
        .unwrap_or(false)
}

pub(super) async fn create_dir_all(dir: &Path) -> Result<(), ModelError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ModelError::io("create", dir, e))
}

pub(super) async fn remove_file(path: &Path) -> Result<(), ModelError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ModelError::io("remove", path, e)),
    }
}

/// Rename within one folder, then make the rename itself durable.
pub(super) async fn rename(from: &Path, to: &Path) -> Result<(), ModelError> {
    tokio::fs::rename(from, to)
        .await
        .map_err(|e| ModelError::io("rename into place", to, e))?;
    sync_dir(to.parent().unwrap_or(Path::new("."))).await
}

pub(super) async fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    #[cfg(unix)]
    {
        let d = tokio::fs::File::open(dir)
            .await
            .map_err(|e| ModelError::io("open", dir, e))?;
        d.sync_all()
            .await
            .map_err(|e| ModelError::io("sync", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

pub(super) async fn same_file(a: &Path, b: &Path) -> bool {
    match (
        tokio::fs::canonicalize(a).await,
        tokio::fs::canonicalize(b).await,
    ) {
        (Ok(x), Ok(y)) if x == y => true,
        #[cfg(unix)]
        _ => {
            use std::os::unix::fs::MetadataExt;
            match (tokio::fs::metadata(a).await, tokio::fs::metadata(b).await) {
                (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
                _ => false,
            }
        }
        #[cfg(not(unix))]
        _ => false,
    }
}

/// Hash a file that is already there and compare it with the registry; `ok_outcome` is what a
/// match is reported as.
pub(super) async fn check_existing(
    path: &Path,
    file: &ModelFile,
    ok_outcome: FileOutcome,
    progress: &dyn Progress,
) -> Result<bool, ModelError> {
    progress.event(ProgressEvent::Checking {
        file: &file.path,
        size: file.size,
    });
    let mut hasher = Sha256::new();
    let len = hash_into(path, &mut hasher, &file.path, progress).await?;
    let ok = len == file.size && crate::input::hex(&hasher.finalize()) == file.sha256;
    progress.event(ProgressEvent::Finished {
        file: &file.path,
        outcome: if ok {
            ok_outcome
        } else {
            FileOutcome::Mismatch
        },
    });
    Ok(ok)
}

/// Feed a file's bytes to `hasher`; returns its length.
pub(super) async fn hash_into(
    path: &Path,
    hasher: &mut Sha256,
    label: &str,
    progress: &dyn Progress,
) -> Result<u64, ModelError> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ModelError::io("read", path, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| ModelError::io("read", path, e))?;
        if n == 0 {
            return Ok(done);
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.event(ProgressEvent::Advanced { file: label, done });
    }
}

/// Copy `src` to `dst` (created or truncated), hashing what is written; synced to disk.
pub(super) async fn copy_hashing(
    src: &Path,
    dst: &Path,
    label: &str,
    progress: &dyn Progress,
) -> Result<String, ModelError> {
    let mut input = tokio::fs::File::open(src)
        .await
        .map_err(|e| ModelError::io("read", src, e))?;
    let mut out = tokio::fs::File::create(dst)
        .await
        .map_err(|e| ModelError::io("create", dst, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|e| ModelError::io("read", src, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .await
            .map_err(|e| ModelError::io("write", dst, e))?;
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.event(ProgressEvent::Advanced { file: label, done });
    }
    out.flush()
        .await
        .map_err(|e| ModelError::io("write", dst, e))?;
    out.sync_all()
        .await
        .map_err(|e| ModelError::io("write", dst, e))?;
    Ok(crate::input::hex(&hasher.finalize()))
}

pub(super) async fn read_manifest(dir: &Path) -> Option<Manifest> {
    let bytes = tokio::fs::read(dir.join(MANIFEST)).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) async fn remove_manifest(dir: &Path) -> Result<(), ModelError> {
    remove_file(&dir.join(MANIFEST)).await?;
    sync_dir(dir).await
}

/// Written through a temporary name and renamed, like the files it vouches for.
pub(super) async fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ModelError> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!(".{MANIFEST}.tmp"));
    let mut text = serde_json::to_string_pretty(manifest).unwrap_or_default();
    text.push('\n');
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| ModelError::io("create", &tmp, e))?;
    f.write_all(text.as_bytes())
        .await
        .map_err(|e| ModelError::io("write", &tmp, e))?;
    f.sync_all()
        .await
        .map_err(|e| ModelError::io("write", &tmp, e))?;
    rename(&tmp, &path).await
}
