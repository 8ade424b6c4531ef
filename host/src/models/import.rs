//! `Models::import`: take a model's files from a folder already on this machine.

use super::error::ModelError;
use super::files::{
    copy_hashing, create_dir_all, hash_into, is_file, lock, part_path, remove_file,
    remove_manifest, rename, same_file, write_manifest,
};
use super::local::Models;
use super::registry::{Format, Formats, ModelFile};
use super::report::{FileOutcome, ImportReport, Manifest, Progress, ProgressEvent};
use sha2::Digest;
use sha2::Sha256;
use std::path::Path;

impl Models {
    /// Take a model's files from a folder already on this machine. The files every format needs
    /// and each format's files that are in `folder` (all of a format, or none of it; at least
    /// one format) must be there under their paths with the registry's size and SHA-256, or
    /// nothing is changed — except ONNX graphs, which may be converted from the same weights
    /// (`scripts/onnx`): one that is not the registry's file is taken as it is and recorded as
    /// converted, with its own SHA-256, so the host can still check it before loading it.
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
        let mut formats = Formats {
            safetensors: false,
            onnx: false,
        };
        for format in spec.formats() {
            let mut here = Vec::new();
            let mut absent = Vec::new();
            for f in spec.files_of(format) {
                if is_file(&folder.join(&f.path)).await {
                    here.push(f.path.as_str());
                } else {
                    absent.push(f.path.as_str());
                }
            }
            match (here.is_empty(), absent.is_empty()) {
                (true, _) => {}
                (false, true) => match format {
                    Format::Safetensors => formats.safetensors = true,
                    Format::Onnx => formats.onnx = true,
                },
                (false, false) => problems.push(format!(
                    "{} is there but {} is missing: add the rest of the {} files or remove these",
                    here.join(", "),
                    absent.join(", "),
                    format.name()
                )),
            }
        }
        if !spec.formats().is_empty()
            && !formats.safetensors
            && !formats.onnx
            && problems.is_empty()
        {
            let sets: Vec<String> = spec
                .formats()
                .into_iter()
                .map(|format| {
                    let files: Vec<&str> = spec.files_of(format).map(|f| f.path.as_str()).collect();
                    format!("{} ({})", format.name(), files.join(", "))
                })
                .collect();
            problems.push(format!(
                "it has the files of no format: {}",
                sets.join(" or ")
            ));
        }
        // The files to take, each with what it must hash to.
        let mut plan: Vec<ModelFile> = Vec::new();
        let mut converted = Vec::new();
        for file in spec.files.iter().filter(|f| formats.includes(f)) {
            let src = folder.join(&file.path);
            let graph = file.format == Some(Format::Onnx);
            match tokio::fs::metadata(&src).await {
                Ok(m) if m.is_file() && (m.len() == file.size || graph) => {
                    progress.event(ProgressEvent::Checking {
                        file: &file.path,
                        size: m.len(),
                    });
                    let mut hasher = Sha256::new();
                    let len = hash_into(&src, &mut hasher, &file.path, progress).await?;
                    let sha = crate::input::hex(&hasher.finalize());
                    let matches = len == file.size && sha == file.sha256;
                    progress.event(ProgressEvent::Finished {
                        file: &file.path,
                        outcome: if matches || graph {
                            FileOutcome::Verified
                        } else {
                            FileOutcome::Mismatch
                        },
                    });
                    if matches {
                        plan.push(file.clone());
                    } else if graph {
                        converted.push(file.path.clone());
                        plan.push(ModelFile {
                            size: len,
                            sha256: sha,
                            ..file.clone()
                        });
                    } else {
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
        for file in &plan {
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
                        "SHA-256 is {sha}, {} {} (did the file change during the import?)",
                        if converted.contains(&file.path) {
                            "it was"
                        } else {
                            "the registry says"
                        },
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
        let mut manifest =
            Manifest::for_spec(&spec, formats, format!("import:{}", folder.display()));
        for file in &plan {
            manifest
                .files
                .insert(file.path.clone(), file.sha256.clone());
        }
        manifest.converted = converted;
        write_manifest(&dir, &manifest).await?;
        Ok(report)
    }
}
