//! The work queue (issue #17, part 2): jobs in the PostgreSQL cache, one per image content,
//! recorded by `imbed enqueue` (`imbed index --queue`) and done by any number of `imbed worker`
//! processes on any machines. Uses `store` (the PostgreSQL connection, the cache's records),
//! `chain` (embedding, [`crate::Imbed::backend_capacity`]) and `input`.
//!
//! The room: `job` (what a job is, the queue's status), `sql` (the `jobs` table and every
//! statement on it), `enqueue` (folders, files and URLs to jobs), `worker` (the claim loop).
//!
//! The pattern is the one graphile-worker, River, Oban and Solid Queue use: a job is claimed
//! in a short transaction (`FOR UPDATE SKIP LOCKED`) that gives it a lease and a lease token;
//! no row lock is held while the backend works; the worker renews its leases while it works;
//! the answer is written and the job completed in one transaction that checks the token and
//! the lease, so a worker that lost its lease (stalled, cut off, killed and restarted)
//! completes nothing. Time is the database's clock, never a worker's.

mod enqueue;
mod job;
mod sql;
mod worker;

pub use enqueue::{enqueue, EnqueueReport, EnqueueSource};
pub use job::{Claim, FailedJob, QueueStatus};
pub use sql::{JobQueue, Settled};
pub use worker::{run_worker, WorkerEvent, WorkerOptions, WorkerSummary};

use crate::store::StoreError;

/// What can go wrong with the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The cache is not PostgreSQL.
    #[error("the work queue needs a PostgreSQL cache, and the cache is the SQLite file {location}: set [cache] database = \"postgres://user:password@host:5432/imbed\" in the config (or IMBED_DATABASE_URL), and copy what the SQLite cache holds with `imbed cache migrate --to postgres://…`")]
    NeedsPostgres {
        /// The SQLite file.
        location: String,
    },
    /// The config turns the cache off.
    #[error("the work queue needs a PostgreSQL cache, and the config turns the cache off: set [cache] database = \"postgres://user:password@host:5432/imbed\" (or IMBED_DATABASE_URL)")]
    NoCache,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A queue task run off the async threads ended without an answer (it panicked).
    #[error("a work queue task failed: {0}; please report this")]
    Task(String),
}
