//! `Models::import`: take a model's files from a folder already on this machine.

use super::*;

impl Models {
    /// Take a model's files from a folder already on this machine. Every registry file must be
    /// in `folder` under its path with the registry's size and SHA-256, or nothing is changed.
    /// Files are hard-linked when the folder is on the same file system, copied otherwise, each
    /// through a `.part` name and verified again in place; the manifest's source is
    /// `import:<folder>`.
    pub async fn import(
        &self,
        name: &str,
        folder: &Path,
        progress: &dyn Progress,
    ) -> Result<ImportReport, ModelError> {
        let spec = self.registry.get(name)?.clone();
        let folder = tokio::fs::canonicalize(folder)
            .await
            .map_err(|e| ModelError::io("open the folder", folder, e))?;
        if !tokio::fs::metadata(&folder)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Err(ModelError::ImportRejected {
                model: name.to_string(),
                folder,
                problems: vec!["it is not a folder".into()],
            });
        }
        // First every file, so that a folder with one bad file changes nothing.
        let mut problems = Vec::new();
        for file in &spec.files {
            let src = folder.join(&file.path);
            match tokio::fs::metadata(&src).await {
                Ok(m) if m.is_file() && m.len() == file.size => {
                    if !check_existing(&src, file, FileOutcome::Verified, progress).await? {
                        problems.push(format!(
                            "{} does not have the registry's SHA-256 {}",
                            file.path, file.sha256
                        ));
                    }
                }
                Ok(m) if m.is_file() => problems.push(format!(
                    "{} is {} bytes, the registry says {}",
                    file.path,
                    m.len(),
                    file.size
                )),
                _ => problems.push(format!("{} is missing", file.path)),
            }
        }
        if !problems.is_empty() {
            return Err(ModelError::ImportRejected {
                model: name.to_string(),
                folder,
                problems,
            });
        }

        let dir = self.model_dir(name);
        create_dir_all(&dir).await?;
        let _lock = lock(&dir, name).await?;
        remove_manifest(&dir).await?;
        let mut report = ImportReport {
            name: name.to_string(),
            dir: dir.clone(),
            from: folder.clone(),
            files: Vec::new(),
        };
        for file in &spec.files {
            let src = folder.join(&file.path);
            let dst = dir.join(&file.path);
            if same_file(&src, &dst).await {
                report
                    .files
                    .push((file.path.clone(), FileOutcome::AlreadyPresent));
                continue;
            }
            if let Some(parent) = dst.parent() {
                create_dir_all(parent).await?;
            }
            let part = part_path(&dst);
            let _ = tokio::fs::remove_file(&part).await;
            progress.event(ProgressEvent::Importing {
                file: &file.path,
                size: file.size,
            });
            // A link shares the source's bytes: hash them again where they now are, in case
            // the source changed since the check above.
            let (outcome, sha) = if tokio::fs::hard_link(&src, &part).await.is_ok() {
                let mut hasher = Sha256::new();
                hash_into(&part, &mut hasher, &file.path, progress).await?;
                (FileOutcome::Linked, crate::input::hex(&hasher.finalize()))
            } else {
                (
                    FileOutcome::Copied,
                    copy_hashing(&src, &part, &file.path, progress).await?,
                )
            };
            if sha != file.sha256 {
                remove_file(&part).await?;
                return Err(ModelError::Corrupt {
                    model: name.to_string(),
                    file: file.path.clone(),
                    from: src.display().to_string(),
                    detail: format!(
                        "SHA-256 is {sha}, the registry says {} (did the file change during the import?)",
                        file.sha256
                    ),
                });
            }
            rename(&part, &dst).await?;
            progress.event(ProgressEvent::Finished {
                file: &file.path,
                outcome,
            });
            report.files.push((file.path.clone(), outcome));
        }
        let manifest = Manifest::for_spec(&spec, format!("import:{}", folder.display()));
        write_manifest(&dir, &manifest).await?;
        Ok(report)
    }
}
