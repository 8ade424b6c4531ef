//! The persistent cache: descriptions, vectors and indexed files, keyed by content. The rest of
//! the host uses [`Cache`] and the records of `records`; the backends sit behind it (SQLite in
//! `sqlite`, the embedded default; PostgreSQL with pgvector in `postgres`, shared by many
//! machines). Uses only `types` and `input` (an image's facts).
//!
//! Why an enum over backends rather than `Arc<dyn Trait>`: the backends are a closed set known
//! when imbed is built (SQLite and PostgreSQL), a match costs no
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
mod postgres;
mod records;
mod resident;
mod sqlite;

use std::path::{Path, PathBuf};

pub use keys::{describer_identity, describer_identity_of, file_stamp, text_key};
pub(crate) use postgres::PostgresStore;
pub use postgres::{is_postgres_url, PgOptions, PG_SCHEMA_VERSION};
pub(crate) use records::RowWriter;
pub use records::{
    CachedDescription, Entry, FileRecord, ImageMeta, Ownership, PruneOptions, PruneReport,
    SpaceClaim, SpaceOwner, SpaceStats, SpaceVectors, SpaceWriterStats, Stats, StoreError, Writer,
    WriterFilter,
};
pub use resident::ResidentSpace;
pub use sqlite::SCHEMA_VERSION;
use sqlite::{Export, SqliteStore};

/// What [`Cache::copy_to`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// Entries (chain answers).
    pub entries: u64,
    /// Known files.
    pub files: u64,
    /// Descriptions.
    pub descriptions: u64,
    /// Text and direct image vectors.
    pub vectors: u64,
}

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
    Postgres(PostgresStore),
}

/// Where the cache lives: `[cache] database`, or `IMBED_DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by `postgres://` URL, and how to use it.
    Postgres {
        /// The URL (it may hold a password: never print it, see [`Cache::location`]).
        url: String,
        /// Search settings and the local folder.
        options: PgOptions,
    },
}

/// Methods every backend answers the same way; each forwards to the backend in use.
macro_rules! forward {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                match &self.backend {
                    Backend::Sqlite(s) => s.$name($($arg),*),
                    Backend::Postgres(s) => s.$name($($arg),*),
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

    /// Open the cache at `location`, bringing its schema up to date.
    pub fn open_location(location: &Location) -> Result<Cache> {
        match location {
            Location::Sqlite(path) => Cache::open(path),
            Location::Postgres { url, options } => Cache::open_postgres(url, options.clone()),
        }
    }

    /// Connect to the PostgreSQL database at `url` (it needs the pgvector extension) and bring
    /// its schema up to date.
    pub fn open_postgres(url: &str, options: PgOptions) -> Result<Cache> {
        Ok(Cache {
            backend: Backend::Postgres(PostgresStore::open(url, options)?),
        })
    }

    /// The database, for messages: the SQLite file or the URL without its password.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(s) => s.location().to_string(),
        }
    }

    /// The PostgreSQL store behind this cache, for what only PostgreSQL holds (the work queue,
    /// `queue/`); `None` for SQLite.
    pub(crate) fn postgres(&self) -> Option<&PostgresStore> {
        match &self.backend {
            Backend::Postgres(s) => Some(s),
            Backend::Sqlite(_) => None,
        }
    }

    /// Whether search runs inside the database ([`Cache::nearest`]) rather than over
    /// [`Cache::load_space`] in this process.
    pub fn searches_in_database(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// `space`'s vectors for a search in this process, with the index search keeps beside
    /// them. SQLite keeps them in memory while the space is unchanged (`resident`); PostgreSQL,
    /// which searches in the database, loads them each time.
    pub fn resident_space(&self, space: &str) -> Result<std::sync::Arc<ResidentSpace>> {
        match &self.backend {
            Backend::Sqlite(s) => s.resident_space(space),
            Backend::Postgres(s) => Ok(std::sync::Arc::new(ResidentSpace::new(
                s.load_space(space)?,
            ))),
        }
    }

    /// Entries in `space` and their length (0 when empty).
    pub fn space_size(&self, space: &str) -> Result<(usize, usize)> {
        match &self.backend {
            Backend::Sqlite(s) => {
                let set = s.load_space(space)?;
                Ok((set.len(), set.dims))
            }
            Backend::Postgres(s) => s.space_size(space),
        }
    }

    /// The `k` images of `space` closest to `query`, best first with their cosine, computed in
    /// the database. `None` when the backend leaves search to this process (SQLite: see
    /// `search`, over [`Cache::load_space`]).
    pub fn nearest(
        &self,
        space: &str,
        query: &[f32],
        k: usize,
        approximate: bool,
    ) -> Result<Option<Vec<(String, f32)>>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(s) => s.nearest(space, query, k, approximate).map(Some),
        }
    }

    /// Build `space`'s search index in the database when it has none (PostgreSQL). Nothing to
    /// do here for SQLite, whose index files are search's (`search::prepare` builds both after
    /// indexing).
    pub fn prepare_search(&self, space: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(s) => s.ensure_search_index(space).map(drop),
        }
    }

    /// The plan of an approximate search of `space` (PostgreSQL's `EXPLAIN`); `None` for SQLite.
    #[doc(hidden)]
    pub fn explain_search(&self, space: &str, dims: usize) -> Result<Option<String>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(s) => s.explain_nearest(space, dims).map(Some),
        }
    }

    /// Record many answers by one writer at once (one transaction for PostgreSQL); `writer`
    /// must hold a claim on each of their spaces.
    pub fn put_entries(
        &self,
        items: &[(ImageMeta, crate::types::Embedding)],
        writer: &Writer,
    ) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(s) => items
                .iter()
                .try_for_each(|(i, e)| s.put_entry(i, e, writer)),
            Backend::Postgres(s) => s.put_entries(items, writer),
        }
    }

    /// Copy everything this SQLite cache holds into the PostgreSQL cache `to` (`imbed cache
    /// migrate`): the work done is kept, nothing is recomputed, and each space keeps its owner
    /// and writers, and each vector the writer it names. Copying again skips what is there;
    /// a space owned by another plugin in `to` stops the copy before any vector is copied.
    /// Search indexes of `to` are built at the end.
    pub fn copy_to(&self, to: &Cache) -> Result<CopyReport> {
        let Backend::Sqlite(from) = &self.backend else {
            return Err(StoreError::Connect {
                location: self.location(),
                message: "only an SQLite cache can be copied: set [cache] database to the SQLite file to copy from".into(),
            });
        };
        let Backend::Postgres(target) = &to.backend else {
            return Err(StoreError::Connect {
                location: to.location(),
                message: "a cache is copied into PostgreSQL only: give a postgres:// URL".into(),
            });
        };
        let mut report = CopyReport::default();
        from.export(2_000, &mut |piece| {
            match piece {
                Export::Space {
                    space,
                    owner,
                    writers,
                } => target.import_space(&space, owner.as_ref(), &writers)?,
                Export::Entries(items) => {
                    report.entries += items.len() as u64;
                    target.import_entries(&items)?;
                }
                Export::File {
                    path,
                    image,
                    size,
                    mtime_ns,
                } => {
                    report.files += 1;
                    to.put_file(&path, &image, size, mtime_ns)?;
                }
                Export::Description {
                    image,
                    describer,
                    prompt,
                    description,
                } => {
                    report.descriptions += 1;
                    to.put_description(&image, &describer, &prompt, &description)?;
                }
                Export::TextVector {
                    key,
                    space,
                    model,
                    vector,
                    writer,
                } => {
                    report.vectors += 1;
                    let row = postgres::VectorRow {
                        key: &key,
                        space: &space,
                        model: &model,
                        vector: &vector,
                    };
                    target.import_vector(postgres::VectorTable::Text, row, &writer)?;
                }
                Export::ImageVector {
                    key,
                    space,
                    model,
                    vector,
                    writer,
                } => {
                    report.vectors += 1;
                    let row = postgres::VectorRow {
                        key: &key,
                        space: &space,
                        model: &model,
                        vector: &vector,
                    };
                    target.import_vector(postgres::VectorTable::Image, row, &writer)?;
                }
                Export::Root(root) => to.put_root(&root)?,
            }
            Ok(())
        })?;
        for space in to.spaces()? {
            to.prepare_search(&space.space)?;
        }
        Ok(report)
    }

    /// Create an SQLite database at an older schema version, as an older imbed left it. For
    /// testing migrations; not for use otherwise.
    #[doc(hidden)]
    pub fn create_with_schema(path: impl Into<PathBuf>, version: i64) -> Result<Cache> {
        Ok(Cache {
            backend: Backend::Sqlite(SqliteStore::create_with_schema(path, version)?),
        })
    }

    /// Create (or open) a PostgreSQL cache at an older schema version, as an older imbed left
    /// it. For testing migrations; not for use otherwise.
    #[doc(hidden)]
    pub fn open_postgres_at_schema(url: &str, version: i64) -> Result<Cache> {
        Ok(Cache {
            backend: Backend::Postgres(PostgresStore::open_at(url, PgOptions::default(), version)?),
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
        /// The database file (SQLite), or the local folder for per-machine files (PostgreSQL).
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
