//! `imbed enqueue` (and `imbed index --queue`), `imbed worker`, `imbed queue status|retry`: the
//! work queue in a PostgreSQL cache.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use imbed::queue::{
    enqueue as enqueue_sources, run_worker, EnqueueSource, JobQueue, QueueError, QueueStatus,
    WorkerEvent, WorkerOptions,
};
use imbed::{Config, Imbed, ImbedOptions};
use serde_json::json;

use super::{collection, exit, Usage};

/// `imbed queue ...`.
#[derive(Subcommand)]
pub enum QueueCommand {
    /// Jobs done, in flight, queued and failed, the rate and the ETA, for every worker at
    /// once; and the failed jobs with their last error.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue failed jobs again, with their attempts reset: all of them, or those given.
    Retry {
        /// Job ids (from `imbed queue status`); none: every failed job.
        ids: Vec<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `imbed worker`'s settings.
#[derive(Args)]
pub struct WorkerArgs {
    /// Jobs held at once, at most (default: what the chain's first step can run at once, its
    /// instances or its endpoints' concurrency); the worker also claims no more than it has free.
    #[arg(long)]
    jobs: Option<usize>,
    /// How long a claim holds without a heartbeat (e.g. 60s, 2m, 500ms); another worker takes
    /// the job after that if this one stops answering.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    lease: Duration,
    /// Attempts before a job is parked as failed (`imbed queue retry` queues it again).
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Wait before a failed job's next attempt; it doubles with each attempt.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    retry_delay: Duration,
    /// Wait between looks at an empty queue, or at a backend that is down.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll: Duration,
    /// Exit once no job is queued or held by any worker, rather than wait for more.
    #[arg(long)]
    until_empty: bool,
    /// The worker's name in the queue (default: HOST:PID).
    #[arg(long)]
    name: Option<String>,
    /// Serve Prometheus metrics (the queue's gauges and this worker's counters) on this
    /// address, e.g. 127.0.0.1:9187.
    #[arg(long)]
    metrics: Option<String>,
    /// Print one JSON line per job settled (and per backend change).
    #[arg(long)]
    json: bool,
}

/// `30s`, `2m`, `500ms`, `1h`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write it as 30s, 2m, 500ms or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// The queue in the configured cache, or the error saying it needs PostgreSQL.
fn open_queue(config: &Config) -> anyhow::Result<JobQueue> {
    match collection::store_location(config) {
        None => Err(QueueError::NoCache.into()),
        Some(imbed::store::Location::Sqlite(path)) => Err(QueueError::NeedsPostgres {
            location: path.display().to_string(),
        }
        .into()),
        Some(location) => {
            let cache = imbed::store::Cache::open_location(&location)?;
            Ok(JobQueue::open(&cache)?)
        }
    }
}

async fn imbed_over(config: Config, queue: &JobQueue) -> anyhow::Result<Imbed> {
    Ok(Imbed::with_options(config, ImbedOptions::default().store(queue.cache().clone())).await?)
}

/// `imbed enqueue PATHS|URLS` and `imbed index PATHS --queue`.
pub async fn enqueue(
    config: Config,
    inputs: Vec<String>,
    jobs: Option<usize>,
    upgrade: bool,
    json_out: bool,
) -> anyhow::Result<u8> {
    if inputs.is_empty() && !upgrade {
        return Err(Usage::NothingToIndex.into());
    }
    let queue = open_queue(&config)?;
    let imbed = imbed_over(config, &queue).await?;
    let inputs = if inputs.is_empty() {
        // --upgrade alone: every known file whose content has only degraded answers.
        let files = queue.cache().run(|s| s.degraded_files(None)).await?;
        files.iter().map(|p| p.display().to_string()).collect()
    } else {
        inputs
    };
    let sources = inputs
        .into_iter()
        .map(|i| {
            if i.starts_with("http://") || i.starts_with("https://") {
                EnqueueSource::Url(i)
            } else {
                EnqueueSource::Path(PathBuf::from(i))
            }
        })
        .collect();
    let jobs = jobs.unwrap_or(8);
    let report = enqueue_sources(&imbed, &queue, sources, upgrade, jobs).await?;
    for (what, why) in &report.unreadable {
        eprintln!("imbed: skipping {what}: {why}");
    }
    if json_out {
        println!("{}", serde_json::to_string(&report)?);
    }
    eprintln!(
        "imbed: {} images: {} queued, {} already had a job, {} already done in the cache, {} unreadable; start `imbed worker` on the machines that do the work",
        report.found,
        report.queued,
        report.already_queued,
        report.done,
        report.unreadable.len()
    );
    if report.found == 0 && !report.unreadable.is_empty() {
        return Err(Usage::NoReadablePath.into());
    }
    Ok(exit::OK)
}

/// `imbed queue status|retry`.
pub async fn queue(config: Config, command: QueueCommand) -> anyhow::Result<u8> {
    let queue = open_queue(&config)?;
    match command {
        QueueCommand::Status { json } => {
            let status = queue.run(|q| q.status()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&queue, &status);
            }
        }
        QueueCommand::Retry { ids, json } => {
            let requeued = queue
                .run(move |q| q.retry((!ids.is_empty()).then_some(&ids[..])))
                .await?;
            if json {
                println!("{}", json!({ "requeued": requeued }));
            } else {
                println!("{requeued} failed jobs queued again");
            }
        }
    }
    Ok(exit::OK)
}

fn print_status(queue: &JobQueue, s: &QueueStatus) {
    println!("work queue in {}", queue.cache().location());
    println!(
        "  {} done ({} by a fallback step), {} in flight ({} workers), {} queued, {} failed, {} in all",
        s.done, s.degraded, s.in_flight, s.workers, s.queued, s.failed, s.total
    );
    match (s.rate_per_second, s.eta_seconds) {
        (Some(rate), Some(eta)) => println!(
            "  {rate:.2} images/s over the last 10 minutes; ETA {}",
            human_seconds(eta)
        ),
        _ => println!("  no job finished in the last 10 minutes: no rate or ETA"),
    }
    if !s.failed_jobs.is_empty() {
        println!("failed (`imbed queue retry [ID...]` queues them again):");
        for f in &s.failed_jobs {
            println!(
                "  {} {} ({} attempts): {}",
                f.id,
                f.locator,
                f.attempts,
                f.last_error.as_deref().unwrap_or("no error recorded")
            );
        }
    }
}

fn human_seconds(s: f64) -> String {
    match s {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// What the chain's first step can run at once: for each of its plugins, its instances, or
/// for a pooled plugin the sum of its endpoints' concurrency; the smaller over the step.
fn first_step_instances(config: &Config) -> usize {
    let slots = |c: &imbed::config::PluginConfig| match c.endpoints.as_slice() {
        [] => c.pool_size,
        endpoints => endpoints.iter().map(|e| e.concurrency).sum(),
    };
    config
        .chain
        .steps
        .first()
        .map(|step| {
            step.plugins()
                .iter()
                .filter_map(|p| config.plugins.get(*p).map(slots))
                .min()
                .unwrap_or(1)
        })
        .unwrap_or(1)
        .max(1)
}

/// `imbed worker`.
pub async fn worker(config: Config, args: WorkerArgs) -> anyhow::Result<u8> {
    let queue = open_queue(&config)?;
    let jobs = args.jobs.unwrap_or_else(|| first_step_instances(&config));
    let imbed = imbed_over(config, &queue).await?;
    let name = args.name.clone().unwrap_or_else(default_name);
    let options = WorkerOptions::new(name.clone())
        .lease(args.lease)
        .max_attempts(args.max_attempts)
        .retry_delay(args.retry_delay)
        .jobs(jobs)
        .poll(args.poll)
        .until_empty(args.until_empty);
    let (stop_tx, stop) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            crate::serve::stop_signal().await;
            let n = {
                stop_tx.send_modify(|n| *n += 1);
                *stop_tx.borrow()
            };
            if n == 1 {
                eprintln!("imbed: stopping: claiming nothing more and finishing the jobs in hand (stop again to give them back now)");
            } else {
                eprintln!("imbed: stopping now: giving back the jobs in hand");
            }
        }
    });
    let counters = std::sync::Arc::new(WorkerCounters::default());
    if let Some(addr) = &args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        eprintln!(
            "imbed: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        let (queue, counters) = (queue.clone(), counters.clone());
        tokio::spawn(serve_metrics(listener, queue, counters));
    }
    eprintln!(
        "imbed: worker {name} on {}: up to {jobs} jobs at once, {} s leases",
        queue.cache().location(),
        args.lease.as_secs_f64()
    );
    let json_out = args.json;
    let events = counters.clone();
    let summary = run_worker(imbed, queue, options, stop, move |event| {
        events.count(event);
        if json_out {
            if let Ok(line) = serde_json::to_string(event) {
                println!("{line}");
            }
        }
        match event {
            WorkerEvent::Failed {
                locator,
                error,
                parked,
                attempts,
                ..
            } => eprintln!(
                "imbed: {locator}: attempt {attempts} failed{}: {error}",
                if *parked { ", parked as failed" } else { "" }
            ),
            WorkerEvent::BackendDown => eprintln!(
                "imbed: the chain's first step is not answering: claiming nothing until its health check passes (`imbed doctor` says why)"
            ),
            WorkerEvent::BackendUp => eprintln!("imbed: the chain's first step answers: claiming"),
            WorkerEvent::LeaseLost { locator, .. } => eprintln!(
                "imbed: {locator}: the lease ran out before the work finished (raise --lease?): dropped, another worker takes it"
            ),
            WorkerEvent::DatabaseError { message } => eprintln!("imbed: {message}"),
            _ => {}
        }
    })
    .await?;
    eprintln!(
        "imbed: worker stopped: {} done ({} by a fallback step), {} attempts failed ({} parked), {} given back, {} leases lost",
        summary.done,
        summary.degraded,
        summary.failed_attempts,
        summary.parked,
        summary.released,
        summary.lost
    );
    if summary.degraded > 0 {
        eprintln!(
            "imbed: some images were embedded by a fallback step; `imbed index --queue --upgrade FOLDERS` queues them again once the better steps answer"
        );
    }
    if args.json {
        println!("{}", json!({ "summary": summary }));
    }
    Ok(exit::OK)
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}:{}", std::process::id())
}

/// This worker's own counts, for its `/metrics`.
#[derive(Default)]
struct WorkerCounters {
    done: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
    released: prometheus_client::metrics::counter::Counter,
    lost: prometheus_client::metrics::counter::Counter,
}

impl WorkerCounters {
    fn count(&self, event: &WorkerEvent) {
        match event {
            WorkerEvent::Done { .. } => self.done.inc(),
            WorkerEvent::Failed { .. } => self.failed.inc(),
            WorkerEvent::Released { .. } => self.released.inc(),
            WorkerEvent::LeaseLost { .. } => self.lost.inc(),
            _ => 0,
        };
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    queue: JobQueue,
    counters: std::sync::Arc<WorkerCounters>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (queue, counters) = (queue.clone(), counters.clone());
            async move {
                let mut registry = prometheus_client::registry::Registry::default();
                if let Ok(status) = queue.run(|q| q.status()).await {
                    status.register(&mut registry);
                }
                for (name, help, counter) in [
                    (
                        "imbed_worker_jobs_done",
                        "Jobs this worker completed",
                        &counters.done,
                    ),
                    (
                        "imbed_worker_attempts_failed",
                        "Attempts that failed in this worker",
                        &counters.failed,
                    ),
                    (
                        "imbed_worker_jobs_released",
                        "Jobs this worker gave back without spending an attempt",
                        &counters.released,
                    ),
                    (
                        "imbed_worker_leases_lost",
                        "Jobs whose lease ran out while this worker had them",
                        &counters.lost,
                    ),
                ] {
                    registry.register(name, help, counter.clone());
                }
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    out,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("imbed: the metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
        assert!(parse_duration("3d").unwrap_err().contains("ms, s, m or h"));
        assert!(parse_duration("-1s").is_err());
    }
}
