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
    /// The PostgreSQL server cannot be reached now (down, restarting, the network cut, no
    /// free connection): worth trying again later. `message` says what was tried.
    #[error("the cache database {location} cannot be reached: {message}")]
    Unavailable {
        /// The database URL, without its password.
        location: String,
        /// What went wrong and what to check.
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
    /// A vector was to be written into a space by a plugin that holds no claim on it (see
    /// [`Cache::claim_space`](super::Cache::claim_space)): refused, nothing written.
    #[error("plugin {key:?} (component {component}) holds no claim on space {space:?}: nothing was written")]
    NotClaimed {
        /// The space.
        space: String,
        /// The writer's config key.
        key: String,
        /// The writer's component SHA-256.
        component: String,
    },
    /// `prune` was asked to drop what a component wrote, by a prefix that names no component
    /// or more than one.
    #[error("{0}")]
    PruneTarget(String),
    /// `cache migrate` found a space pinned to one plugin in the source and to another in the
    /// target: copying would mix two plugins' vectors under one space id.
    #[error("space {space:?} is owned by plugin {source_owner:?} in the cache being copied but by {target_owner:?} in {target}: the copy stopped there, before any vector was copied; drop the space from one of them first (`imbed cache prune --space`)")]
    OwnerConflict {
        /// The space.
        space: String,
        /// Its owner in the source.
        source_owner: String,
        /// Its owner in the target.
        target_owner: String,
        /// The target database, without its password.
        target: String,
    },
}

/// Who writes a vector into a space: a plugin as the config and its component file identify
/// it. The config key is what ownership is decided by (the plugin cannot choose it); the name
/// is what the plugin reports (kept for messages); the component SHA-256 traces which build of
/// the plugin wrote what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Writer {
    /// The config key (`[plugins.<key>]`).
    pub key: String,
    /// The name the plugin reports for itself.
    pub name: String,
    /// SHA-256 of the component file, hex.
    pub component: String,
}

/// A plugin asking to write into a space: itself, and the config keys whose spaces it shares
/// (`shares_space_with`, taken both ways; see `Config::space_partners`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceClaim {
    /// The plugin.
    pub writer: Writer,
    /// Config keys that may own a space this plugin writes into.
    pub shares_with: Vec<String>,
}

impl SpaceClaim {
    /// The rule every backend applies: a space owned by `owner_key` takes vectors from its
    /// owner and from the keys the config declares as sharing with it, from nobody else.
    pub fn allows(&self, owner_key: &str) -> bool {
        owner_key == self.writer.key || self.shares_with.iter().any(|k| k == owner_key)
    }
}

/// A writer's `last_seen` is refreshed at most this often: a claim is made before every
/// write, and rewriting the row each time would turn every cache read into a write.
pub(crate) const LAST_SEEN_EVERY_SECS: i64 = 60;

/// The writer a stored vector row names: the claimant's config key and component, or, for a
/// row copied by `cache migrate`, whatever the source row said (nothing for rows written
/// before ownership was recorded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RowWriter {
    /// The config key.
    pub key: Option<String>,
    /// The component SHA-256.
    pub component: Option<String>,
}

impl From<&Writer> for RowWriter {
    fn from(w: &Writer) -> Self {
        RowWriter {
            key: Some(w.key.clone()),
            component: Some(w.component.clone()),
        }
    }
}

/// The plugin a space is pinned to: the first one that wrote into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpaceOwner {
    /// Its config key.
    pub key: String,
    /// The name it reported.
    pub name: String,
    /// When it first wrote, in seconds since the epoch.
    pub since: i64,
}

/// The answer to a [`SpaceClaim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The claimant may write: it owns the space (perhaps from this very claim) or shares it.
    Granted {
        /// The space's owner.
        owner: SpaceOwner,
    },
    /// Another plugin owns the space and the claimant is not declared as sharing it.
    Refused {
        /// The space's owner.
        owner: SpaceOwner,
    },
}

/// One component of one plugin that wrote into a space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpaceWriterStats {
    /// The plugin's config key.
    pub key: String,
    /// The name it reported.
    pub name: String,
    /// SHA-256 of its component file; empty for writes made before ownership was recorded
    /// (schema 3 and older), whose component is unknown.
    pub component: String,
    /// First write, in seconds since the epoch.
    pub first_seen: i64,
    /// Last claim to write (recorded at most once a minute), in seconds since the epoch.
    pub last_seen: i64,
}

impl StoreError {
    /// Whether the database could not be reached or went away (a restart, a failover, a cut
    /// connection) rather than refusing what was asked: the same request may succeed later,
    /// so a server answers 503, not 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Postgres { source, .. } => {
                // SQLSTATE classes 08 (connection exception) and 57P (the server shutting
                // down, crashed, or not accepting connections yet); or the socket failed.
                let class = source.code().map(|c| c.code()).unwrap_or("");
                source.is_closed()
                    || class.starts_with("08")
                    || class.starts_with("57P")
                    || std::error::Error::source(source).is_some_and(|s| s.is::<std::io::Error>())
            }
            _ => false,
        }
    }
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
    /// The plugin the space is pinned to; `None` while nobody has written into it since
    /// ownership was recorded (a cache from before schema 4 whose entries came from several
    /// plugins is left unpinned until the next write).
    pub owner: Option<SpaceOwner>,
    /// Every plugin component that wrote into the space, oldest first.
    pub writers: Vec<SpaceWriterStats>,
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
    /// Spaces with stored chain answers or an owner, largest first (a space holding only
    /// query vectors has 0 entries).
    pub spaces: Vec<SpaceStats>,
}

/// What `prune` should remove.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Forget paths whose file is gone (or changed), then content no path refers to.
    pub missing_files: bool,
    /// Drop everything stored in these spaces (with `writer`: only what that writer wrote).
    pub spaces: Vec<String>,
    /// Drop only what one plugin or component wrote, in `spaces` (in every space when
    /// `spaces` is empty).
    pub writer: Option<WriterFilter>,
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

    /// Drop only what `writer` wrote.
    pub fn writer(mut self, writer: WriterFilter) -> Self {
        self.writer = Some(writer);
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

/// Which writer's vectors `prune` drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterFilter {
    /// Everything a config key wrote, whatever its component.
    Plugin(String),
    /// Everything one component wrote, named by a prefix of its SHA-256 (hex) that matches
    /// exactly one component among the writers of the spaces pruned.
    Component(String),
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
    /// Direct image vectors removed (counted when a space or a writer is pruned).
    pub image_vectors: u64,
    /// Spaces whose owner pin was dropped with what it wrote: the next plugin to write into
    /// one of them owns it.
    pub unpinned: Vec<String>,
    /// Bytes on disk before and after.
    pub bytes_before: u64,
    /// Bytes on disk after.
    pub bytes_after: u64,
}
