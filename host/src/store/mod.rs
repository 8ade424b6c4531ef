//! The persistent cache: descriptions, vectors and indexed files, keyed by content. The rest of
//! the host uses [`Cache`] and the records of `records`; the backends sit behind it (SQLite in
//! `sqlite`, the embedded default). Uses only `types` and `input` (an image's facts).
//!
//! Why an enum over backends rather than `Arc<dyn Trait>`: the backends are a closed set known
//! when imbed is built (SQLite always, PostgreSQL behind a cargo feature), a match costs no
//! allocation or vtable, `Cache` stays a concrete `Clone` type in the public API, and a backend
//! keeps what only it has (SQLite's file path, its schema test helper) without widening a trait
//! every backend must implement. A second backend adds a variant to `Backend` and a module
//! here; nothing outside `store/` changes.
//!
//! Every method may block (SQLite does file I/O under a lock). Async code reaches the cache
//! through [`Cache::run`], which runs the work on tokio's blocking pool: an async backend
//! (tokio-postgres behind a connection pool) drives its futures there with
//! `tokio::runtime::Handle::block_on`, which the blocking pool allows, so the chain, `index`,
//! `search`, the server and the CLI call it the same way whichever backend is behind it.

mod keys;
mod records;
mod sqlite;

use std::path::{Path, PathBuf};

pub use keys::{describer_identity, describer_identity_of, file_stamp, text_key};
pub use records::{
    CachedDescription, Entry, FileRecord, ImageMeta, Ownership, PruneOptions, PruneReport,
    SpaceClaim, SpaceOwner, SpaceStats, SpaceVectors, SpaceWriterStats, Stats, StoreError, Writer,
    WriterFilter,
};
use sqlite::SqliteStore;
pub use sqlite::SCHEMA_VERSION;

type Result<T> = std::result::Result<T, StoreError>;

/// The cache database. Cheap to clone; clones share one connection (or pool).
#[derive(Clone, Debug)]
pub struct Cache {
    backend: Backend,
}

/// The database behind a [`Cache`].
#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
}

/// Methods every backend answers the same way; each forwards to the backend in use.
macro_rules! forward {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                match &self.backend {
                    Backend::Sqlite(s) => s.$name($($arg),*),
                }
            }
        )*
    };
}

impl Cache {
    /// Open (creating if needed) the SQLite database at `path` and bring its schema up to date.
    pub fn open(path: impl Into<PathBuf>) -> Result<Cache> {
        Ok(Cache {
            backend: Backend::Sqlite(SqliteStore::open(path)?),
        })
    }

    /// Create an SQLite database at an older schema version, as an older imbed left it. For
    /// testing migrations; not for use otherwise.
    #[doc(hidden)]
    pub fn create_with_schema(path: impl Into<PathBuf>, version: i64) -> Result<Cache> {
        Ok(Cache {
            backend: Backend::Sqlite(SqliteStore::create_with_schema(path, version)?),
        })
    }

    /// Run `op` on the cache from async code, off the async threads (see the module's opening
    /// comment for why every backend is reached this way).
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Cache) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cache = self.clone();
        tokio::task::spawn_blocking(move || op(&cache))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    forward! {
        /// The database file.
        fn path(&self) -> &Path;
        /// Where approximate-search index files for this database live.
        fn ann_dir(&self) -> PathBuf;
        /// Where the search page keeps thumbnails for this database (named by content hash).
        fn thumb_dir(&self) -> PathBuf;
        /// Record a folder (or file) given to `imbed index`, as a canonical path.
        fn put_root(&self, root: &Path) -> Result<()>;
        /// The folders (and files) `imbed index` was given, canonical, in order.
        fn roots(&self) -> Result<Vec<PathBuf>>;
        /// The schema version of the open database.
        fn schema_version(&self) -> Result<i64>;
        /// The database's own consistency check of everything it holds: empty when sound.
        fn integrity_problems(&self) -> Result<Vec<String>>;
        /// A cached description of `image` by `describer` (see [`describer_identity`]) with
        /// `prompt` (empty for the plugin's own prompt).
        fn description(&self, image: &str, describer: &str, prompt: &str)
            -> Result<Option<CachedDescription>>;
        /// Remember a description.
        fn put_description(&self, image: &str, describer: &str, prompt: &str,
            d: &CachedDescription) -> Result<()>;
        /// A cached vector of a text (by its SHA-256, see [`text_key`]) in `space`.
        fn text_vector(&self, text_sha: &str, space: &str) -> Result<Option<Vec<f32>>>;
        /// Remember a text's vector, written by `writer`, which must hold a claim on `space`
        /// ([`Cache::claim_space`]); otherwise nothing is written ([`StoreError::NotClaimed`]).
        fn put_text_vector(&self, text_sha: &str, space: &str, model: &str, vector: &[f32],
            writer: &Writer) -> Result<()>;
        /// A cached direct image vector in `space`.
        fn image_vector(&self, image: &str, space: &str) -> Result<Option<Vec<f32>>>;
        /// Remember a direct image vector, written by `writer`, which must hold a claim on
        /// `space`.
        fn put_image_vector(&self, image: &str, space: &str, model: &str, vector: &[f32],
            writer: &Writer) -> Result<()>;
        /// Record the chain's answer for an image (and the image itself), all or nothing;
        /// `writer` produced it and must hold a claim on its space.
        fn put_entry(&self, image: &ImageMeta, embedding: &crate::types::Embedding,
            writer: &Writer) -> Result<()>;
        /// Ask to write into `space` as `claim.writer`. The first plugin to write into a space
        /// owns it (this pins it); later claims are granted to the owner and to the keys the
        /// config declares as sharing with it ([`SpaceClaim::allows`]), refused to everyone
        /// else. A granted claim also records the claimant's component among the space's
        /// writers. Atomic: of two processes racing to pin a space, exactly one wins.
        fn claim_space(&self, space: &str, claim: &SpaceClaim) -> Result<Ownership>;
        /// The plugin `space` is pinned to, if any (read only; pins nothing).
        fn space_owner(&self, space: &str) -> Result<Option<SpaceOwner>>;
        /// Record that `path` (with this size and mtime) holds `image`.
        fn put_file(&self, path: &Path, image: &ImageMeta, size: u64, mtime_ns: i64)
            -> Result<()>;
        /// What is known about `path`.
        fn file(&self, path: &Path) -> Result<Option<FileRecord>>;
        /// Paths known to hold `image`.
        fn paths_of(&self, image: &str) -> Result<Vec<PathBuf>>;
        /// The entries of an image, in every space.
        fn entries_of(&self, image: &str) -> Result<Vec<Entry>>;
        /// The stored answer for `image` in `space`, with its provenance.
        fn entry_embedding(&self, image: &str, space: &str)
            -> Result<Option<crate::types::Embedding>>;
        /// Every vector stored in `space`, ready to scan.
        fn load_space(&self, space: &str) -> Result<SpaceVectors>;
        /// Entries in `space` with an id above `after`, for bringing an index up to date.
        fn space_since(&self, space: &str, after: i64) -> Result<SpaceVectors>;
        /// Spaces with stored entries, largest first, with their owners and writers.
        fn spaces(&self) -> Result<Vec<SpaceStats>>;
        /// Known files whose image has only degraded entries, optionally only under `under`.
        fn degraded_files(&self, under: Option<&Path>) -> Result<Vec<PathBuf>>;
        /// The approximate-search index recorded for `space`: file name, entries, highest id.
        fn ann_record(&self, space: &str) -> Result<Option<(String, u64, i64)>>;
        /// Record an approximate-search index file for `space`.
        fn put_ann_record(&self, space: &str, file: &str, entries: u64, max_id: i64)
            -> Result<()>;
        /// Whether anything was removed or replaced in `space` since an index covering
        /// `entries` rows up to `max_id` was built (then it must be rebuilt, not extended).
        fn space_changed_below(&self, space: &str, entries: u64, max_id: i64) -> Result<bool>;
        /// Sizes and counts.
        fn stats(&self) -> Result<Stats>;
        /// Remove what `options` asks for.
        fn prune(&self, options: &PruneOptions) -> Result<PruneReport>;
    }
}
