//! What the cache holds and reports, independent of the database behind it.

use std::path::PathBuf;

use serde::Serialize;

/// What can go wrong with the cache database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened or created.
    #[error("cannot open the cache database {path}: {message}. Check the path ([cache] database in the config) and its permissions")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file was written by a newer imbed.
    #[error("the cache database {path} has schema version {found}, newer than this imbed knows ({supported}): upgrade imbed, or set [cache] database to another file")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build understands.
        supported: i64,
    },
    /// SQLite reported an error.
    #[error("cache database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// The PostgreSQL database cannot be used as it is; `message` says what to do.
    #[error("cannot use the cache database {location}: {message}")]
    Connect {
        /// The database URL, without its password.
        location: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// PostgreSQL reported an error.
    #[error("cache database {location}: {}", pg_message(source))]
    Postgres {
        /// The database URL, without its password.
        location: String,
        /// The error.
        source: tokio_postgres::Error,
    },
    /// A cache task run off the async threads ended without an answer (it panicked).
    #[error("a cache task failed: {0}; please report this")]
    Task(String),
}

/// PostgreSQL's own words (tokio-postgres's `Display` says only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => e.to_string(),
    }
}

/// An image's facts, as the cache records them.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// MIME type of the bytes.
    pub mime: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Length of the encoded file.
    pub bytes: u64,
}

impl ImageMeta {
    /// The facts of a validated image.
    pub fn of(image: &crate::input::ValidImage) -> Self {
        ImageMeta {
            sha256: image.sha256.clone(),
            mime: image.mime_type.to_string(),
            width: image.width,
            height: image.height,
            bytes: image.data.len() as u64,
        }
    }
}

/// A cached description.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedDescription {
    /// The text.
    pub text: String,
    /// The describer plugin's name.
    pub plugin: String,
    /// The vision model that wrote it.
    pub model: String,
    /// Structured fields, as JSON, when there were any.
    pub structured: Option<String>,
}

/// What is known about a file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Content hash.
    pub sha256: String,
    /// Size when last seen.
    pub size: u64,
    /// Modification time when last seen, in nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// One stored answer of the chain for an image.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Row id (stable; used as the key of approximate-search indexes).
    pub id: i64,
    /// Image content hash.
    pub image: String,
    /// Embedding space.
    pub space: String,
    /// Whether it came from a fallback step.
    pub degraded: bool,
}

/// The vectors of one space, contiguous in memory for fast scans.
#[derive(Debug, Clone)]
pub struct SpaceVectors {
    /// The space.
    pub space: String,
    /// Vector length.
    pub dims: usize,
    /// Entry row ids, one per vector.
    pub ids: Vec<i64>,
    /// Image content hashes, one per vector.
    pub images: Vec<String>,
    /// `ids.len() * dims` floats.
    pub data: Vec<f32>,
}

impl SpaceVectors {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The vector at `index`.
    pub fn vector(&self, index: usize) -> &[f32] {
        &self.data[index * self.dims..(index + 1) * self.dims]
    }
}

/// Counts for one embedding space.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SpaceStats {
    /// The space id.
    pub space: String,
    /// Vector length.
    pub dims: usize,
    /// Images with an entry in this space.
    pub entries: u64,
    /// Of those, how many came from a fallback step.
    pub degraded: u64,
}

/// `imbed cache stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The database file.
    pub path: PathBuf,
    /// Schema version.
    pub schema_version: i64,
    /// Bytes on disk: database, write-ahead log and approximate-search index files.
    pub bytes_on_disk: u64,
    /// Distinct images.
    pub images: u64,
    /// Known file paths.
    pub files: u64,
    /// Cached descriptions.
    pub descriptions: u64,
    /// Cached text vectors.
    pub text_vectors: u64,
    /// Cached direct image vectors.
    pub image_vectors: u64,
    /// Stored chain answers by space.
    pub spaces: Vec<SpaceStats>,
}

/// What `prune` should remove.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Forget paths whose file is gone (or changed), then content no path refers to.
    pub missing_files: bool,
    /// Drop everything stored in these spaces.
    pub spaces: Vec<String>,
    /// Drop cached text vectors (queries); they are cheap to recompute.
    pub text_vectors: bool,
    /// Rewrite the file to give freed space back to the file system.
    pub vacuum: bool,
}

impl PruneOptions {
    /// Forget vanished files and the content only they referred to.
    pub fn missing_files(mut self) -> Self {
        self.missing_files = true;
        self
    }

    /// Drop a space.
    pub fn space(mut self, space: impl Into<String>) -> Self {
        self.spaces.push(space.into());
        self
    }

    /// Drop cached text vectors.
    pub fn text_vectors(mut self) -> Self {
        self.text_vectors = true;
        self
    }

    /// Compact the file afterwards.
    pub fn vacuum(mut self) -> Self {
        self.vacuum = true;
        self
    }
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// File paths forgotten.
    pub files: u64,
    /// Images (and their descriptions, vectors and entries) forgotten.
    pub images: u64,
    /// Entries removed.
    pub entries: u64,
    /// Text vectors removed.
    pub text_vectors: u64,
    /// Bytes on disk before and after.
    pub bytes_before: u64,
    /// Bytes on disk after.
    pub bytes_after: u64,
}
