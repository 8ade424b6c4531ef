//! The PostgreSQL backend of the cache: the same content-addressed model as `sqlite`, in a
//! database several imbed processes on several machines share, with pgvector for the vectors
//! and for search inside the database.
//!
//! Why a runtime of its own: tokio-postgres is async, and every cache method is blocking (the
//! facade's contract, see `store/mod.rs`). The store drives its futures with `block_on` on a
//! one-thread runtime it owns, where the pool's connection tasks live too. So the connections
//! outlive whichever runtime opened the store (the CLI builds short-lived ones), and a method
//! called from tokio's blocking pool (through `Cache::run`) or a plain thread just blocks that
//! thread. Called from an async task it would panic (tokio refuses to block a worker): the
//! facade's callers reach it through `Cache::run`.
//!
//! What differs from SQLite, and why:
//! - Vectors are pgvector `vector` values in a column without a fixed size, so spaces of every
//!   size share one table and a model change needs no `ALTER`. Search of a space uses one HNSW
//!   index of its own: a partial index over `embedding::vector(d)` (or `halfvec(d)`) for
//!   `space = '…'`, and the query repeats that expression and predicate so the planner picks it.
//! - There is no file: `path()` names a local folder for what stays per machine (thumbnails of
//!   the search page, made again on demand), `ann_dir()` is unused (no index files).
//! - Migrations are numbered in `schema_migrations` and run under a session advisory lock, so
//!   any number of processes may start at once.
//! - Space ownership keeps SQLite's rule (`SpaceClaim::allows`), but SQLite's one write lock
//!   becomes row locks: the pin is an `INSERT … ON CONFLICT DO NOTHING` read back in the same
//!   transaction, so of workers on several machines racing to pin a space exactly one wins,
//!   and each write locks its claim (`FOR SHARE`) so a concurrent prune cannot drop it midway.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pgvector::{HalfVector, Vector};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::keys::file_stamp;
use super::records::*;

mod schema;
mod search;
mod spaces;

pub use schema::PG_SCHEMA_VERSION;

type Result<T> = std::result::Result<T, StoreError>;

/// How long to wait for a connection to the server before saying it cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the PostgreSQL store searches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgOptions {
    /// HNSW candidates per search (`hnsw.ef_search`). 100, not pgvector's 40: measured at
    /// 100,000 vectors of 768 dimensions (`cargo bench --bench scale`), 40 found 0.947 of the
    /// true top 10 and 100 found 0.996, for 4 ms more a search.
    pub ef_search: u32,
    /// Index `halfvec` (half the memory) even at 2,000 dimensions or fewer.
    pub halfvec: bool,
    /// Re-rank the HNSW candidates by the exact full-precision inner product.
    pub exact_rerank: bool,
    /// Connections in the pool.
    pub pool_size: usize,
    /// A local folder for what stays per machine (thumbnails).
    pub local_dir: PathBuf,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            ef_search: 100,
            halfvec: false,
            exact_rerank: false,
            pool_size: 16,
            local_dir: PathBuf::new(),
        }
    }
}

/// The cache in PostgreSQL. Cheap to clone; clones share one pool and runtime.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL without its password, to name the database in messages.
    location: String,
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    options: PgOptions,
    /// Spaces whose search index is known to exist.
    indexed: Mutex<HashSet<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last clone may go away on an async thread, where dropping a runtime the normal
        // way panics; its connections need no orderly goodbye.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.inner.location)
            .finish()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether `url` names a PostgreSQL database rather than an SQLite file.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "the PostgreSQL URL".to_string(),
    }
}

fn tls_connector() -> std::result::Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PostgresStore {
    /// Connect to the database at `url`, check pgvector, and bring the schema up to date.
    pub fn open(url: &str, options: PgOptions) -> Result<PostgresStore> {
        PostgresStore::open_at(url, options, PG_SCHEMA_VERSION)
    }

    /// Open, migrating no further than `version`: a database as an older imbed left it, for
    /// testing migrations.
    pub fn open_at(url: &str, options: PgOptions, version: i64) -> Result<PostgresStore> {
        let location = redact(url);
        let fail = |message: String| StoreError::Connect {
            location: location.clone(),
            message,
        };
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            fail(format!(
                "the URL is not valid ({e}): write it as postgres://user:password@host:5432/database"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == SslMode::Disable {
            Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config)
        } else {
            Manager::from_config(
                config.clone(),
                tls_connector().map_err(fail)?,
                manager_config,
            )
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("imbed-postgres")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start its runtime: {e}")))?;
        let pool = {
            // The pool's timers and connection tasks belong to the store's runtime.
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(options.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(60)))
                .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(5)))
                .build()
                .map_err(|e| fail(e.to_string()))?
        };
        let store = PostgresStore {
            inner: Arc::new(Inner {
                location,
                pool,
                runtime: Some(runtime),
                options,
                indexed: Mutex::new(HashSet::new()),
            }),
        };
        // Opening happens from async code too (the CLI opens the cache inside its runtime),
        // where blocking on another runtime is refused: do it from a thread of its own.
        let (user, db) = (
            config.get_user().unwrap_or("").to_string(),
            config.get_dbname().unwrap_or("").to_string(),
        );
        std::thread::scope(|s| {
            s.spawn(|| store.prepare(&user, &db, version))
                .join()
                .unwrap_or_else(|_| Err(StoreError::Task("opening PostgreSQL panicked".into())))
        })?;
        Ok(store)
    }

    /// Run `work` with a pooled connection on the store's runtime, blocking this thread like
    /// every method of the store: the work queue's own SQL (`queue/`) goes through here.
    pub(crate) fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T>,
    ) -> Result<T> {
        self.block_on(async {
            let mut client = self.client().await?;
            work(&mut client).await
        })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.inner
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store")
            .block_on(f)
    }

    pub(crate) fn db(&self, source: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres {
            location: self.inner.location.clone(),
            source,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(|e| self.pool_error(e))
    }

    fn pool_error(&self, e: deadpool_postgres::PoolError) -> StoreError {
        use deadpool_postgres::PoolError;
        let message = match e {
            PoolError::Backend(e) => return self.explain(e, "", ""),
            PoolError::Timeout(_) => format!(
                "no connection within the timeout: is the server up and reachable, and is its \
                 max_connections above the number of imbed processes times {}?",
                self.inner.options.pool_size
            ),
            other => other.to_string(),
        };
        StoreError::Unavailable {
            location: self.inner.location.clone(),
            message,
        }
    }

    /// An error from connecting, with what to do about it.
    fn explain(&self, e: tokio_postgres::Error, user: &str, db: &str) -> StoreError {
        let location = self.inner.location.clone();
        let hint = match e.code() {
            Some(c) if *c == SqlState::INVALID_PASSWORD => format!(
                "password authentication failed for user {user:?}: check the user and password in the URL"
            ),
            Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => format!(
                "the server refused user {user:?}: check the user in the URL and the server's pg_hba.conf"
            ),
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => format!(
                "database {db:?} does not exist: create it (`CREATE DATABASE {db}`) or fix the URL"
            ),
            Some(_) => return StoreError::Postgres { location, source: e },
            None => {
                return StoreError::Unavailable {
                    location,
                    message: format!(
                        "cannot connect ({e}): is PostgreSQL running there and accepting \
                         connections (listen_addresses, pg_hba.conf, a firewall)? imbed gives up \
                         after {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                }
            }
        };
        StoreError::Connect {
            location,
            message: hint,
        }
    }

    /// Connect once, check pgvector, migrate.
    fn prepare(&self, user: &str, db: &str, version: i64) -> Result<()> {
        self.block_on(async {
            let mut client = match self.inner.pool.get().await {
                Ok(c) => c,
                Err(deadpool_postgres::PoolError::Backend(e)) => {
                    return Err(self.explain(e, user, db))
                }
                Err(e) => return Err(self.pool_error(e)),
            };
            let has_vector: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')",
                    &[],
                )
                .await
                .map_err(|e| self.db(e))?
                .get(0);
            if !has_vector {
                // A superuser (or the database owner, were pgvector trusted) may add it here.
                if let Err(e) = client
                    .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
                    .await
                {
                    return Err(StoreError::Connect {
                        location: self.inner.location.clone(),
                        message: format!(
                            "the pgvector extension is not enabled in database {db:?} and imbed \
                             could not enable it ({}): run `CREATE EXTENSION vector` in that \
                             database as a superuser (pgvector must be installed on the server)",
                            e.as_db_error().map(|d| d.message()).unwrap_or("no detail")
                        ),
                    });
                }
            }
            self.migrate(&mut client, version).await
        })
    }

    /// Run one statement returning rows.
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>> {
        self.block_on(async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(|e| self.db(e))?;
            client.query(&stmt, params).await.map_err(|e| self.db(e))
        })
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.block_on(async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(|e| self.db(e))?;
            client.execute(&stmt, params).await.map_err(|e| self.db(e))
        })
    }

    /// The database, named without its password.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The local folder for per-machine files.
    pub fn path(&self) -> &Path {
        &self.inner.options.local_dir
    }

    /// Unused: pgvector's indexes live in the database. A folder that is never written.
    pub fn ann_dir(&self) -> PathBuf {
        self.inner.options.local_dir.join("ann-unused")
    }

    /// Thumbnails stay per machine, in the local folder: they are made again on demand.
    pub fn thumb_dir(&self) -> PathBuf {
        self.inner.options.local_dir.join("thumbs")
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.query(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?[0]
            .get(0))
    }

    /// Rows whose vector does not have its recorded length, and search indexes left invalid
    /// (a failed build): empty when sound. PostgreSQL checks its own pages itself.
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for row in self.query(
            "SELECT id, space FROM entries WHERE vector_dims(embedding) <> dims LIMIT 100",
            &[],
        )? {
            let (id, space): (i64, String) = (row.get(0), row.get(1));
            out.push(format!(
                "entry {id} in space {space:?}: its vector does not have its recorded length"
            ));
        }
        for row in self.query(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE NOT i.indisvalid AND c.relname LIKE 'entries_%'",
            &[],
        )? {
            let name: String = row.get(0);
            out.push(format!(
                "index {name} is invalid: drop it (`DROP INDEX {name}`), imbed builds it again"
            ));
        }
        Ok(out)
    }

    /// A cached description.
    pub fn description(
        &self,
        image: &str,
        describer: &str,
        prompt: &str,
    ) -> Result<Option<CachedDescription>> {
        let rows = self.query(
            "SELECT text, plugin, model, structured FROM descriptions
             WHERE image = $1 AND describer = $2 AND prompt = $3",
            &[&image, &describer, &prompt],
        )?;
        Ok(rows.first().map(|r| CachedDescription {
            text: r.get(0),
            plugin: r.get(1),
            model: r.get(2),
            structured: r.get(3),
        }))
    }

    /// Remember a description.
    pub fn put_description(
        &self,
        image: &str,
        describer: &str,
        prompt: &str,
        d: &CachedDescription,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO descriptions
             (image, describer, prompt, text, plugin, model, structured, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (image, describer, prompt) DO UPDATE SET text = EXCLUDED.text,
               plugin = EXCLUDED.plugin, model = EXCLUDED.model,
               structured = EXCLUDED.structured, created_at = EXCLUDED.created_at",
            &[
                &image,
                &describer,
                &prompt,
                &d.text,
                &d.plugin,
                &d.model,
                &d.structured,
                &now(),
            ],
        )
        .map(drop)
    }

    /// A cached text vector.
    pub fn text_vector(&self, text_sha: &str, space: &str) -> Result<Option<Vec<f32>>> {
        self.vector("text_vectors", "text_sha", text_sha, space)
    }

    /// Remember a text's vector, written by `writer` (which must hold a claim on `space`).
    pub fn put_text_vector(
        &self,
        text_sha: &str,
        space: &str,
        model: &str,
        v: &[f32],
        writer: &Writer,
    ) -> Result<()> {
        let row = VectorRow {
            key: text_sha,
            space,
            model,
            vector: v,
        };
        self.put_vector(VectorTable::Text, row, &writer.into(), Some(writer))
    }

    /// A cached direct image vector.
    pub fn image_vector(&self, image: &str, space: &str) -> Result<Option<Vec<f32>>> {
        self.vector("image_vectors", "image", image, space)
    }

    /// Remember a direct image vector, written by `writer` (which must hold a claim on
    /// `space`).
    pub fn put_image_vector(
        &self,
        image: &str,
        space: &str,
        model: &str,
        v: &[f32],
        writer: &Writer,
    ) -> Result<()> {
        let row = VectorRow {
            key: image,
            space,
            model,
            vector: v,
        };
        self.put_vector(VectorTable::Image, row, &writer.into(), Some(writer))
    }

    fn vector(
        &self,
        table: &str,
        column: &str,
        key: &str,
        space: &str,
    ) -> Result<Option<Vec<f32>>> {
        let rows = self.query(
            &format!("SELECT vector FROM {table} WHERE {column} = $1 AND space = $2"),
            &[&key, &space],
        )?;
        Ok(rows.first().map(|r| r.get::<_, Vector>(0).to_vec()))
    }

    /// Write one cached vector naming `row_writer`; with `claimant`, only while it holds a
    /// claim on the space (checked in the write's transaction).
    fn put_vector(
        &self,
        table: VectorTable,
        row: VectorRow<'_>,
        row_writer: &RowWriter,
        claimant: Option<&Writer>,
    ) -> Result<()> {
        let (table, column) = table.names();
        let sql = format!(
            "INSERT INTO {table} ({column}, space, model, vector, created_at, plugin_key, component)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT ({column}, space) DO UPDATE SET model = EXCLUDED.model,
               vector = EXCLUDED.vector, created_at = EXCLUDED.created_at,
               plugin_key = EXCLUDED.plugin_key, component = EXCLUDED.component"
        );
        self.block_on(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db(e))?;
            if let Some(w) = claimant {
                self.check_claim(&tx, row.space, w).await?;
            }
            tx.execute(
                &sql,
                &[
                    &row.key,
                    &row.space,
                    &row.model,
                    &Vector::from(row.vector.to_vec()),
                    &now(),
                    &row_writer.key,
                    &row_writer.component,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// Record the chain's answer for an image (and the image itself), in one transaction;
    /// `writer` produced it and must hold a claim on its space.
    pub fn put_entry(
        &self,
        image: &ImageMeta,
        embedding: &crate::types::Embedding,
        writer: &Writer,
    ) -> Result<()> {
        self.put_entries(
            std::slice::from_ref(&(image.clone(), embedding.clone())),
            writer,
        )
    }

    /// Record many answers by one writer in one transaction (bulk loads); `writer` must hold a
    /// claim on each of their spaces, or nothing is written.
    pub fn put_entries(
        &self,
        items: &[(ImageMeta, crate::types::Embedding)],
        writer: &Writer,
    ) -> Result<()> {
        let row_writer = RowWriter::from(writer);
        let rows: Vec<EntryRow<'_>> = items
            .iter()
            .map(|(image, embedding)| (image, embedding, &row_writer))
            .collect();
        self.write_entries(&rows, Some(writer))
    }

    /// Entries copied by `cache migrate`, each naming the writer its source row named. Not
    /// checked against claims: the source store accepted them, and its owners and writers
    /// were copied first ([`PostgresStore::import_space`]), unpinned spaces included.
    pub(crate) fn import_entries(
        &self,
        items: &[(ImageMeta, crate::types::Embedding, RowWriter)],
    ) -> Result<()> {
        let rows: Vec<EntryRow<'_>> = items.iter().map(|(i, e, w)| (i, e, w)).collect();
        self.write_entries(&rows, None)
    }

    /// A cached vector copied by `cache migrate`, naming the writer its source row named.
    pub(crate) fn import_vector(
        &self,
        table: VectorTable,
        row: VectorRow<'_>,
        row_writer: &RowWriter,
    ) -> Result<()> {
        self.put_vector(table, row, row_writer, None)
    }

    /// Write entries in one transaction; with `claimant`, only if it holds a claim on every
    /// space among them.
    fn write_entries(&self, items: &[EntryRow<'_>], claimant: Option<&Writer>) -> Result<()> {
        self.block_on(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db(e))?;
            self.write_entries_in(&tx, items, claimant).await?;
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// Write entries inside `tx`, which the caller commits (`write_entries`, and the work
    /// queue, which completes a job in the same transaction as its answer); with `claimant`,
    /// only if it holds a claim on every space among them.
    pub(crate) async fn write_entries_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        items: &[EntryRow<'_>],
        claimant: Option<&Writer>,
    ) -> Result<()> {
        {
            if let Some(w) = claimant {
                let spaces: std::collections::BTreeSet<&str> = items
                    .iter()
                    .map(|(_, e, _)| e.provenance.space.as_str())
                    .collect();
                for space in spaces {
                    self.check_claim(tx, space, w).await?;
                }
            }
            let same = tx
                .prepare_cached(
                    "SELECT embedding = $3 AND degraded = $4 FROM entries
                     WHERE image = $1 AND space = $2",
                )
                .await
                .map_err(|e| self.db(e))?;
            let delete = tx
                .prepare_cached("DELETE FROM entries WHERE image = $1 AND space = $2")
                .await
                .map_err(|e| self.db(e))?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO entries
                     (image, space, dims, embedding, provenance, degraded, created_at, plugin_key, component)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await
                .map_err(|e| self.db(e))?;
            // The last answer per (image, space) wins, as one after another would; with the
            // keys distinct, the rows' statements may interleave, so they are pipelined (sent
            // without waiting for each answer): a bulk copy is not one round trip per statement.
            let mut last = std::collections::HashMap::new();
            for (n, (image, embedding, _)) in items.iter().enumerate() {
                last.insert(
                    (image.sha256.as_str(), embedding.provenance.space.as_str()),
                    n,
                );
            }
            let mut order: Vec<usize> = last.into_values().collect();
            order.sort_unstable();
            let (txr, same, delete, insert) = (tx, &same, &delete, &insert);
            for chunk in order.chunks(256) {
                let tx = txr;
                futures::future::try_join_all(chunk.iter().map(|&n| async move {
                    let (image, embedding, writer) = items[n];
                    insert_image(tx, image).await?;
                    let p = &embedding.provenance;
                    let provenance = serde_json::to_string(p).unwrap_or_else(|_| "{}".into());
                    let vector = Vector::from(embedding.vector.clone());
                    let space = p.space.as_str();
                    let found = tx
                        .query_opt(same, &[&image.sha256, &space, &vector, &p.degraded])
                        .await?;
                    if found.is_some_and(|r| r.get::<_, bool>(0)) {
                        return Ok(());
                    }
                    // A replaced answer gets a new id, as in SQLite.
                    tx.execute(delete, &[&image.sha256, &space]).await?;
                    tx.execute(
                        insert,
                        &[
                            &image.sha256,
                            &space,
                            &(embedding.vector.len() as i32),
                            &vector,
                            &provenance,
                            &p.degraded,
                            &now(),
                            &writer.key,
                            &writer.component,
                        ],
                    )
                    .await
                    .map(drop)
                }))
                .await
                .map_err(|e| self.db(e))?;
            }
            Ok(())
        }
    }

    /// Record that `path` holds `image`.
    pub fn put_file(&self, path: &Path, image: &ImageMeta, size: u64, mtime_ns: i64) -> Result<()> {
        self.block_on(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db(e))?;
            insert_image(&tx, image).await.map_err(|e| self.db(e))?;
            tx.execute(
                "INSERT INTO files (path, sha256, size, mtime_ns, seen_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (path) DO UPDATE SET sha256 = EXCLUDED.sha256, size = EXCLUDED.size,
                   mtime_ns = EXCLUDED.mtime_ns, seen_at = EXCLUDED.seen_at",
                &[&path_key(path), &image.sha256, &(size as i64), &mtime_ns, &now()],
            )
            .await
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))
        })
    }

    /// What is known about `path`.
    pub fn file(&self, path: &Path) -> Result<Option<FileRecord>> {
        let rows = self.query(
            "SELECT sha256, size, mtime_ns FROM files WHERE path = $1",
            &[&path_key(path)],
        )?;
        Ok(rows.first().map(|r| FileRecord {
            sha256: r.get(0),
            size: r.get::<_, i64>(1) as u64,
            mtime_ns: r.get(2),
        }))
    }

    /// Record a folder given to `imbed index`.
    pub fn put_root(&self, root: &Path) -> Result<()> {
        self.execute(
            "INSERT INTO roots (path, added_at) VALUES ($1, $2) ON CONFLICT (path) DO NOTHING",
            &[&path_key(root), &now()],
        )
        .map(drop)
    }

    /// The folders `imbed index` was given, in order.
    pub fn roots(&self) -> Result<Vec<PathBuf>> {
        Ok(self
            .query("SELECT path FROM roots ORDER BY path", &[])?
            .iter()
            .map(|r| PathBuf::from(r.get::<_, String>(0)))
            .collect())
    }

    /// Paths known to hold `image`.
    pub fn paths_of(&self, image: &str) -> Result<Vec<PathBuf>> {
        Ok(self
            .query(
                "SELECT path FROM files WHERE sha256 = $1 ORDER BY path",
                &[&image],
            )?
            .iter()
            .map(|r| PathBuf::from(r.get::<_, String>(0)))
            .collect())
    }

    /// The entries of an image, in every space.
    pub fn entries_of(&self, image: &str) -> Result<Vec<Entry>> {
        Ok(self
            .query(
                "SELECT id, image, space, degraded FROM entries WHERE image = $1 ORDER BY id",
                &[&image],
            )?
            .iter()
            .map(|r| Entry {
                id: r.get(0),
                image: r.get(1),
                space: r.get(2),
                degraded: r.get(3),
            })
            .collect())
    }

    /// The stored answer for `image` in `space`.
    pub fn entry_embedding(
        &self,
        image: &str,
        space: &str,
    ) -> Result<Option<crate::types::Embedding>> {
        let rows = self.query(
            "SELECT embedding, provenance FROM entries WHERE image = $1 AND space = $2",
            &[&image, &space],
        )?;
        Ok(rows.first().and_then(|r| {
            Some(crate::types::Embedding {
                vector: r.get::<_, Vector>(0).to_vec(),
                provenance: serde_json::from_str(r.get::<_, &str>(1)).ok()?,
            })
        }))
    }

    /// Every vector in `space`.
    pub fn load_space(&self, space: &str) -> Result<SpaceVectors> {
        self.space_since(space, i64::MIN)
    }

    /// Entries in `space` with an id above `after`.
    pub fn space_since(&self, space: &str, after: i64) -> Result<SpaceVectors> {
        let rows = self.query(
            "SELECT id, image, dims, embedding FROM entries WHERE space = $1 AND id > $2 ORDER BY id",
            &[&space, &after],
        )?;
        let mut out = SpaceVectors {
            space: space.to_string(),
            dims: 0,
            ids: Vec::with_capacity(rows.len()),
            images: Vec::with_capacity(rows.len()),
            data: Vec::new(),
        };
        for row in rows {
            let id: i64 = row.get(0);
            let dims = row.get::<_, i32>(2) as usize;
            let vector: Vector = row.get(3);
            if out.dims == 0 {
                out.dims = dims;
            }
            if dims != out.dims || vector.as_slice().len() != dims {
                tracing::warn!("skipping entry {id} in space {space:?}: its vector does not have {} dimensions", out.dims);
                continue;
            }
            out.ids.push(id);
            out.images.push(row.get(1));
            out.data.extend_from_slice(vector.as_slice());
        }
        Ok(out)
    }

    /// Spaces with stored entries, largest first, with their owners and writers.
    pub fn spaces(&self) -> Result<Vec<SpaceStats>> {
        self.space_list(false)
    }

    /// Spaces with stored entries (and with `pinned`, also those with only an owner or
    /// writers), largest first, with their owners and writers.
    fn space_list(&self, pinned: bool) -> Result<Vec<SpaceStats>> {
        let mut owners = self.ownership()?;
        let mut out: Vec<SpaceStats> = self
            .query(
                "SELECT space, MAX(dims), COUNT(*), COUNT(*) FILTER (WHERE degraded) FROM entries
                 GROUP BY space ORDER BY COUNT(*) DESC, space",
                &[],
            )?
            .iter()
            .map(|r| SpaceStats {
                space: r.get(0),
                dims: r.get::<_, i32>(1) as usize,
                entries: r.get::<_, i64>(2) as u64,
                degraded: r.get::<_, i64>(3) as u64,
                owner: None,
                writers: Vec::new(),
            })
            .collect();
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

    /// Known files whose image has only degraded entries.
    pub fn degraded_files(&self, under: Option<&Path>) -> Result<Vec<PathBuf>> {
        Ok(self
            .query(
                "SELECT f.path FROM files f
                 WHERE EXISTS (SELECT 1 FROM entries e WHERE e.image = f.sha256)
                   AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.image = f.sha256 AND NOT e.degraded)
                 ORDER BY f.path",
                &[],
            )?
            .iter()
            .map(|r| PathBuf::from(r.get::<_, String>(0)))
            .filter(|p| under.is_none_or(|u| p.starts_with(u)))
            .collect())
    }

    /// No index files here: search runs in the database.
    pub fn ann_record(&self, _space: &str) -> Result<Option<(String, u64, i64)>> {
        Ok(None)
    }

    /// No index files here: nothing to record.
    pub fn put_ann_record(
        &self,
        _space: &str,
        _file: &str,
        _entries: u64,
        _max_id: i64,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether rows up to `max_id` in `space` changed (see the SQLite backend).
    pub fn space_changed_below(&self, space: &str, entries: u64, max_id: i64) -> Result<bool> {
        let count: i64 = self.query(
            "SELECT COUNT(*) FROM entries WHERE space = $1 AND id <= $2",
            &[&space, &max_id],
        )?[0]
            .get(0);
        Ok(count as u64 != entries)
    }

    fn bytes_on_disk(&self) -> Result<u64> {
        Ok(
            self.query("SELECT pg_database_size(current_database())", &[])?[0].get::<_, i64>(0)
                as u64,
        )
    }

    /// Sizes and counts.
    pub fn stats(&self) -> Result<Stats> {
        let count = |table: &str| -> Result<u64> {
            Ok(
                self.query(&format!("SELECT COUNT(*) FROM {table}"), &[])?[0].get::<_, i64>(0)
                    as u64,
            )
        };
        Ok(Stats {
            path: PathBuf::from(&self.inner.location),
            schema_version: self.schema_version()?,
            bytes_on_disk: self.bytes_on_disk()?,
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
            bytes_before: self.bytes_on_disk()?,
            ..Default::default()
        };
        if options.missing_files {
            let files: Vec<(String, i64, i64)> = self
                .query("SELECT path, size, mtime_ns FROM files", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let gone: Vec<String> = files
                .into_iter()
                .filter(|(path, size, mtime)| match file_stamp(Path::new(path)) {
                    Some((s, m)) => s as i64 != *size || m != *mtime,
                    None => true,
                })
                .map(|(p, _, _)| p)
                .collect();
            let (files, entries, images) = self.block_on(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| self.db(e))?;
                let files = tx
                    .execute("DELETE FROM files WHERE path = ANY($1)", &[&gone])
                    .await
                    .map_err(|e| self.db(e))?;
                let orphan = "SELECT sha256 FROM images i WHERE NOT EXISTS \
                              (SELECT 1 FROM files f WHERE f.sha256 = i.sha256)";
                let entries = tx
                    .execute(
                        &format!("DELETE FROM entries WHERE image IN ({orphan})"),
                        &[],
                    )
                    .await
                    .map_err(|e| self.db(e))?;
                for table in ["descriptions", "image_vectors"] {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE image IN ({orphan})"),
                        &[],
                    )
                    .await
                    .map_err(|e| self.db(e))?;
                }
                let images = tx
                    .execute(
                        &format!("DELETE FROM images WHERE sha256 IN ({orphan})"),
                        &[],
                    )
                    .await
                    .map_err(|e| self.db(e))?;
                tx.commit().await.map_err(|e| self.db(e))?;
                Ok::<_, StoreError>((files, entries, images))
            })?;
            report.files += files;
            report.entries += entries;
            report.images += images;
        }
        if let Some(writer) = &options.writer {
            self.prune_writer(&options.spaces, writer, &mut report)?;
        }
        let whole_spaces: &[String] = match options.writer {
            Some(_) => &[],
            None => &options.spaces,
        };
        if !whole_spaces.is_empty() || options.text_vectors {
            self.block_on(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| self.db(e))?;
                for space in whole_spaces {
                    report.entries += tx
                        .execute("DELETE FROM entries WHERE space = $1", &[space])
                        .await
                        .map_err(|e| self.db(e))?;
                    report.image_vectors += tx
                        .execute("DELETE FROM image_vectors WHERE space = $1", &[space])
                        .await
                        .map_err(|e| self.db(e))?;
                    report.text_vectors += tx
                        .execute("DELETE FROM text_vectors WHERE space = $1", &[space])
                        .await
                        .map_err(|e| self.db(e))?;
                    // Nothing is left of it: the next plugin to write into it owns it.
                    tx.execute("DELETE FROM space_writers WHERE space = $1", &[space])
                        .await
                        .map_err(|e| self.db(e))?;
                    if tx
                        .execute("DELETE FROM spaces WHERE space = $1", &[space])
                        .await
                        .map_err(|e| self.db(e))?
                        > 0
                    {
                        report.unpinned.push(space.clone());
                    }
                }
                if options.text_vectors {
                    report.text_vectors += tx
                        .execute("DELETE FROM text_vectors", &[])
                        .await
                        .map_err(|e| self.db(e))?;
                }
                tx.commit().await.map_err(|e| self.db(e))
            })?;
            for space in whole_spaces {
                self.drop_search_index(space)?;
            }
        }
        if report.images > 0 {
            let _ = std::fs::remove_dir_all(self.thumb_dir());
        }
        if options.vacuum {
            self.block_on(async {
                let client = self.client().await?;
                client.batch_execute("VACUUM").await.map_err(|e| self.db(e))
            })?;
        }
        report.bytes_after = self.bytes_on_disk()?;
        Ok(report)
    }
}

/// The two caches of plugin outputs: vectors of texts and direct vectors of images.
#[derive(Clone, Copy, Debug)]
pub(crate) enum VectorTable {
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

/// One cached vector to write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VectorRow<'a> {
    pub key: &'a str,
    pub space: &'a str,
    pub model: &'a str,
    pub vector: &'a [f32],
}

/// An entry to write and the writer its row names.
type EntryRow<'a> = (&'a ImageMeta, &'a crate::types::Embedding, &'a RowWriter);

async fn insert_image(
    tx: &deadpool_postgres::Transaction<'_>,
    image: &ImageMeta,
) -> std::result::Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO images (sha256, mime, width, height, bytes, first_seen)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
        &[
            &image.sha256,
            &image.mime,
            &(image.width as i32),
            &(image.height as i32),
            &(image.bytes as i64),
            &now(),
        ],
    )
    .await
    .map(drop)
}

fn path_key(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_named_without_their_password() {
        assert_eq!(
            redact("postgres://imbed:s3cret@db.example:5432/imbed"),
            "postgres://imbed:***@db.example:5432/imbed"
        );
        assert!(is_postgres_url("postgresql://h/db"));
        assert!(!is_postgres_url("/var/lib/imbed.db"));
    }
}
