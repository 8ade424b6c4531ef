//! The PostgreSQL schema: numbered migrations, run under an advisory lock so that any number
//! of processes may start at once.

use super::*;

/// The schema version this build writes (the number of `MIGRATIONS`).
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Each migration takes the database from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the SQLite schema at its version 3, in PostgreSQL's types.
    "CREATE TABLE images (
         sha256 TEXT PRIMARY KEY,
         mime TEXT NOT NULL,
         width INTEGER NOT NULL,
         height INTEGER NOT NULL,
         bytes BIGINT NOT NULL,
         first_seen BIGINT NOT NULL
     );
     CREATE TABLE files (
         path TEXT PRIMARY KEY,
         sha256 TEXT NOT NULL,
         size BIGINT NOT NULL,
         mtime_ns BIGINT NOT NULL,
         seen_at BIGINT NOT NULL
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
         created_at BIGINT NOT NULL,
         PRIMARY KEY (image, describer, prompt)
     );
     CREATE TABLE text_vectors (
         text_sha TEXT NOT NULL,
         space TEXT NOT NULL,
         model TEXT NOT NULL,
         vector vector NOT NULL,
         created_at BIGINT NOT NULL,
         PRIMARY KEY (text_sha, space)
     );
     CREATE TABLE image_vectors (
         image TEXT NOT NULL,
         space TEXT NOT NULL,
         model TEXT NOT NULL,
         vector vector NOT NULL,
         created_at BIGINT NOT NULL,
         PRIMARY KEY (image, space)
     );
     CREATE TABLE entries (
         id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         image TEXT NOT NULL,
         space TEXT NOT NULL,
         dims INTEGER NOT NULL,
         embedding vector NOT NULL,
         provenance TEXT NOT NULL,
         degraded BOOLEAN NOT NULL,
         created_at BIGINT NOT NULL,
         UNIQUE (image, space)
     );
     CREATE INDEX entries_by_space ON entries(space, id);
     CREATE INDEX entries_by_image ON entries(image, degraded);
     CREATE TABLE space_indexes (
         space TEXT PRIMARY KEY,
         index_name TEXT NOT NULL,
         dims INTEGER NOT NULL,
         half BOOLEAN NOT NULL,
         built_at BIGINT NOT NULL
     );
     CREATE TABLE roots (
         path TEXT PRIMARY KEY,
         added_at BIGINT NOT NULL
     );",
    // 1 -> 2: space ownership, as SQLite's 3 -> 4 (see there): each space pinned to the
    // plugin that first wrote into it, every component that wrote into it listed, every
    // vector row naming its writer. Older entries are attributed by the plugin key in their
    // provenance; a space they attribute to several keys stays unpinned until the next write.
    "CREATE TABLE spaces (
         space TEXT PRIMARY KEY,
         owner_key TEXT NOT NULL,
         owner_name TEXT NOT NULL,
         first_written BIGINT NOT NULL
     );
     CREATE TABLE space_writers (
         space TEXT NOT NULL,
         plugin_key TEXT NOT NULL,
         plugin_name TEXT NOT NULL,
         component TEXT NOT NULL,
         first_seen BIGINT NOT NULL,
         last_seen BIGINT NOT NULL,
         PRIMARY KEY (space, plugin_key, component)
     );
     ALTER TABLE entries ADD COLUMN plugin_key TEXT, ADD COLUMN component TEXT;
     ALTER TABLE text_vectors ADD COLUMN plugin_key TEXT, ADD COLUMN component TEXT;
     ALTER TABLE image_vectors ADD COLUMN plugin_key TEXT, ADD COLUMN component TEXT;
     UPDATE entries SET plugin_key = provenance::jsonb #>> '{plugin,key}';
     INSERT INTO space_writers (space, plugin_key, plugin_name, component, first_seen, last_seen)
         SELECT space, plugin_key,
                COALESCE(MIN(provenance::jsonb #>> '{plugin,name}'), plugin_key), '',
                MIN(created_at), MAX(created_at)
         FROM entries WHERE plugin_key IS NOT NULL AND plugin_key <> ''
         GROUP BY space, plugin_key;
     INSERT INTO spaces (space, owner_key, owner_name, first_written)
         SELECT w.space, MIN(w.plugin_key), MIN(w.plugin_name), MIN(w.first_seen)
         FROM space_writers w GROUP BY w.space
         HAVING COUNT(DISTINCT w.plugin_key) = 1
            AND NOT EXISTS (SELECT 1 FROM entries e
                            WHERE e.space = w.space AND e.plugin_key IS NULL);",
    // 2 -> 3: the work queue's `jobs` table (issue #17, part 2; its statements are in
    // `queue/sql.rs`). One row per image content (`sha256` is unique: enqueueing again changes
    // nothing). Leases and retry times are the database's `now()`, so workers' clocks never
    // matter. The partial indexes keep the claim's scan to the jobs that can be claimed.
    "CREATE TABLE jobs (
         id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         sha256 TEXT NOT NULL UNIQUE,
         locator TEXT NOT NULL,
         size BIGINT NOT NULL,
         state TEXT NOT NULL DEFAULT 'queued'
             CHECK (state IN ('queued', 'running', 'done', 'failed')),
         attempts INTEGER NOT NULL DEFAULT 0,
         last_error TEXT,
         worker TEXT,
         lease_token TEXT,
         lease_until TIMESTAMPTZ,
         run_after TIMESTAMPTZ NOT NULL DEFAULT now(),
         enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
         started_at TIMESTAMPTZ,
         finished_at TIMESTAMPTZ,
         degraded BOOLEAN,
         space TEXT
     );
     CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
     CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
     CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state = 'done';",
];

/// The key of the session advisory lock migrations run under ("imbed" in ASCII).
const MIGRATION_LOCK: i64 = 452_806_731_108;

impl PostgresStore {
    pub(super) async fn migrate(
        &self,
        client: &mut deadpool_postgres::Object,
        upto: i64,
    ) -> Result<()> {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.db(e))?;
        let result = self.migrate_locked(client, upto).await;
        // Always let go, also after a failed step: the lock belongs to a pooled session.
        let unlock = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.db(e));
        result.and(unlock.map(drop))
    }

    async fn migrate_locked(
        &self,
        client: &mut deadpool_postgres::Object,
        upto: i64,
    ) -> Result<()> {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version BIGINT PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(|e| self.db(e))?;
        loop {
            let found: i64 = client
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )
                .await
                .map_err(|e| self.db(e))?
                .get(0);
            if found > PG_SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    path: PathBuf::from(&self.inner.location),
                    found,
                    supported: PG_SCHEMA_VERSION,
                });
            }
            let Some(sql) = MIGRATIONS.get(found as usize).filter(|_| found < upto) else {
                return Ok(());
            };
            let tx = client.transaction().await.map_err(|e| self.db(e))?;
            tx.batch_execute(sql).await.map_err(|e| self.db(e))?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&(found + 1)],
            )
            .await
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))?;
            tracing::debug!(
                "cache database {} migrated to schema {}",
                self.inner.location,
                found + 1
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_is_created_once_and_the_queue_after_the_cache() {
        let created_by = |table: &str| {
            let create = format!("CREATE TABLE {table} (");
            let found: Vec<usize> = (0..MIGRATIONS.len())
                .filter(|&i| MIGRATIONS[i].contains(&create))
                .collect();
            assert_eq!(found.len(), 1, "{table} is created by migrations {found:?}");
            found[0]
        };
        assert_eq!(created_by("entries"), 0);
        assert_eq!(created_by("spaces"), 1);
        assert!(created_by("jobs") > created_by("spaces"));
    }
}
