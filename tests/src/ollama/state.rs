//! The stand-in's state: the knobs tests turn, request counters, the queue.

use super::*;

#[derive(Debug)]
pub(super) struct Knobs {
    pub(super) latency: Duration,
    pub(super) token_delay: Duration,
    pub(super) cold_start: Duration,
    pub(super) failure_rate: f64,
    pub(super) failure: Failure,
    pub(super) fail_next: usize,
    pub(super) seed: u64,
    pub(super) rng: u64,
    pub(super) legacy: bool,
    pub(super) error_mid_stream: bool,
    pub(super) nan_mode: NanMode,
    pub(super) max_queue: Option<usize>,
    pub(super) down: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency: Duration::ZERO,
            token_delay: Duration::ZERO,
            cold_start: Duration::ZERO,
            failure_rate: 0.0,
            failure: Failure::Busy,
            fail_next: 0,
            seed: 0,
            rng: 0,
            legacy: false,
            error_mid_stream: false,
            nan_mode: NanMode::Reject,
            max_queue: None,
            down: false,
        }
    }
}

impl Knobs {
    /// SplitMix64: tiny, seedable, and the same on every platform.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (mix(self.rng) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub(super) struct Shared {
    pub(super) version: Mutex<String>,
    pub(super) models: RwLock<Vec<ModelSpec>>,
    pub(super) knobs: Mutex<Knobs>,
    pub(super) hang: watch::Sender<bool>,
    pub(super) log: RequestLog<Route>,
    /// Models that have been "loaded"; the cell is filled once the cold start is over.
    pub(super) loaded: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
    pub(super) in_flight: AtomicUsize,
    pub(super) peak_in_flight: AtomicUsize,
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

/// A model request admitted past the queue; counts as in flight until dropped.
pub(super) struct Ticket {
    pub(super) shared: Arc<Shared>,
    pub(super) loaded_at: Instant,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub(super) fn model(&self, canonical_name: &str) -> Option<ModelSpec> {
        read(&self.models)
            .iter()
            .find(|m| canonical(&m.name).as_deref() == Some(canonical_name))
            .cloned()
    }

    pub(super) fn unload(&self, spec: &ModelSpec) {
        if let Some(key) = canonical(&spec.name) {
            lock(&self.loaded).remove(&key);
        }
    }

    pub(super) async fn schedule(self: &Arc<Self>, spec: &ModelSpec) -> Result<Ticket, Response> {
        let (cold_start, latency) = {
            let mut k = lock(&self.knobs);
            if let Some(max) = k.max_queue {
                if self.in_flight.load(Ordering::SeqCst) >= max {
                    return Err(error_resp(503, QUEUE_FULL));
                }
            }
            if k.fail_next > 0 {
                k.fail_next -= 1;
                return Err(k.failure.response());
            }
            if k.failure_rate > 0.0 && k.next_unit() < k.failure_rate {
                return Err(k.failure.response());
            }
            // Counted while the knobs are locked, so two requests cannot both take the last
            // place in the queue.
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
            (k.cold_start, k.latency)
        };
        let mut ticket = Ticket {
            shared: self.clone(),
            loaded_at: Instant::now(),
        };
        let mut hang = self.hang.subscribe();
        let _ = hang.wait_for(|h| !*h).await;
        let cell = {
            let key = canonical(&spec.name).unwrap_or_default();
            lock(&self.loaded).entry(key).or_default().clone()
        };
        cell.get_or_init(|| async move {
            if !cold_start.is_zero() {
                tokio::time::sleep(cold_start).await;
            }
        })
        .await;
        ticket.loaded_at = Instant::now();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(ticket)
    }
}

pub(super) fn count_images(body: &Value) -> usize {
    let images = |v: &Value| {
        field(v, "images")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|i| !i.is_null()).count())
            .unwrap_or(0)
    };
    let in_messages: usize = field(body, "messages")
        .and_then(Value::as_array)
        .map(|ms| ms.iter().map(images).sum())
        .unwrap_or(0);
    images(body) + in_messages
}
