//! `Models::pull`: download a model's missing files with resume, verify them, write the manifest.

use super::error::ModelError;
use super::files::{
    check_existing, create_dir_all, hash_into, is_file, lock, part_path, read_manifest,
    remove_file, remove_manifest, rename, write_manifest,
};
use super::local::Models;
use super::registry::{Formats, ModelFile, ModelSpec};
use super::report::{FileOutcome, Manifest, Progress, ProgressEvent, PullReport};
use crate::input::describe_reqwest;
use sha2::Digest;
use sha2::Sha256;
use std::path::Path;
use tokio::io::AsyncWriteExt;

impl Models {
    /// Download a model's missing files, verify everything, write the manifest. Files already
    /// there are hashed and kept when they match; a partial download (`<file>.part`) is resumed
    /// with a Range request when the server supports it. A file that does not match the
    /// registry is deleted and the pull fails, naming it.
    pub async fn pull(
        &self,
        name: &str,
        from: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<PullReport, ModelError> {
        self.pull_formats(name, from, Formats::default(), progress)
            .await
    }

    /// [`Models::pull`] of the files of `formats` (and those every format needs). Files of
    /// other formats already in the folder and in its manifest stay listed.
    pub async fn pull_formats(
        &self,
        name: &str,
        from: Option<&str>,
        formats: Formats,
        progress: &dyn Progress,
    ) -> Result<PullReport, ModelError> {
        let spec = self.registry.get(name)?.clone();
        let source = self.source_for(name, from)?;
        // A file published elsewhere (its own `url`) comes from there unless a mirror or
        // `--from` says otherwise.
        let from_registry = source == spec.source;
        let dir = self.model_dir(name);
        create_dir_all(&dir).await?;
        let _lock = lock(&dir, name).await?;

        let mut report = PullReport {
            name: name.to_string(),
            dir: dir.clone(),
            source: source.clone(),
            downloaded: Vec::new(),
            resumed: Vec::new(),
            already_present: Vec::new(),
            bytes_downloaded: 0,
        };
        let mut todo = Vec::new();
        for file in spec.files.iter().filter(|f| formats.includes(f)) {
            let path = dir.join(&file.path);
            if is_file(&path).await {
                if check_existing(&path, file, FileOutcome::AlreadyPresent, progress).await? {
                    // A leftover part of an earlier attempt is of no use any more.
                    remove_file(&part_path(&path)).await?;
                    report.already_present.push(file.path.clone());
                    continue;
                }
                // A wrong file under a final name must not stay there for a plugin to load.
                remove_file(&path).await?;
            }
            todo.push(file);
        }
        let old = read_manifest(&dir).await;
        let mut manifest = Manifest::for_spec(&spec, formats, source.clone());
        if let Some(old) = &old {
            for (path, sha) in &old.files {
                let known = spec.files.iter().any(|f| f.path == *path);
                if known && !manifest.files.contains_key(path) && is_file(&dir.join(path)).await {
                    manifest.files.insert(path.clone(), sha.clone());
                    if old.converted.contains(path) {
                        manifest.converted.push(path.clone());
                    }
                }
            }
        }
        if todo.is_empty() && old.as_ref() == Some(&manifest) {
            return Ok(report);
        }
        // The manifest vouches for the folder; it goes first and comes back last.
        remove_manifest(&dir).await?;
        for file in todo {
            let url = match &file.url {
                Some(url) if from_registry => url.clone(),
                _ => format!("{source}/{}", file.path),
            };
            let (received, resumed) = self
                .download(&spec, file, &url, &dir.join(&file.path), progress)
                .await?;
            report.bytes_downloaded += received;
            if resumed {
                report.resumed.push(file.path.clone());
            }
            report.downloaded.push(file.path.clone());
        }
        write_manifest(&dir, &manifest).await?;
        Ok(report)
    }

    /// Download one file into `<final>.part`, verify it, rename it into place. Returns the
    /// bytes received and whether an earlier partial download was continued.
    async fn download(
        &self,
        spec: &ModelSpec,
        file: &ModelFile,
        url: &str,
        final_path: &Path,
        progress: &dyn Progress,
    ) -> Result<(u64, bool), ModelError> {
        if let Some(parent) = final_path.parent() {
            create_dir_all(parent).await?;
        }
        let part = part_path(final_path);
        let mut offset = match tokio::fs::metadata(&part).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(ModelError::io("read", &part, e)),
        };
        if offset > file.size {
            remove_file(&part).await?;
            offset = 0;
        }
        // The whole file is verified at the end, so the part already there is hashed first.
        let mut hasher = Sha256::new();
        if offset > 0 {
            progress.event(ProgressEvent::Checking {
                file: &file.path,
                size: offset,
            });
            hash_into(&part, &mut hasher, &file.path, progress).await?;
        }
        let mut received = 0u64;
        if offset < file.size {
            progress.event(ProgressEvent::Downloading {
                file: &file.path,
                url,
                size: file.size,
                offset,
            });
            let response = self.request(url, offset).await?;
            let response = match (offset, response) {
                (0, r) => r,
                (_, Ranged::Partial(r)) => Ranged::Partial(r),
                // The server ignores Range or refuses it: start over.
                (_, _) => {
                    offset = 0;
                    hasher = Sha256::new();
                    self.request(url, 0).await?
                }
            };
            let response = match response {
                Ranged::Full(r) | Ranged::Partial(r) => r,
                Ranged::Unsatisfiable => {
                    return Err(ModelError::Status {
                        url: url.to_string(),
                        status: 416,
                    })
                }
            };
            if let Some(len) = response.content_length() {
                if offset + len != file.size {
                    // Refuse early rather than download hundreds of MB of the wrong file.
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(ModelError::Corrupt {
                        model: spec.name.clone(),
                        file: file.path.clone(),
                        from: url.to_string(),
                        detail: format!(
                            "the server announces {} bytes, the registry says {}",
                            offset + len,
                            file.size
                        ),
                    });
                }
            }
            let mut out = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(offset > 0)
                .truncate(offset == 0)
                .open(&part)
                .await
                .map_err(|e| ModelError::io("create", &part, e))?;
            let mut done = offset;
            let mut response = response;
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        // Keep what arrived, durably, so the next pull resumes from it.
                        let _ = out.flush().await;
                        let _ = out.sync_all().await;
                        return Err(ModelError::Interrupted {
                            model: spec.name.clone(),
                            file: file.path.clone(),
                            done,
                            size: file.size,
                            part,
                            message: format!("from {url}: {}", describe_reqwest(&e)),
                        });
                    }
                };
                if done + chunk.len() as u64 > file.size {
                    drop(out);
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(ModelError::Corrupt {
                        model: spec.name.clone(),
                        file: file.path.clone(),
                        from: url.to_string(),
                        detail: format!(
                            "the server sent more than the {} bytes the registry says",
                            file.size
                        ),
                    });
                }
                out.write_all(&chunk)
                    .await
                    .map_err(|e| ModelError::io("write", &part, e))?;
                hasher.update(&chunk);
                done += chunk.len() as u64;
                received += chunk.len() as u64;
                progress.event(ProgressEvent::Advanced {
                    file: &file.path,
                    done,
                });
            }
            out.flush()
                .await
                .map_err(|e| ModelError::io("write", &part, e))?;
            out.sync_all()
                .await
                .map_err(|e| ModelError::io("write", &part, e))?;
            if done < file.size {
                return Err(ModelError::Interrupted {
                    model: spec.name.clone(),
                    file: file.path.clone(),
                    done,
                    size: file.size,
                    part,
                    message: format!("{url} ended the file early"),
                });
            }
        }
        let actual = crate::input::hex(&hasher.finalize());
        if actual != file.sha256 {
            remove_file(&part).await?;
            return Err(ModelError::Corrupt {
                model: spec.name.clone(),
                file: file.path.clone(),
                from: url.to_string(),
                detail: format!(
                    "SHA-256 is {actual}, the registry says {}{}",
                    file.sha256,
                    if offset > 0 {
                        " (the download continued an earlier partial file; the next pull starts from zero)"
                    } else {
                        ""
                    }
                ),
            });
        }
        rename(&part, final_path).await?;
        progress.event(ProgressEvent::Finished {
            file: &file.path,
            outcome: FileOutcome::Downloaded,
        });
        // `offset` is where this pull started writing: zero when it started over.
        Ok((received, offset > 0))
    }

    /// GET `url`, from byte `offset` on when it is not zero.
    async fn request(&self, url: &str, offset: u64) -> Result<Ranged, ModelError> {
        let client = self.client.as_ref().map_err(|e| ModelError::Http {
            url: url.to_string(),
            message: format!("cannot set up the HTTP client: {e}"),
        })?;
        let mut req = client.get(url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = req.send().await.map_err(|e| ModelError::Http {
            url: url.to_string(),
            message: describe_reqwest(&e),
        })?;
        let status = response.status().as_u16();
        match status {
            200 => Ok(Ranged::Full(response)),
            206 if offset > 0 => {
                // Only a range that starts where the part ends can be appended to it.
                let starts_right = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
                if starts_right {
                    Ok(Ranged::Partial(response))
                } else {
                    Ok(Ranged::Unsatisfiable)
                }
            }
            416 if offset > 0 => Ok(Ranged::Unsatisfiable),
            _ => Err(ModelError::Status {
                url: url.to_string(),
                status,
            }),
        }
    }
}

enum Ranged {
    /// 200: the whole file.
    Full(reqwest::Response),
    /// 206 from the requested offset.
    Partial(reqwest::Response),
    /// 416, or a 206 for another range.
    Unsatisfiable,
}
