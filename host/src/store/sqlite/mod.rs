//! The SQLite backend of the cache: one file, keyed by content.
//!
//! Why SQLite (through `rusqlite`, with SQLite compiled in): one file, transactions that survive
//! a killed process or a power cut (write-ahead log), readers that never see a half-written row,
//! safe use by two `imbed` processes at once, and a format every user can inspect with `sqlite3`.
//!
//! What is kept, and what each thing depends on:
//! - `descriptions`: (image content, describer identity, prompt) -> text. The describer identity
//!   is the plugin's name and the settings that can change a description (the vision model, the
//!   prompt), so swapping the *embedding* model reuses every description: the slow part.
//! - `text_vectors`: (text content, embedding space) -> vector.
//! - `image_vectors`: (image content, embedding space) -> vector, for direct image embedders.
//! - `entries`: the chain's final answer for an image in a space, with its provenance: what
//!   search compares. An image can have entries in several spaces (say a degraded one from the
//!   hash plugin and, after `--upgrade`, one from Ollama); search only ever reads one space.
//! - `files`: path -> image content, with size and mtime, so re-running an index skips files
//!   that did not change without reading them. Keys are always content hashes; a path is only
//!   a way to find content.
//!
//! - `spaces` and `space_writers` (`spaces.rs`): which plugin owns each embedding space, and
//!   every plugin component that wrote into it. Every vector row also names its writer (config
//!   key and component SHA-256), so what one component wrote can be dropped.
//!
//! Vectors are little-endian f32 blobs, checked against their recorded length when read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::keys::file_stamp;
use super::records::*;
use super::resident::{Resident, ResidentSpace};

mod spaces;

/// The schema version this build writes. Older databases are migrated on open; newer ones are
/// refused rather than misread.
pub const SCHEMA_VERSION: i64 = 4;

/// Each migration takes the database from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    "CREATE TABLE images (
         sha256 TEXT PRIMARY KEY,
         mime TEXT NOT NULL,
         width INTEGER NOT NULL,
         height INTEGER NOT NULL,
         bytes INTEGER NOT NULL,
         first_seen INTEGER NOT NULL
     );
     CREATE TABLE files (
         path TEXT PRIMARY KEY,
         sha256 TEXT NOT NULL,
         size INTEGER NOT NULL,
         mtime_ns INTEGER NOT NULL,
         seen_at INTEGER NOT NULL
     );
     CREATE INDEX files_by_image ON files(sha256);
     CREATE TABLE descriptions (
         image TEXT NOT NULL,
         describer TEXT NOT NULL,
         prompt TEXT NOT NULL,
         text TEXT NOT NULL,
         plugin TEXT NOT NULL,
         model TEXT NOT NULL,
         structured TEXT,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (image, describer, prompt)
     );
     CREATE TABLE text_vectors (
         text_sha TEXT NOT NULL,
         space TEXT NOT NULL,
         model TEXT NOT NULL,
         vector BLOB NOT NULL,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (text_sha, space)
     );
     CREATE TABLE image_vectors (
         image TEXT NOT NULL,
         space TEXT NOT NULL,
         model TEXT NOT NULL,
         vector BLOB NOT NULL,
         created_at INTEGER NOT NULL,
         PRIMARY KEY (image, space)
     );
     CREATE TABLE entries (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         image TEXT NOT NULL,
         space TEXT NOT NULL,
         dims INTEGER NOT NULL,
         vector BLOB NOT NULL,
         provenance TEXT NOT NULL,
         degraded INTEGER NOT NULL,
         created_at INTEGER NOT NULL,
         UNIQUE (image, space)
     );
     CREATE INDEX entries_by_space ON entries(space);",
    // 1 -> 2: remember which approximate-search index files are up to date, and find degraded
    // entries without a scan.
    "CREATE TABLE ann_indexes (
         space TEXT PRIMARY KEY,
         file TEXT NOT NULL,
         entries INTEGER NOT NULL,
         max_id INTEGER NOT NULL,
         built_at INTEGER NOT NULL
     );
     CREATE INDEX entries_by_image ON entries(image, degraded);",
    // 2 -> 3: the folders `imbed index` was given (canonical): the search page serves a file
    // only from under one of them.
    "CREATE TABLE roots (
         path TEXT PRIMARY KEY,
         added_at INTEGER NOT NULL
     );",
    // 3 -> 4: space ownership. Each space is pinned to the plugin (config key) that first
    // wrote into it, every component that wrote into it is listed, and every vector row names
    // its writer. Entries written before this carry their plugin in their provenance: a space
    // whose entries all name one key is pinned to it; a space whose entries name several is
    // left unpinned (the next write pins it), since picking one would be a guess. Components
    // of older writes are unknown: recorded as ''.
    "CREATE TABLE spaces (
         space TEXT PRIMARY KEY,
         owner_key TEXT NOT NULL,
         owner_name TEXT NOT NULL,
         first_written INTEGER NOT NULL
     );
     CREATE TABLE space_writers (
         space TEXT NOT NULL,
         plugin_key TEXT NOT NULL,
         plugin_name TEXT NOT NULL,
         component TEXT NOT NULL,
         first_seen INTEGER NOT NULL,
         last_seen INTEGER NOT NULL,
         PRIMARY KEY (space, plugin_key, component)
     );
     ALTER TABLE entries ADD COLUMN plugin_key TEXT;
     ALTER TABLE entries ADD COLUMN component TEXT;
     ALTER TABLE text_vectors ADD COLUMN plugin_key TEXT;
     ALTER TABLE text_vectors ADD COLUMN component TEXT;
     ALTER TABLE image_vectors ADD COLUMN plugin_key TEXT;
     ALTER TABLE image_vectors ADD COLUMN component TEXT;
     UPDATE entries SET plugin_key = json_extract(provenance, '$.plugin.key')
         WHERE json_valid(provenance);
     INSERT INTO space_writers (space, plugin_key, plugin_name, component, first_seen, last_seen)
         SELECT space, plugin_key,
                COALESCE(MIN(json_extract(provenance, '$.plugin.name')), plugin_key), '',
                MIN(created_at), MAX(created_at)
         FROM entries WHERE plugin_key IS NOT NULL AND plugin_key <> ''
         GROUP BY space, plugin_key;
     INSERT INTO spaces (space, owner_key, owner_name, first_written)
         SELECT space, MIN(plugin_key), MIN(plugin_name), MIN(first_seen)
         FROM space_writers GROUP BY space
         HAVING COUNT(DISTINCT plugin_key) = 1
            AND NOT EXISTS (SELECT 1 FROM entries e
                            WHERE e.space = space_writers.space AND e.plugin_key IS NULL);",
];

type Result<T> = std::result::Result<T, StoreError>;

/// The cache database. Cheap to clone; every clone shares one connection.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Spaces kept in memory between searches (see `store::resident`).
    resident: Resident,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Vectors are stored as little-endian f32.
pub(crate) fn to_blob(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// A transaction that holds the write lock from its first statement. The writes check a claim
/// (a read) before they write: begun deferred, the read would take a snapshot that another
/// process's commit can make stale, and SQLite then refuses the upgrade to a write at once
/// (BUSY, without waiting), which would drop the write. Begun immediate, it waits its turn.
fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn from_blob(b: &[u8]) -> Option<Vec<f32>> {
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// How long an imbed process waits for another one holding the database's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Another connection holds the lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Switch `conn` to WAL. The switch needs the exclusive lock, and SQLite answers BUSY at once,
/// without calling the busy handler, when another connection is upgrading its lock at the same
/// time (it would deadlock otherwise): seen when several imbed processes open a new file
/// together. Retry for as long as the busy timeout would have waited.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub fn open(path: impl Into<PathBuf>) -> Result<SqliteStore> {
        let path = path.into();
        let open_err = |message: String| StoreError::Open {
            path: path.clone(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_err(e.to_string()))?;
        }
        let conn = Connection::open(&path).map_err(|e| open_err(e.to_string()))?;
        // WAL: readers never block the writer and a crash never leaves a half-written
        // transaction visible. NORMAL sync: a power cut may lose the last commits, never
        // consistency. Two imbed processes wait for each other instead of failing.
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_err(e.to_string()))?;
        set_wal(&conn).map_err(|e| {
            if is_busy(&e) {
                open_err(format!(
                    "{e}: another process has held it for over {} s; stop it or wait",
                    BUSY_TIMEOUT.as_secs()
                ))
            } else {
                open_err(format!("{e} (is it an SQLite database?)"))
            }
        })?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| open_err(e.to_string()))?;
        let store = SqliteStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
            resident: Resident::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Create a database at an older schema version, as an older imbed left it. For testing
    /// migrations; not for use otherwise.
    #[doc(hidden)]
    pub fn create_with_schema(path: impl Into<PathBuf>, version: i64) -> Result<SqliteStore> {
        let path = path.into();
        let conn = Connection::open(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let store = SqliteStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
            resident: Resident::default(),
        };
        {
            let conn = store.conn();
            for (from, sql) in MIGRATIONS.iter().enumerate().take(version.max(0) as usize) {
                conn.execute_batch(sql).map_err(|e| store.sql(e))?;
                conn.pragma_update(None, "user_version", (from + 1) as i64)
                    .map_err(|e| store.sql(e))?;
            }
            if version as usize > MIGRATIONS.len() {
                conn.pragma_update(None, "user_version", version)
                    .map_err(|e| store.sql(e))?;
            }
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where approximate-search index files for this database live.
    pub fn ann_dir(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".ann");
        self.path.with_file_name(name)
    }

    /// Where the search page keeps thumbnails for this database (named by content hash).
    pub fn thumb_dir(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".thumbs");
        self.path.with_file_name(name)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it has its own
        // transactions), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        self.conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        loop {
            // One step per transaction, taken with the write lock (IMMEDIATE) and the version
            // read inside it: two imbed processes opening a new file at once must not both run
            // the same step. The second waits (busy timeout), then finds the step done. A crash
            // mid-step leaves the previous version, which the next open migrates again.
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| self.sql(e))?;
            let found: i64 = tx
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    path: self.path.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            let Some(sql) = MIGRATIONS.get(found as usize) else {
                return tx.commit().map_err(|e| self.sql(e));
            };
            tx.execute_batch(sql).map_err(|e| self.sql(e))?;
            tx.pragma_update(None, "user_version", found + 1)
                .map_err(|e| self.sql(e))?;
            tx.commit().map_err(|e| self.sql(e))?;
            tracing::debug!(
                "cache database {} migrated to schema {}",
                self.path.display(),
                found + 1
            );
        }
    }

    /// SQLite's own consistency check of the whole file: empty when it is sound.
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        let lines: Vec<String> = rows
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        Ok(lines.into_iter().filter(|l| l != "ok").collect())
    }

    /// A cached description of `image` by `describer` (see [`describer_identity`]) with
    /// `prompt` (empty for the plugin's own prompt).
    pub fn description(
        &self,
        image: &str,
        describer: &str,
        prompt: &str,
    ) -> Result<Option<CachedDescription>> {
        self.conn()
            .query_row(
                "SELECT text, plugin, model, structured FROM descriptions
                 WHERE image = ?1 AND describer = ?2 AND prompt = ?3",
                params![image, describer, prompt],
                |r| {
                    Ok(CachedDescription {
                        text: r.get(0)?,
                        plugin: r.get(1)?,
                        model: r.get(2)?,
                        structured: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Remember a description.
    pub fn put_description(
        &self,
        image: &str,
        describer: &str,
        prompt: &str,
        d: &CachedDescription,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO descriptions
                 (image, describer, prompt, text, plugin, model, structured, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    image,
                    describer,
                    prompt,
                    d.text,
                    d.plugin,
                    d.model,
                    d.structured,
                    now()
                ],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// A cached vector of a text (by its SHA-256) in `space`.
    pub fn text_vector(&self, text_sha: &str, space: &str) -> Result<Option<Vec<f32>>> {
        self.vector(VectorTable::Text, text_sha, space)
    }

    /// Remember a text's vector, written by `writer` (which must hold a claim on `space`).
    pub fn put_text_vector(
        &self,
        text_sha: &str,
        space: &str,
        model: &str,
        vector: &[f32],
        writer: &Writer,
    ) -> Result<()> {
        self.put_vector(VectorTable::Text, text_sha, space, model, vector, writer)
    }

    /// A cached direct image vector in `space`.
    pub fn image_vector(&self, image: &str, space: &str) -> Result<Option<Vec<f32>>> {
        self.vector(VectorTable::Image, image, space)
    }

    /// Remember a direct image vector, written by `writer` (which must hold a claim on
    /// `space`).
    pub fn put_image_vector(
        &self,
        image: &str,
        space: &str,
        model: &str,
        vector: &[f32],
        writer: &Writer,
    ) -> Result<()> {
        self.put_vector(VectorTable::Image, image, space, model, vector, writer)
    }

    fn vector(&self, table: VectorTable, key: &str, space: &str) -> Result<Option<Vec<f32>>> {
        let (table, column) = table.names();
        let blob: Option<Vec<u8>> = self
            .conn()
            .prepare_cached(&format!(
                "SELECT vector FROM {table} WHERE {column} = ?1 AND space = ?2"
            ))
            .and_then(|mut select| {
                select
                    .query_row(params![key, space], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.sql(e))?;
        Ok(blob.and_then(|b| from_blob(&b)))
    }

    fn put_vector(
        &self,
        table: VectorTable,
        key: &str,
        space: &str,
        model: &str,
        vector: &[f32],
        writer: &Writer,
    ) -> Result<()> {
        let (table, column) = table.names();
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn).map_err(|e| self.sql(e))?;
        self.check_claim(&tx, space, writer)?;
        tx.prepare_cached(&format!(
            "INSERT OR REPLACE INTO {table}
                 ({column}, space, model, vector, created_at, plugin_key, component)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ))
        .and_then(|mut insert| {
            insert.execute(params![
                key,
                space,
                model,
                to_blob(vector),
                now(),
                writer.key,
                writer.component
            ])
        })
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))
    }

    /// Record the chain's answer for an image (and the image itself), in one transaction.
    /// `writer` is the plugin that produced it, which must hold a claim on its space.
    pub fn put_entry(
        &self,
        image: &ImageMeta,
        embedding: &crate::types::Embedding,
        writer: &Writer,
    ) -> Result<()> {
        let p = &embedding.provenance;
        let provenance = serde_json::to_string(p).unwrap_or_else(|_| "{}".into());
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn).map_err(|e| self.sql(e))?;
        self.check_claim(&tx, p.space.as_str(), writer)?;
        insert_image(&tx, image).map_err(|e| self.sql(e))?;
        let blob = to_blob(&embedding.vector);
        let same: Option<bool> = tx
            .query_row(
                "SELECT vector = ?3 AND degraded = ?4 FROM entries WHERE image = ?1 AND space = ?2",
                params![image.sha256, p.space.as_str(), blob, p.degraded],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        if same == Some(true) {
            // The same answer again (from the cache, say): keep the row and its id.
            return tx.commit().map_err(|e| self.sql(e));
        }
        // A replaced answer gets a new row id, so approximate indexes (keyed by id) notice it.
        tx.execute(
            "DELETE FROM entries WHERE image = ?1 AND space = ?2",
            params![image.sha256, p.space.as_str()],
        )
        .map_err(|e| self.sql(e))?;
        tx.execute(
            "INSERT INTO entries
             (image, space, dims, vector, provenance, degraded, created_at, plugin_key, component)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                image.sha256,
                p.space.as_str(),
                embedding.vector.len() as i64,
                blob,
                provenance,
                p.degraded,
                now(),
                writer.key,
                writer.component
            ],
        )
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))
    }

    /// Record that `path` (with this size and mtime) holds `image`.
    pub fn put_file(&self, path: &Path, image: &ImageMeta, size: u64, mtime_ns: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        insert_image(&tx, image).map_err(|e| self.sql(e))?;
        tx.execute(
            "INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![path_key(path), image.sha256, size as i64, mtime_ns, now()],
        )
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))
    }

    /// What is known about `path`.
    pub fn file(&self, path: &Path) -> Result<Option<FileRecord>> {
        self.conn()
            .query_row(
                "SELECT sha256, size, mtime_ns FROM files WHERE path = ?1",
                params![path_key(path)],
                |r| {
                    Ok(FileRecord {
                        sha256: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Record a folder (or file) given to `imbed index`, as a canonical path.
    pub fn put_root(&self, root: &Path) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO roots (path, added_at) VALUES (?1, ?2)",
                params![path_key(root), now()],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// The folders (and files) `imbed index` was given, canonical, in order.
    pub fn roots(&self) -> Result<Vec<PathBuf>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT path FROM roots ORDER BY path")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map(PathBuf::from).map_err(|e| self.sql(e)))
            .collect()
    }

    /// Paths known to hold `image`.
    pub fn paths_of(&self, image: &str) -> Result<Vec<PathBuf>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT path FROM files WHERE sha256 = ?1 ORDER BY path")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![image], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map(PathBuf::from).map_err(|e| self.sql(e)))
            .collect()
    }

    /// The entries of an image, in every space.
    pub fn entries_of(&self, image: &str) -> Result<Vec<Entry>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, image, space, degraded FROM entries WHERE image = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![image], |r| {
                Ok(Entry {
                    id: r.get(0)?,
                    image: r.get(1)?,
                    space: r.get(2)?,
                    degraded: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map_err(|e| self.sql(e))).collect()
    }

    /// The stored answer for `image` in `space`, with its provenance.
    pub fn entry_embedding(
        &self,
        image: &str,
        space: &str,
    ) -> Result<Option<crate::types::Embedding>> {
        let row: Option<(Vec<u8>, String)> = self
            .conn()
            .query_row(
                "SELECT vector, provenance FROM entries WHERE image = ?1 AND space = ?2",
                params![image, space],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(row.and_then(|(blob, prov)| {
            Some(crate::types::Embedding {
                vector: from_blob(&blob)?,
                provenance: serde_json::from_str(&prov).ok()?,
            })
        }))
    }

    /// Every vector stored in `space`, ready to scan. Rows whose blob does not match the
    /// space's length are skipped with a warning (they can only come from a damaged file).
    pub fn load_space(&self, space: &str) -> Result<SpaceVectors> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, image, dims, vector FROM entries WHERE space = ?1 ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query(params![space]).map_err(|e| self.sql(e))?;
        let mut out = SpaceVectors {
            space: space.to_string(),
            dims: 0,
            ids: Vec::new(),
            images: Vec::new(),
            data: Vec::new(),
        };
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let id: i64 = row.get(0).map_err(|e| self.sql(e))?;
            let dims = row.get::<_, i64>(2).map_err(|e| self.sql(e))? as usize;
            let blob = row.get_ref(3).map_err(|e| self.sql(e))?;
            let blob = blob.as_blob().unwrap_or_default();
            if out.dims == 0 {
                out.dims = dims;
            }
            if dims != out.dims || blob.len() != dims * 4 {
                tracing::warn!(
                    "skipping entry {id} in space {space:?}: its vector does not have {} dimensions",
                    out.dims
                );
                continue;
            }
            out.ids.push(id);
            out.images.push(row.get(1).map_err(|e| self.sql(e))?);
            out.data.extend(
                blob.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Ok(out)
    }

    /// `space` for search: kept in memory while unchanged, loaded again (see
    /// [`SqliteStore::load_space`]) when an entry was added, replaced or removed since.
    pub fn resident_space(&self, space: &str) -> Result<Arc<ResidentSpace>> {
        let (entries, max_id): (i64, i64) = self
            .conn()
            .query_row(
                "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM entries WHERE space = ?1",
                params![space],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql(e))?;
        self.resident
            .get(space, (entries as u64, max_id), || self.load_space(space))
    }

    /// Entries in `space` with a row id above `after`, for bringing an index up to date.
    pub fn space_since(&self, space: &str, after: i64) -> Result<SpaceVectors> {
        let mut all = self.load_space(space)?;
        let keep = all
            .ids
            .iter()
            .position(|&id| id > after)
            .unwrap_or(all.ids.len());
        let dims = all.dims;
        all.ids.drain(..keep);
        all.images.drain(..keep);
        all.data.drain(..keep * dims);
        Ok(all)
    }

    /// Spaces with stored entries, largest first, with their owners and writers.
    pub fn spaces(&self) -> Result<Vec<SpaceStats>> {
        self.space_list(false)
    }

    /// Spaces with stored entries (and with `pinned`, also those with only an owner), largest
    /// first, with their owners and writers.
    fn space_list(&self, pinned: bool) -> Result<Vec<SpaceStats>> {
        let mut owners = self.ownership()?;
        let mut out: Vec<SpaceStats> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare(
                    "SELECT space, MAX(dims), COUNT(*), SUM(degraded) FROM entries
                     GROUP BY space ORDER BY COUNT(*) DESC, space",
                )
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(SpaceStats {
                        space: r.get(0)?,
                        dims: r.get::<_, i64>(1)? as usize,
                        entries: r.get::<_, i64>(2)? as u64,
                        degraded: r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                        owner: None,
                        writers: Vec::new(),
                    })
                })
                .map_err(|e| self.sql(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.sql(e))?
        };
        for s in &mut out {
            if let Some((owner, writers)) = owners.remove(&s.space) {
                (s.owner, s.writers) = (owner, writers);
            }
        }
        if pinned {
            out.extend(
                owners
                    .into_iter()
                    .map(|(space, (owner, writers))| SpaceStats {
                        space,
                        dims: 0,
                        entries: 0,
                        degraded: 0,
                        owner,
                        writers,
                    }),
            );
        }
        Ok(out)
    }

    /// Known files whose image has no entry from a first-choice step (only degraded ones),
    /// optionally only under `under`.
    pub fn degraded_files(&self, under: Option<&Path>) -> Result<Vec<PathBuf>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT f.path FROM files f
                 WHERE EXISTS (SELECT 1 FROM entries e WHERE e.image = f.sha256)
                   AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.image = f.sha256 AND e.degraded = 0)
                 ORDER BY f.path",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let path = PathBuf::from(row.map_err(|e| self.sql(e))?);
            if under.is_none_or(|u| path.starts_with(u)) {
                out.push(path);
            }
        }
        Ok(out)
    }

    /// The approximate-search index recorded for `space`: file name, entries, highest row id.
    pub fn ann_record(&self, space: &str) -> Result<Option<(String, u64, i64)>> {
        self.conn()
            .query_row(
                "SELECT file, entries, max_id FROM ann_indexes WHERE space = ?1",
                params![space],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Record an approximate-search index file for `space`.
    pub fn put_ann_record(&self, space: &str, file: &str, entries: u64, max_id: i64) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO ann_indexes (space, file, entries, max_id, built_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![space, file, entries as i64, max_id, now()],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Whether anything was removed or replaced in `space` since an index covering `entries`
    /// rows up to `max_id` was built (then it must be rebuilt, not extended). Replacing an
    /// entry deletes its row, so the count of rows up to `max_id` tells.
    pub fn space_changed_below(&self, space: &str, entries: u64, max_id: i64) -> Result<bool> {
        let count: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM entries WHERE space = ?1 AND id <= ?2",
                params![space, max_id],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        Ok(count as u64 != entries)
    }

    fn bytes_on_disk(&self) -> u64 {
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.as_os_str().to_os_string();
            p.push(suffix);
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        if let Ok(dir) = std::fs::read_dir(self.ann_dir()) {
            for f in dir.flatten() {
                total += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        total
    }

    /// Sizes and counts.
    pub fn stats(&self) -> Result<Stats> {
        let count = |table: &str| -> Result<u64> {
            self.conn()
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(|e| self.sql(e))
        };
        Ok(Stats {
            path: self.path.clone(),
            schema_version: self.schema_version()?,
            bytes_on_disk: self.bytes_on_disk(),
            images: count("images")?,
            files: count("files")?,
            descriptions: count("descriptions")?,
            text_vectors: count("text_vectors")?,
            image_vectors: count("image_vectors")?,
            spaces: self.space_list(true)?,
        })
    }

    /// Remove what `options` asks for.
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        let mut report = PruneReport {
            bytes_before: self.bytes_on_disk(),
            ..Default::default()
        };
        if options.missing_files {
            let files: Vec<(String, i64, i64)> = {
                let conn = self.conn();
                let mut stmt = conn
                    .prepare("SELECT path, size, mtime_ns FROM files")
                    .map_err(|e| self.sql(e))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(|e| self.sql(e))?;
                rows.collect::<std::result::Result<_, _>>()
                    .map_err(|e| self.sql(e))?
            };
            let gone: Vec<String> = files
                .into_iter()
                .filter(|(path, size, mtime)| match file_stamp(Path::new(path)) {
                    Some((s, m)) => s as i64 != *size || m != *mtime,
                    None => true,
                })
                .map(|(p, _, _)| p)
                .collect();
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(|e| self.sql(e))?;
            for path in &gone {
                report.files += tx
                    .execute("DELETE FROM files WHERE path = ?1", params![path])
                    .map_err(|e| self.sql(e))? as u64;
            }
            // Content no path refers to any more. (Images embedded from URLs or stdin have no
            // path; they go too: prune keeps what an index can still find.)
            let orphan = "SELECT sha256 FROM images WHERE sha256 NOT IN (SELECT sha256 FROM files)";
            report.entries += tx
                .execute(
                    &format!("DELETE FROM entries WHERE image IN ({orphan})"),
                    [],
                )
                .map_err(|e| self.sql(e))? as u64;
            for table in ["descriptions", "image_vectors"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE image IN ({orphan})"),
                    [],
                )
                .map_err(|e| self.sql(e))?;
            }
            report.images += tx
                .execute(
                    &format!("DELETE FROM images WHERE sha256 IN ({orphan})"),
                    [],
                )
                .map_err(|e| self.sql(e))? as u64;
            tx.commit().map_err(|e| self.sql(e))?;
        }
        if let Some(writer) = &options.writer {
            self.prune_writer(&options.spaces, writer, &mut report)?;
        }
        let whole_spaces: &[String] = match options.writer {
            Some(_) => &[],
            None => &options.spaces,
        };
        if !whole_spaces.is_empty() || options.text_vectors {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(|e| self.sql(e))?;
            for space in whole_spaces {
                report.entries += tx
                    .execute("DELETE FROM entries WHERE space = ?1", params![space])
                    .map_err(|e| self.sql(e))? as u64;
                report.image_vectors += tx
                    .execute("DELETE FROM image_vectors WHERE space = ?1", params![space])
                    .map_err(|e| self.sql(e))? as u64;
                report.text_vectors += tx
                    .execute("DELETE FROM text_vectors WHERE space = ?1", params![space])
                    .map_err(|e| self.sql(e))? as u64;
                // Nothing is left of it: the next plugin to write into it owns it.
                if self.unpin(&tx, space)? {
                    report.unpinned.push(space.clone());
                }
            }
            if options.text_vectors {
                report.text_vectors += tx
                    .execute("DELETE FROM text_vectors", [])
                    .map_err(|e| self.sql(e))? as u64;
            }
            tx.commit().map_err(|e| self.sql(e))?;
        }
        if report.entries > 0 {
            // Removed rows invalidate approximate indexes; they are rebuilt on next use.
            self.conn()
                .execute("DELETE FROM ann_indexes", [])
                .map_err(|e| self.sql(e))?;
            let _ = std::fs::remove_dir_all(self.ann_dir());
        }
        if report.images > 0 {
            // Thumbnails are named by content: those of forgotten images would never be served
            // again. The rest are made again on demand.
            let _ = std::fs::remove_dir_all(self.thumb_dir());
        }
        if options.vacuum {
            let conn = self.conn();
            conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(|e| self.sql(e))?;
        }
        report.bytes_after = self.bytes_on_disk();
        Ok(report)
    }
}

impl SqliteStore {
    /// Every image, file, description, cached vector, root and entry, in `batch`-sized
    /// pieces handed to `sink` (for `imbed cache migrate`): never the whole file in memory.
    pub fn export(&self, batch: usize, sink: &mut dyn FnMut(Export) -> Result<()>) -> Result<()> {
        // Owners and writers first: the target must know who owns a space before taking
        // its vectors.
        for (space, (owner, writers)) in self.ownership()? {
            sink(Export::Space {
                space,
                owner,
                writers,
            })?;
        }
        let batch = batch.max(1) as i64;
        let mut after = 0i64;
        loop {
            let rows: Vec<(i64, ImageMeta, crate::types::Embedding, RowWriter)> = {
                let conn = self.conn();
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT e.id, i.sha256, i.mime, i.width, i.height, i.bytes, e.vector, e.provenance,
                                e.plugin_key, e.component
                         FROM entries e JOIN images i ON i.sha256 = e.image
                         WHERE e.id > ?1 ORDER BY e.id LIMIT ?2",
                    )
                    .map_err(|e| self.sql(e))?;
                let rows = stmt
                    .query_map(params![after, batch], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            ImageMeta {
                                sha256: r.get(1)?,
                                mime: r.get(2)?,
                                width: r.get(3)?,
                                height: r.get(4)?,
                                bytes: r.get::<_, i64>(5)? as u64,
                            },
                            r.get::<_, Vec<u8>>(6)?,
                            r.get::<_, String>(7)?,
                            RowWriter {
                                key: r.get(8)?,
                                component: r.get(9)?,
                            },
                        ))
                    })
                    .map_err(|e| self.sql(e))?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, meta, blob, prov, writer) = row.map_err(|e| self.sql(e))?;
                    after = id;
                    match (from_blob(&blob), serde_json::from_str(&prov)) {
                        (Some(vector), Ok(provenance)) => out.push((
                            id,
                            meta,
                            crate::types::Embedding { vector, provenance },
                            writer,
                        )),
                        _ => tracing::warn!(
                            "not copying entry {id}: its vector or provenance is damaged"
                        ),
                    }
                }
                out
            };
            if rows.is_empty() && self.count_above("entries", "id", after)? == 0 {
                break;
            }
            sink(Export::Entries(
                rows.into_iter().map(|(_, m, e, w)| (m, e, w)).collect(),
            ))?;
        }
        {
            let conn = self.conn();
            let mut stmt = conn
                .prepare("SELECT f.path, f.size, f.mtime_ns, i.sha256, i.mime, i.width, i.height, i.bytes
                          FROM files f JOIN images i ON i.sha256 = f.sha256 ORDER BY f.path")
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Export::File {
                        path: PathBuf::from(r.get::<_, String>(0)?),
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get(2)?,
                        image: ImageMeta {
                            sha256: r.get(3)?,
                            mime: r.get(4)?,
                            width: r.get(5)?,
                            height: r.get(6)?,
                            bytes: r.get::<_, i64>(7)? as u64,
                        },
                    })
                })
                .map_err(|e| self.sql(e))?;
            let rows: Vec<Export> = rows
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.sql(e))?;
            drop(stmt);
            drop(conn);
            for row in rows {
                sink(row)?;
            }
        }
        let descriptions: Vec<Export> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare("SELECT image, describer, prompt, text, plugin, model, structured FROM descriptions")
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Export::Description {
                        image: r.get(0)?,
                        describer: r.get(1)?,
                        prompt: r.get(2)?,
                        description: CachedDescription {
                            text: r.get(3)?,
                            plugin: r.get(4)?,
                            model: r.get(5)?,
                            structured: r.get(6)?,
                        },
                    })
                })
                .map_err(|e| self.sql(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.sql(e))?
        };
        for d in descriptions {
            sink(d)?;
        }
        for table in [VectorTable::Text, VectorTable::Image] {
            let (name, column) = table.names();
            let vectors: Vec<(String, String, String, Vec<u8>, RowWriter)> = {
                let conn = self.conn();
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT {column}, space, model, vector, plugin_key, component FROM {name}"
                    ))
                    .map_err(|e| self.sql(e))?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            RowWriter {
                                key: r.get(4)?,
                                component: r.get(5)?,
                            },
                        ))
                    })
                    .map_err(|e| self.sql(e))?;
                rows.collect::<std::result::Result<_, _>>()
                    .map_err(|e| self.sql(e))?
            };
            for (key, space, model, blob, writer) in vectors {
                let Some(vector) = from_blob(&blob) else {
                    continue;
                };
                sink(match table {
                    VectorTable::Text => Export::TextVector {
                        key,
                        space,
                        model,
                        vector,
                        writer,
                    },
                    VectorTable::Image => Export::ImageVector {
                        key,
                        space,
                        model,
                        vector,
                        writer,
                    },
                })?;
            }
        }
        for root in self.roots()? {
            sink(Export::Root(root))?;
        }
        Ok(())
    }

    fn count_above(&self, table: &str, column: &str, after: i64) -> Result<i64> {
        self.conn()
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE {column} > ?1"),
                params![after],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))
    }
}

/// One piece of an SQLite cache, as [`SqliteStore::export`] hands it over.
pub enum Export {
    /// Who owns a space and who wrote into it (every space with either, before any vector).
    Space {
        /// The space.
        space: String,
        /// The plugin it is pinned to, if any.
        owner: Option<SpaceOwner>,
        /// Every component that wrote into it.
        writers: Vec<SpaceWriterStats>,
    },
    /// Entries with their images and the writer each names.
    Entries(Vec<(ImageMeta, crate::types::Embedding, RowWriter)>),
    /// A known file.
    File {
        /// Its path.
        path: PathBuf,
        /// Its image.
        image: ImageMeta,
        /// Size when seen.
        size: u64,
        /// Modification time when seen.
        mtime_ns: i64,
    },
    /// A description.
    Description {
        /// Image hash.
        image: String,
        /// Describer identity.
        describer: String,
        /// Prompt.
        prompt: String,
        /// The description.
        description: CachedDescription,
    },
    /// A text vector.
    TextVector {
        /// Text hash.
        key: String,
        /// Space.
        space: String,
        /// Model.
        model: String,
        /// Vector.
        vector: Vec<f32>,
        /// The writer it names.
        writer: RowWriter,
    },
    /// A direct image vector.
    ImageVector {
        /// Image hash.
        key: String,
        /// Space.
        space: String,
        /// Model.
        model: String,
        /// Vector.
        vector: Vec<f32>,
        /// The writer it names.
        writer: RowWriter,
    },
    /// A folder `imbed index` was given.
    Root(PathBuf),
}

/// The two caches of plugin outputs: vectors of texts and direct vectors of images.
#[derive(Clone, Copy)]
enum VectorTable {
    Text,
    Image,
}

impl VectorTable {
    /// Table and key column.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            VectorTable::Text => ("text_vectors", "text_sha"),
            VectorTable::Image => ("image_vectors", "image"),
        }
    }
}

fn insert_image(tx: &rusqlite::Transaction<'_>, image: &ImageMeta) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO images (sha256, mime, width, height, bytes, first_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            image.sha256,
            image.mime,
            image.width,
            image.height,
            image.bytes as i64,
            now()
        ],
    )
    .map(drop)
}

/// Paths are stored as given (absolute, as the indexer makes them); non-UTF-8 paths lossily.
fn path_key(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_version_is_the_number_of_migrations() {
        assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
    }

    #[test]
    fn many_processes_opening_a_new_database_at_once_all_succeed() {
        // Separate connections race to create the schema, as two imbed processes would.
        for round in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("race{round}.db"));
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let opened: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            SqliteStore::open(&path).map(|st| st.schema_version().unwrap())
                        })
                    })
                    .collect();
                for o in opened {
                    assert_eq!(o.join().unwrap().unwrap(), SCHEMA_VERSION);
                }
            });
        }
    }

    #[test]
    fn blobs_round_trip_and_reject_damage() {
        let v = vec![0.5f32, -1.25, 3.0e-8];
        assert_eq!(from_blob(&to_blob(&v)).unwrap(), v);
        assert!(from_blob(&[1, 2, 3]).is_none());
        assert!(from_blob(&[]).is_none());
    }
}
