//! The `jobs` table and every statement on it. Each method is one short transaction (or one
//! statement) and blocks its thread, like the cache's; async code goes through
//! [`JobQueue::run`].

use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::job::{Claim, FailedJob, QueueStatus};
use super::QueueError;
use crate::store::{Cache, ImageMeta, PostgresStore, RowWriter, StoreError, Writer};
use crate::types::Embedding;

type Result<T> = std::result::Result<T, QueueError>;

/// What became of a job a worker gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Back in the queue (for another attempt, or without spending one).
    Queued,
    /// Parked as failed: it used its last attempt.
    Failed,
    /// Done.
    Done,
    /// Nothing changed: the worker no longer held the lease (it ran out and another worker
    /// may have the job).
    LeaseLost,
}

/// The work queue in a PostgreSQL cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JobQueue {
    cache: Cache,
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl JobQueue {
    /// The queue of `cache`, which must be PostgreSQL (its schema, `jobs` included, is brought
    /// up to date when it is opened).
    pub fn open(cache: &Cache) -> Result<JobQueue> {
        match cache.postgres() {
            Some(_) => Ok(JobQueue {
                cache: cache.clone(),
            }),
            None => Err(QueueError::NeedsPostgres {
                location: cache.location(),
            }),
        }
    }

    /// The cache the queue lives in.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn pg(&self) -> &PostgresStore {
        self.cache
            .postgres()
            .expect("a JobQueue is made only over PostgreSQL")
    }

    /// Run `op` on the queue from async code, off the async threads.
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&JobQueue) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let queue = self.clone();
        tokio::task::spawn_blocking(move || op(&queue))
            .await
            .map_err(|e| QueueError::Task(e.to_string()))?
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>> {
        let pg = self.pg();
        Ok(pg.with_client(async |c| {
            let stmt = c.prepare_cached(sql).await.map_err(|e| pg.db(e))?;
            c.query(&stmt, params).await.map_err(|e| pg.db(e))
        })?)
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let pg = self.pg();
        Ok(pg.with_client(async |c| {
            let stmt = c.prepare_cached(sql).await.map_err(|e| pg.db(e))?;
            c.execute(&stmt, params).await.map_err(|e| pg.db(e))
        })?)
    }

    /// Record jobs, `(locator, sha256, size)` each, in one statement. A content that already
    /// has a job keeps it (whatever its state); with `requeue_degraded`, a done job whose answer
    /// came from a fallback step is queued again. Returns how many were queued.
    pub fn enqueue(&self, jobs: &[(String, String, u64)], requeue_degraded: bool) -> Result<u64> {
        let locators: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
        let hashes: Vec<&str> = jobs.iter().map(|j| j.1.as_str()).collect();
        let sizes: Vec<i64> = jobs.iter().map(|j| j.2 as i64).collect();
        // The same content twice in one batch would make ON CONFLICT touch a row twice.
        let insert = "INSERT INTO jobs (locator, sha256, size)
             SELECT DISTINCT ON (h) l, h, s FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(l, h, s)
             ON CONFLICT (sha256) DO ";
        let sql = if requeue_degraded {
            format!(
                "{insert} UPDATE SET state = 'queued', attempts = 0, last_error = NULL,
                   run_after = now(), finished_at = NULL, locator = EXCLUDED.locator
                 WHERE jobs.state = 'done' AND jobs.degraded"
            )
        } else {
            format!("{insert} NOTHING")
        };
        self.execute(&sql, &[&locators, &hashes, &sizes])
    }

    /// Claim up to `n` jobs for `worker`, each under a lease of `lease` and a fresh token, in
    /// one short transaction that holds no lock past its end. Jobs whose lease ran out are
    /// claimable again; those that have used `max_attempts` are parked as failed first.
    pub fn claim(
        &self,
        worker: &str,
        n: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<Claim>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.execute(
            "UPDATE jobs SET state = 'failed', finished_at = now(), worker = NULL,
               lease_token = NULL, lease_until = NULL,
               last_error = 'its worker stopped answering while holding it (the lease ran out) on its last allowed attempt'
                 || COALESCE('; the error before: ' || last_error, '')
             WHERE state = 'running' AND lease_until < now() AND attempts >= $1",
            &[&(max_attempts as i32)],
        )?;
        let rows = self.query(
            "WITH picked AS (
                 SELECT id FROM jobs
                 WHERE (state = 'queued' AND run_after <= now())
                    OR (state = 'running' AND lease_until < now())
                 ORDER BY id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE jobs j SET state = 'running', worker = $2,
               lease_token = gen_random_uuid()::text,
               lease_until = now() + make_interval(secs => $3),
               attempts = j.attempts + 1, started_at = now()
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.locator, j.sha256, j.size, j.lease_token, j.attempts",
            &[&(n as i64), &worker, &seconds(lease)],
        )?;
        Ok(rows
            .iter()
            .map(|r| Claim {
                id: r.get(0),
                locator: r.get(1),
                sha256: r.get(2),
                size: r.get::<_, i64>(3) as u64,
                token: r.get(4),
                attempts: r.get::<_, i32>(5) as u32,
            })
            .collect())
    }

    /// Renew the leases of `claims` for another `lease`; returns the ids still held (a job
    /// missing from the answer was lost: its lease ran out first).
    pub fn heartbeat(&self, claims: &[Claim], lease: Duration) -> Result<Vec<i64>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<&str> = claims.iter().map(|c| c.token.as_str()).collect();
        Ok(self
            .query(
                "UPDATE jobs SET lease_until = now() + make_interval(secs => $2)
                 WHERE lease_token = ANY($1) AND state = 'running' AND lease_until > now()
                 RETURNING id",
                &[&tokens, &seconds(lease)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Write the answer for `claim` (by `writer`, which must hold a claim on its space) and
    /// mark it done, in one transaction that commits only while the claim's lease holds: a
    /// late completion changes nothing.
    pub fn complete(
        &self,
        claim: &Claim,
        image: &ImageMeta,
        embedding: &Embedding,
        writer: &Writer,
    ) -> Result<Settled> {
        let pg = self.pg();
        let row_writer = RowWriter::from(writer);
        let items = [(image, embedding, &row_writer)];
        let p = &embedding.provenance;
        let space = p.space.to_string();
        Ok(pg.with_client(async |c| {
            let tx = c.transaction().await.map_err(|e| pg.db(e))?;
            // The row lock makes a reclaim by another worker wait for this transaction, and
            // its claim then finds the job done.
            let held = tx
                .query_opt(
                    "SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'
                       AND lease_until > now() FOR UPDATE",
                    &[&claim.id, &claim.token],
                )
                .await
                .map_err(|e| pg.db(e))?;
            if held.is_none() {
                // Dropping the transaction rolls it back.
                return Ok::<_, StoreError>(Settled::LeaseLost);
            }
            pg.write_entries_in(&tx, &items, Some(writer)).await?;
            tx.execute(
                "UPDATE jobs SET state = 'done', finished_at = now(), lease_token = NULL,
                   lease_until = NULL, last_error = NULL, degraded = $2, space = $3
                 WHERE id = $1",
                &[&claim.id, &p.degraded, &space],
            )
            .await
            .map_err(|e| pg.db(e))?;
            tx.commit().await.map_err(|e| pg.db(e))?;
            Ok(Settled::Done)
        })?)
    }

    /// Give `claim` back after a failed attempt, keeping `error`: queued again after
    /// `retry_delay` times two to the power of the attempts before, or parked as failed when
    /// it has used `max_attempts`.
    pub fn fail(
        &self,
        claim: &Claim,
        error: &str,
        max_attempts: u32,
        retry_delay: Duration,
    ) -> Result<Settled> {
        let rows = self.query(
            "UPDATE jobs SET
               state = CASE WHEN attempts >= $3 THEN 'failed' ELSE 'queued' END,
               finished_at = CASE WHEN attempts >= $3 THEN now() END,
               run_after = now() + make_interval(secs => $4 * power(2, LEAST(attempts - 1, 16))),
               last_error = $5, lease_token = NULL, lease_until = NULL
             WHERE id = $1 AND lease_token = $2 AND state = 'running'
             RETURNING state",
            &[
                &claim.id,
                &claim.token,
                &(max_attempts as i32),
                &seconds(retry_delay),
                &error,
            ],
        )?;
        Ok(match rows.first().map(|r| r.get::<_, &str>(0)) {
            Some("failed") => Settled::Failed,
            Some(_) => Settled::Queued,
            None => Settled::LeaseLost,
        })
    }

    /// Give `claim` back without spending its attempt (the backend was unavailable, or the
    /// worker is stopping), keeping `why`.
    pub fn release(&self, claim: &Claim, why: &str) -> Result<Settled> {
        let n = self.execute(
            "UPDATE jobs SET state = 'queued', attempts = GREATEST(attempts - 1, 0),
               last_error = $3, lease_token = NULL, lease_until = NULL, run_after = now()
             WHERE id = $1 AND lease_token = $2 AND state = 'running'",
            &[&claim.id, &claim.token, &why],
        )?;
        Ok(if n == 1 {
            Settled::Queued
        } else {
            Settled::LeaseLost
        })
    }

    /// Queue failed jobs again with their attempts reset: all of them, or those in `ids`.
    /// Returns how many.
    pub fn retry(&self, ids: Option<&[i64]>) -> Result<u64> {
        let requeue = "UPDATE jobs SET state = 'queued', attempts = 0, run_after = now(),
               finished_at = NULL WHERE state = 'failed'";
        match ids {
            None => self.execute(requeue, &[]),
            Some(ids) => self.execute(&format!("{requeue} AND id = ANY($1)"), &[&ids]),
        }
    }

    /// Whether any job is queued or held (a lease that ran out included): `false` once
    /// everything is done or failed.
    pub fn has_work(&self) -> Result<bool> {
        Ok(self.query(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued', 'running'))",
            &[],
        )?[0]
            .get(0))
    }

    /// Counts, rate and ETA for the whole queue, and the failed jobs.
    pub fn status(&self) -> Result<QueueStatus> {
        let row = &self.query(
            "SELECT
               count(*) FILTER (WHERE state = 'queued'
                 OR (state = 'running' AND lease_until <= now())),
               count(*) FILTER (WHERE state = 'running' AND lease_until > now()),
               count(*) FILTER (WHERE state = 'done'),
               count(*) FILTER (WHERE state = 'done' AND degraded),
               count(*) FILTER (WHERE state = 'failed'),
               count(*),
               count(DISTINCT worker) FILTER (WHERE state = 'running' AND lease_until > now()),
               count(*) FILTER (WHERE state = 'done' AND finished_at > now() - interval '10 minutes'),
               EXTRACT(EPOCH FROM now() - min(started_at) FILTER (WHERE state = 'done'
                 AND finished_at > now() - interval '10 minutes'))::float8
             FROM jobs",
            &[],
        )?[0];
        let n = |i: usize| row.get::<_, i64>(i) as u64;
        let mut status = QueueStatus {
            queued: n(0),
            in_flight: n(1),
            done: n(2),
            degraded: n(3),
            failed: n(4),
            total: n(5),
            workers: n(6),
            ..QueueStatus::default()
        };
        let recent = n(7);
        let span: Option<f64> = row.get(8);
        if let Some(span) = span.filter(|s| *s > 0.0 && recent > 0) {
            let rate = recent as f64 / span;
            status.rate_per_second = Some(rate);
            status.eta_seconds = Some((status.queued + status.in_flight) as f64 / rate);
        }
        status.failed_jobs = self
            .query(
                "SELECT id, locator, attempts, last_error FROM jobs WHERE state = 'failed'
                 ORDER BY id LIMIT 100",
                &[],
            )?
            .iter()
            .map(|r| FailedJob {
                id: r.get(0),
                locator: r.get(1),
                attempts: r.get::<_, i32>(2) as u32,
                last_error: r.get(3),
            })
            .collect();
        Ok(status)
    }
}
