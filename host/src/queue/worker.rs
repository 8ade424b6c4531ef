//! `imbed worker`: claim as many jobs as the chain's first step can start, embed each, and
//! settle it (done, another attempt, parked, or back without spending an attempt), renewing
//! the leases while the work goes on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use super::job::Claim;
use super::sql::{JobQueue, Settled};
use super::QueueError;
use crate::chain::Imbed;
use crate::error::Error;
use crate::input::ImageSource;
use crate::store::ImageMeta;
use crate::types::FailureKind;

/// How a worker runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Names the worker in the `jobs` table (`host:pid` by default in the CLI).
    pub name: String,
    /// How long a claim holds without a heartbeat; heartbeats come three times per lease.
    pub lease: Duration,
    /// Attempts before a job is parked as failed.
    pub max_attempts: u32,
    /// The wait before a failed job's second attempt; it doubles with each attempt after.
    pub retry_delay: Duration,
    /// Jobs held at once, at most (the backend's free slots may allow fewer).
    pub jobs: usize,
    /// How long to wait when there is nothing to claim, or the backend is down.
    pub poll: Duration,
    /// Stop when no job is queued or held by any worker (rather than wait for more).
    pub until_empty: bool,
}

impl WorkerOptions {
    /// A worker named `name` with the defaults: a 60 s lease, 3 attempts, 10 s before a retry,
    /// 4 jobs at once, a 1 s poll, running until stopped.
    pub fn new(name: impl Into<String>) -> Self {
        WorkerOptions {
            name: name.into(),
            lease: Duration::from_secs(60),
            max_attempts: 3,
            retry_delay: Duration::from_secs(10),
            jobs: 4,
            poll: Duration::from_secs(1),
            until_empty: false,
        }
    }

    /// Set the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Set the attempts before a job is parked.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Set the first retry's wait.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Set the jobs held at once.
    pub fn jobs(mut self, n: usize) -> Self {
        self.jobs = n.max(1);
        self
    }

    /// Set the idle wait.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// Stop once the queue is empty.
    pub fn until_empty(mut self, yes: bool) -> Self {
        self.until_empty = yes;
        self
    }
}

/// What a worker did with one job, or how its backend changed.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WorkerEvent {
    /// The answer is in the cache and the job done.
    Done {
        /// The job.
        id: i64,
        /// Its path or URL.
        locator: String,
        /// The answer's space.
        space: String,
        /// A fallback step answered (as `imbed index` does, the answer is kept; `imbed index
        /// --queue --upgrade` queues it again).
        degraded: bool,
    },
    /// The attempt failed; the job is queued for another or parked as failed.
    Failed {
        /// The job.
        id: i64,
        /// Its path or URL.
        locator: String,
        /// Why.
        error: String,
        /// Attempts spent.
        attempts: u32,
        /// Whether that was its last.
        parked: bool,
    },
    /// Given back without spending an attempt: the backend was unavailable, or the worker
    /// stopped before finishing it.
    Released {
        /// The job.
        id: i64,
        /// Its path or URL.
        locator: String,
        /// Why.
        why: String,
    },
    /// Its lease ran out before the work finished: the work was dropped and nothing written;
    /// another worker has (or will have) the job.
    LeaseLost {
        /// The job.
        id: i64,
        /// Its path or URL.
        locator: String,
    },
    /// The backend stopped answering: no more claims until a health probe succeeds.
    BackendDown,
    /// The backend answers (again): claiming.
    BackendUp,
    /// The database could not be reached; the worker tries again.
    DatabaseError {
        /// What failed.
        message: String,
    },
}

/// Totals of a worker's run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Jobs done.
    pub done: u64,
    /// Of those, answered by a fallback step.
    pub degraded: u64,
    /// Attempts that failed (the job queued again or parked).
    pub failed_attempts: u64,
    /// Jobs parked as failed.
    pub parked: u64,
    /// Jobs given back without spending an attempt.
    pub released: u64,
    /// Jobs whose lease ran out while this worker had them.
    pub lost: u64,
}

impl WorkerSummary {
    fn add(&mut self, event: &WorkerEvent) {
        match event {
            WorkerEvent::Done { degraded, .. } => {
                self.done += 1;
                self.degraded += u64::from(*degraded);
            }
            WorkerEvent::Failed { parked, .. } => {
                self.failed_attempts += 1;
                self.parked += u64::from(*parked);
            }
            WorkerEvent::Released { .. } => self.released += 1,
            WorkerEvent::LeaseLost { .. } => self.lost += 1,
            _ => {}
        }
    }
}

/// Why one attempt did not give an answer.
enum Miss {
    /// Counts as an attempt.
    Attempt(String),
    /// The backend was unavailable: the job goes back without spending one.
    Unavailable(String),
}

/// Run a worker until `stop` says so (or, with `until_empty`, until the queue is empty). `stop`
/// counts stop requests: at the first the worker claims nothing more and finishes what it
/// holds; at the second it drops the work in hand and gives those jobs back. Each job settled
/// and each change of the backend's state is passed to `on_event`.
pub async fn run_worker(
    imbed: Imbed,
    queue: JobQueue,
    options: WorkerOptions,
    mut stop: watch::Receiver<u32>,
    mut on_event: impl FnMut(&WorkerEvent),
) -> Result<WorkerSummary, QueueError> {
    let mut summary = WorkerSummary::default();
    let mut emit = |event: WorkerEvent, summary: &mut WorkerSummary| {
        summary.add(&event);
        on_event(&event);
    };
    let held: Arc<Mutex<HashMap<i64, Claim>>> = Arc::default();
    let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<Vec<i64>>();
    let heartbeat = tokio::spawn(heartbeats(
        queue.clone(),
        held.clone(),
        options.lease,
        lost_tx,
    ));
    let mut tasks: JoinSet<(Claim, WorkerEvent)> = JoinSet::new();
    let mut aborts: HashMap<i64, AbortHandle> = HashMap::new();
    let mut by_task: HashMap<tokio::task::Id, i64> = HashMap::new();
    // Jobs claimed that have not reached the backend yet (reading their image): the backend's
    // free slots do not count them, so the next claim leaves room for them.
    let pending = Arc::new(AtomicUsize::new(0));
    let mut stop_open = true;
    let mut was_up: Option<bool> = None;
    let mut down_at_start = 0u32;
    loop {
        let stops = *stop.borrow();
        if stops >= 2 {
            break;
        }
        if stops == 0 {
            let capacity = imbed.backend_capacity();
            match (capacity.up, was_up) {
                (true, Some(true)) | (false, Some(false)) => {}
                (true, _) => {
                    was_up = Some(true);
                    emit(WorkerEvent::BackendUp, &mut summary);
                }
                (false, Some(true)) => {
                    was_up = Some(false);
                    emit(WorkerEvent::BackendDown, &mut summary);
                }
                (false, None) => {
                    // At the start the first probe is still under way: say "down" once it
                    // has answered so.
                    down_at_start += 1;
                    if down_at_start > 2 {
                        was_up = Some(false);
                        emit(WorkerEvent::BackendDown, &mut summary);
                    }
                }
            }
            let room = options.jobs.saturating_sub(tasks.len());
            let n = if capacity.up {
                let free = capacity
                    .free_slots
                    .saturating_sub(pending.load(Ordering::Acquire));
                free.min(room)
            } else {
                0
            };
            let mut claimed = 0;
            if n > 0 {
                let (name, lease, max) =
                    (options.name.clone(), options.lease, options.max_attempts);
                match queue.run(move |q| q.claim(&name, n, lease, max)).await {
                    Ok(claims) => {
                        claimed = claims.len();
                        for claim in claims {
                            held.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(claim.id, claim.clone());
                            let (imbed, queue, options) =
                                (imbed.clone(), queue.clone(), options.clone());
                            let id = claim.id;
                            let reading = Pending::new(&pending);
                            let handle = tasks.spawn(async move {
                                let event = work(&imbed, &queue, &claim, &options, reading).await;
                                (claim, event)
                            });
                            by_task.insert(handle.id(), id);
                            aborts.insert(id, handle);
                        }
                    }
                    Err(e) => emit(
                        WorkerEvent::DatabaseError {
                            message: e.to_string(),
                        },
                        &mut summary,
                    ),
                }
            }
            if options.until_empty && claimed == 0 && tasks.is_empty() && capacity.up {
                match queue.run(|q| q.has_work()).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => emit(
                        WorkerEvent::DatabaseError {
                            message: e.to_string(),
                        },
                        &mut summary,
                    ),
                }
            }
            if claimed > 0 && claimed == n {
                // There may be more to claim right away.
                continue;
            }
        } else if tasks.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => match joined {
                Ok((task, (claim, event))) => {
                    by_task.remove(&task);
                    held.lock().unwrap_or_else(|p| p.into_inner()).remove(&claim.id);
                    // Not ours any more when the heartbeat already reported its lease lost.
                    if aborts.remove(&claim.id).is_some() {
                        emit(event, &mut summary);
                    }
                }
                Err(e) => {
                    let id = by_task.remove(&e.id());
                    let claim =
                        id.and_then(|id| held.lock().unwrap_or_else(|p| p.into_inner()).remove(&id));
                    // A job whose work panicked would otherwise be renewed by the heartbeat for
                    // as long as the worker lives: count it as a failed attempt.
                    if let (Some(claim), true) = (claim, e.is_panic()) {
                        aborts.remove(&claim.id);
                        let error = "the worker's task for it panicked; please report this";
                        let (c, max, delay) =
                            (claim.clone(), options.max_attempts, options.retry_delay);
                        let event = match queue.run(move |q| q.fail(&c, error, max, delay)).await {
                            Ok(settled) => WorkerEvent::Failed {
                                id: claim.id,
                                locator: claim.locator,
                                error: error.into(),
                                attempts: claim.attempts,
                                parked: settled == Settled::Failed,
                            },
                            Err(e) => WorkerEvent::DatabaseError { message: e.to_string() },
                        };
                        emit(event, &mut summary);
                    }
                }
            },
            Some(lost) = lost_rx.recv() => {
                for id in lost {
                    // A task that finished settled its job itself (the heartbeat may have missed
                    // it by a moment): its own event says how.
                    if aborts.get(&id).is_none_or(|h| h.is_finished()) {
                        continue;
                    }
                    let claim = held.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    if let (Some(claim), Some(handle)) = (claim, aborts.remove(&id)) {
                        handle.abort();
                        emit(WorkerEvent::LeaseLost { id, locator: claim.locator }, &mut summary);
                    }
                }
            }
            _ = tokio::time::sleep(options.poll) => {}
            changed = stop.changed(), if stop_open => {
                // Whoever could ask for a stop is gone: nobody will.
                stop_open = changed.is_ok();
            }
        }
    }
    // A second stop: drop the work in hand and give its jobs back for another worker.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let left: Vec<Claim> = held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, c)| c)
        .collect();
    heartbeat.abort();
    for claim in left {
        let c = claim.clone();
        let why = "the worker stopped before finishing it";
        match queue.run(move |q| q.release(&c, why)).await {
            Ok(Settled::Queued) => emit(
                WorkerEvent::Released {
                    id: claim.id,
                    locator: claim.locator,
                    why: why.into(),
                },
                &mut summary,
            ),
            Ok(_) => {}
            Err(e) => emit(
                WorkerEvent::DatabaseError {
                    message: e.to_string(),
                },
                &mut summary,
            ),
        }
    }
    Ok(summary)
}

/// Renew the leases of the held jobs three times per lease; report the ids whose lease was
/// lost.
async fn heartbeats(
    queue: JobQueue,
    held: Arc<Mutex<HashMap<i64, Claim>>>,
    lease: Duration,
    lost: mpsc::UnboundedSender<Vec<i64>>,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let claims: Vec<Claim> = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        if claims.is_empty() {
            continue;
        }
        let asked = claims.clone();
        match queue.run(move |q| q.heartbeat(&asked, lease)).await {
            Ok(kept) => {
                let gone: Vec<i64> = claims
                    .iter()
                    .map(|c| c.id)
                    .filter(|id| !kept.contains(id))
                    .collect();
                // A job settled since the snapshot is gone too; the loop ignores ids it no
                // longer holds.
                if !gone.is_empty() && lost.send(gone).is_err() {
                    return;
                }
            }
            // The database is away (restarting?): try again at the next tick; leases last
            // three ticks.
            Err(e) => tracing::warn!("work queue heartbeat: {e}"),
        }
    }
}

/// Counts a job as claimed but not at the backend yet, until dropped.
struct Pending(Arc<AtomicUsize>);

impl Pending {
    fn new(count: &Arc<AtomicUsize>) -> Pending {
        count.fetch_add(1, Ordering::AcqRel);
        Pending(count.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One job: read it, check its content, embed it, settle it.
async fn work(
    imbed: &Imbed,
    queue: &JobQueue,
    claim: &Claim,
    options: &WorkerOptions,
    reading: Pending,
) -> WorkerEvent {
    // Recorded as written by the plugin that answered (it claimed the space as it did).
    let answer = attempt(imbed, claim, reading)
        .await
        .and_then(
            |(meta, embedding)| match imbed.writer_of_answer(&embedding) {
                Some(writer) => Ok((meta, embedding, writer)),
                None => Err(Miss::Attempt(format!(
                    "the plugin {:?} that answered is no longer loaded",
                    embedding.provenance.plugin.key
                ))),
            },
        );
    let (id, locator) = (claim.id, claim.locator.clone());
    let c = claim.clone();
    let settled = match answer {
        Ok((meta, embedding, writer)) => {
            let (space, degraded) = (
                embedding.provenance.space.to_string(),
                embedding.provenance.degraded,
            );
            settle(queue, options.lease, move |q| {
                q.complete(&c, &meta, &embedding, &writer)
            })
            .await
            .map(|s| {
                (
                    s,
                    WorkerEvent::Done {
                        id,
                        locator: locator.clone(),
                        space,
                        degraded,
                    },
                )
            })
        }
        Err(Miss::Unavailable(why)) => {
            let reason = why.clone();
            settle(queue, options.lease, move |q| q.release(&c, &reason))
                .await
                .map(|s| {
                    (
                        s,
                        WorkerEvent::Released {
                            id,
                            locator: locator.clone(),
                            why,
                        },
                    )
                })
        }
        Err(Miss::Attempt(error)) => {
            let (max, delay, message) = (options.max_attempts, options.retry_delay, error.clone());
            settle(queue, options.lease, move |q| {
                q.fail(&c, &message, max, delay)
            })
            .await
            .map(|s| {
                (
                    s,
                    WorkerEvent::Failed {
                        id,
                        locator: locator.clone(),
                        error,
                        attempts: claim.attempts,
                        parked: s == Settled::Failed,
                    },
                )
            })
        }
    };
    match settled {
        Ok((Settled::LeaseLost, _)) => WorkerEvent::LeaseLost { id, locator },
        Ok((_, event)) => event,
        // Nothing was written, for as long as a lease lasts: the lease runs out and another
        // worker takes the job.
        Err(e) => WorkerEvent::DatabaseError {
            message: format!("job {id} ({locator}) could not be settled: {e}"),
        },
    }
}

/// Settle a job with `op`, trying again while the database cannot be reached (restarting,
/// failing over), for up to one lease: the work is in hand, and giving up would leave the job
/// to be done again once its lease ran out. Each try checks the lease in its own transaction,
/// so one that comes too late changes nothing.
async fn settle(
    queue: &JobQueue,
    lease: Duration,
    op: impl Fn(&JobQueue) -> Result<Settled, QueueError> + Clone + Send + 'static,
) -> Result<Settled, QueueError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let once = op.clone();
        match queue.run(move |q| once(q)).await {
            Err(QueueError::Store(e))
                if e.is_unavailable() && started.elapsed() + pause < lease =>
            {
                tracing::warn!("work queue: settling a job: {e}; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Read the job's image, check it is the content enqueued, and walk the chain.
async fn attempt(
    imbed: &Imbed,
    claim: &Claim,
    reading: Pending,
) -> Result<(ImageMeta, crate::Embedding), Miss> {
    let source = if claim.locator.starts_with("http://") || claim.locator.starts_with("https://") {
        ImageSource::Url(claim.locator.clone())
    } else {
        ImageSource::Path(claim.locator.clone().into())
    };
    let image = imbed
        .load_image(&source)
        .await
        .map_err(|e| Miss::Attempt(e.to_string()))?;
    if image.sha256 != claim.sha256 {
        return Err(Miss::Attempt(format!(
            "{} changed since it was enqueued: its content's SHA-256 is {}, the job's {}; enqueue it again to embed what it holds now",
            claim.locator, image.sha256, claim.sha256
        )));
    }
    drop(reading);
    match imbed.embed_unrecorded(&image).await {
        Ok(embedding) => Ok((ImageMeta::of(&image), embedding)),
        Err(Error::Exhausted { attempts })
            if attempts.iter().any(|a| a.kind == FailureKind::Unavailable) =>
        {
            Err(Miss::Unavailable(Error::Exhausted { attempts }.to_string()))
        }
        Err(e) => Err(Miss::Attempt(e.to_string())),
    }
}
