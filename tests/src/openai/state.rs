//! The stand-in's state: the knobs tests turn, request counters, tickets for requests in flight.

use super::*;

#[derive(Debug)]
pub(super) struct Knobs {
    pub(super) latency: Duration,
    pub(super) fail_next: usize,
    pub(super) failure: Failure,
    pub(super) rate_limit_next: usize,
    pub(super) retry_after: Option<Duration>,
    pub(super) insufficient_quota: bool,
    pub(super) shuffle: bool,
    pub(super) cut_streams: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency: Duration::ZERO,
            fail_next: 0,
            failure: Failure::Server,
            rate_limit_next: 0,
            retry_after: None,
            insufficient_quota: false,
            shuffle: false,
            cut_streams: false,
        }
    }
}

pub(super) struct Shared {
    pub(super) api_key: Mutex<Option<String>>,
    pub(super) models: RwLock<Vec<ModelSpec>>,
    pub(super) knobs: Mutex<Knobs>,
    pub(super) hang: watch::Sender<bool>,
    pub(super) log: RequestLog<Route>,
    pub(super) ids: AtomicU64,
    pub(super) in_flight: AtomicUsize,
}

// A panic in one handler must not turn every later request into a panic too.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// A model request past the knobs; counts as in flight until dropped.
pub(super) struct Ticket(pub(super) Arc<Shared>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub(super) fn model(&self, id: &str) -> Option<ModelSpec> {
        read(&self.models).iter().find(|m| m.id == id).cloned()
    }

    pub(super) fn next_id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::SeqCst);
        let digest = Sha256::digest(n.to_le_bytes());
        let tail: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("{prefix}{tail}")
    }

    /// Where a validated request meets the knobs: injected failures, rate limits, the hang,
    /// the latency.
    pub(super) async fn schedule(self: &Arc<Self>, model: &str) -> Result<Ticket, Response> {
        let latency = {
            let mut k = lock(&self.knobs);
            if k.insufficient_quota {
                return Err(error_resp(
                    429,
                    QUOTA,
                    "insufficient_quota",
                    None,
                    Some("insufficient_quota"),
                ));
            }
            if k.rate_limit_next > 0 {
                k.rate_limit_next -= 1;
                let wait = k.retry_after.unwrap_or(Duration::from_secs(20));
                let message = format!(
                    "Rate limit reached for {model} in organization {ORGANIZATION} on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in {}ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
                    wait.as_millis()
                );
                let mut r =
                    error_resp(429, &message, "requests", None, Some("rate_limit_exceeded"));
                set_header(&mut r, "x-ratelimit-limit-requests", "3".into());
                set_header(&mut r, "x-ratelimit-remaining-requests", "0".into());
                set_header(
                    &mut r,
                    "x-ratelimit-reset-requests",
                    format!("{}ms", wait.as_millis()),
                );
                if let Some(after) = k.retry_after {
                    set_retry_after(&mut r, after);
                }
                return Err(r);
            }
            if k.fail_next > 0 {
                k.fail_next -= 1;
                return Err(failure_resp(&k.failure));
            }
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            k.latency
        };
        let ticket = Ticket(self.clone());
        let mut hang = self.hang.subscribe();
        let _ = hang.wait_for(|h| !*h).await;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(ticket)
    }
}

pub(super) fn count_images(body: &Value) -> usize {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .count()
}
