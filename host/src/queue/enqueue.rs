//! Folders, files and URLs to jobs: read each image once to learn its content hash, skip what
//! the cache already has an answer for, and record one job per content.

use std::path::PathBuf;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::sql::JobQueue;
use super::QueueError;
use crate::chain::Imbed;
use crate::index::{self, Targets};
use crate::input::ImageSource;
use crate::store::{self, ImageMeta};

/// Jobs are recorded this many at a time (one statement each).
const BATCH: usize = 500;

/// What to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueSource {
    /// A folder (every image under it) or an image file. Workers read it by the same absolute
    /// path: put it on a mount every worker shares.
    Path(PathBuf),
    /// An http(s) URL, which workers download.
    Url(String),
}

/// What an enqueue run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EnqueueReport {
    /// Images looked at.
    pub found: u64,
    /// New jobs (or, with upgrade, degraded ones queued again).
    pub queued: u64,
    /// Contents that already had a job (queued, running, done or failed).
    pub already_queued: u64,
    /// Contents the cache already has an answer for, skipped.
    pub done: u64,
    /// Images that could not be read, with why.
    pub unreadable: Vec<(String, String)>,
}

/// Enqueue `sources`, reading `jobs` images at once. With `upgrade`, images whose only answers
/// came from a fallback step are queued (again). Folders are recorded as roots, as `imbed
/// index` records them, so `imbed serve`'s search page may serve their files.
pub async fn enqueue(
    imbed: &Imbed,
    queue: &JobQueue,
    sources: Vec<EnqueueSource>,
    upgrade: bool,
    jobs: usize,
) -> Result<EnqueueReport, QueueError> {
    let mut report = EnqueueReport::default();
    let mut paths = Vec::new();
    let mut items: Vec<ImageSource> = Vec::new();
    for source in sources {
        match source {
            EnqueueSource::Path(p) => paths.push(p),
            EnqueueSource::Url(u) => items.push(ImageSource::Url(u)),
        }
    }
    if !paths.is_empty() {
        let (cache, roots) = (queue.cache().clone(), paths.clone());
        let (found, problems) = tokio::task::spawn_blocking(move || {
            index::record_roots(&cache, &roots)?;
            Ok::<_, store::StoreError>(index::find_images(&roots))
        })
        .await
        .map_err(|e| QueueError::Task(e.to_string()))??;
        for p in problems {
            report.unreadable.push((p, "cannot be read".into()));
        }
        items.extend(found.into_iter().map(ImageSource::Path));
    }
    let targets = std::sync::Arc::new(Targets::of(imbed).await);
    let mut looked = stream::iter(items)
        .map(|source| {
            let (imbed, queue, targets) = (imbed.clone(), queue.clone(), targets.clone());
            async move {
                let label = source.label();
                (label, look(&imbed, &queue, source, upgrade, &targets).await)
            }
        })
        .buffer_unordered(jobs.max(1));
    let mut batch = Vec::new();
    while let Some((label, looked)) = looked.next().await {
        report.found += 1;
        match looked {
            Ok(Some(job)) => batch.push(job),
            Ok(None) => report.done += 1,
            Err(message) => report.unreadable.push((label, message)),
        }
        if batch.len() >= BATCH {
            record(queue, std::mem::take(&mut batch), upgrade, &mut report).await?;
        }
    }
    record(queue, batch, upgrade, &mut report).await?;
    Ok(report)
}

async fn record(
    queue: &JobQueue,
    batch: Vec<(String, String, u64)>,
    upgrade: bool,
    report: &mut EnqueueReport,
) -> Result<(), QueueError> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len() as u64;
    let queued = queue.run(move |q| q.enqueue(&batch, upgrade)).await?;
    report.queued += queued;
    report.already_queued += n - queued;
    Ok(())
}

/// The job for one image, or `None` when the cache already has its answer.
async fn look(
    imbed: &Imbed,
    queue: &JobQueue,
    source: ImageSource,
    upgrade: bool,
    targets: &Targets,
) -> Result<Option<(String, String, u64)>, String> {
    let cache = queue.cache();
    if let ImageSource::Path(path) = &source {
        // A file unchanged since it was last seen, whose content is done, is not read again.
        if let Some((size, mtime)) = store::file_stamp(path) {
            let owned = path.clone();
            let known = on_cache(cache, move |s| {
                let Some(rec) = s.file(&owned)? else {
                    return Ok(None);
                };
                if rec.size != size || rec.mtime_ns != mtime {
                    return Ok(None);
                }
                Ok(Some(s.entries_of(&rec.sha256)?))
            })
            .await?;
            if known.is_some_and(|e| index::done(&e, upgrade, targets)) {
                return Ok(None);
            }
        }
    }
    let image = imbed.load_image(&source).await.map_err(|e| e.to_string())?;
    let meta = ImageMeta::of(&image);
    let locator = match &source {
        ImageSource::Path(path) => {
            // The path's content is a fact now, whatever becomes of the job: record it so
            // search finds this path once the content is done.
            if let Some((size, mtime)) = store::file_stamp(path) {
                let (owned, meta) = (path.clone(), meta.clone());
                on_cache(cache, move |s| s.put_file(&owned, &meta, size, mtime)).await?;
            }
            path.display().to_string()
        }
        other => other.label(),
    };
    let sha = meta.sha256.clone();
    let entries = on_cache(cache, move |s| s.entries_of(&sha)).await?;
    if index::done(&entries, upgrade, targets) {
        return Ok(None);
    }
    Ok(Some((locator, meta.sha256, meta.bytes)))
}

async fn on_cache<T: Send + 'static>(
    cache: &store::Cache,
    op: impl FnOnce(&store::Cache) -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, String> {
    cache.run(op).await.map_err(|e| e.to_string())
}
