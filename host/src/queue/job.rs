//! What a job is, and what the queue as a whole looks like.

use serde::Serialize;

/// A job a worker claimed: what to read, what it must hash to, and the lease token that every
/// later statement on the job must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The job's id.
    pub id: i64,
    /// A path (on a mount every worker shares) or an http(s) URL.
    pub locator: String,
    /// SHA-256 of the content, hex, as it was when enqueued.
    pub sha256: String,
    /// Its length in bytes, as enqueued.
    pub size: u64,
    /// Proves the lease: a new one is drawn at every claim.
    pub token: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// A job parked as failed.
#[derive(Debug, Clone, Serialize)]
pub struct FailedJob {
    /// The job's id (for `imbed queue retry ID`).
    pub id: i64,
    /// Its path or URL.
    pub locator: String,
    /// Attempts spent.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// The whole queue, for every worker at once.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStatus {
    /// Jobs waiting, leases that ran out included.
    pub queued: u64,
    /// Jobs held by a worker under a live lease.
    pub in_flight: u64,
    /// Jobs done.
    pub done: u64,
    /// Of those, answered by a fallback step (`imbed index --queue --upgrade` queues them again).
    pub degraded: u64,
    /// Jobs parked as failed.
    pub failed: u64,
    /// Every job.
    pub total: u64,
    /// Workers holding a live lease now.
    pub workers: u64,
    /// Jobs done per second over the last ten minutes (of the time they took); `None` when
    /// none finished then.
    pub rate_per_second: Option<f64>,
    /// Seconds until the queued and in-flight jobs are done at that rate.
    pub eta_seconds: Option<f64>,
    /// The failed jobs (the first hundred).
    pub failed_jobs: Vec<FailedJob>,
}

impl QueueStatus {
    /// The queue's numbers as Prometheus gauges (`imbed_queue_jobs{state}`, workers, rate), for
    /// a `/metrics` page.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;

        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct State {
            state: String,
        }
        let jobs = Family::<State, Gauge>::default();
        for (state, n) in [
            ("queued", self.queued),
            ("in_flight", self.in_flight),
            ("done", self.done),
            ("degraded", self.degraded),
            ("failed", self.failed),
        ] {
            jobs.get_or_create(&State {
                state: state.into(),
            })
            .set(n as i64);
        }
        registry.register(
            "imbed_queue_jobs",
            "Work queue jobs by state (degraded: done by a fallback step)",
            jobs,
        );
        let workers = Gauge::<i64>::default();
        workers.set(self.workers as i64);
        registry.register(
            "imbed_queue_workers",
            "Workers holding a live lease on a job",
            workers,
        );
        let rate = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        rate.set(self.rate_per_second.unwrap_or(0.0));
        registry.register(
            "imbed_queue_rate",
            "Jobs done per second over the last ten minutes",
            rate,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_exported_as_gauges() {
        let status = QueueStatus {
            queued: 5,
            in_flight: 2,
            done: 7,
            degraded: 1,
            failed: 3,
            total: 17,
            workers: 2,
            rate_per_second: Some(0.5),
            ..QueueStatus::default()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        status.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "imbed_queue_jobs{state=\"queued\"} 5",
            "imbed_queue_jobs{state=\"in_flight\"} 2",
            "imbed_queue_jobs{state=\"done\"} 7",
            "imbed_queue_jobs{state=\"degraded\"} 1",
            "imbed_queue_jobs{state=\"failed\"} 3",
            "imbed_queue_workers 2",
            "imbed_queue_rate 0.5",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
