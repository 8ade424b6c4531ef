//! The endpoints one plugin's calls are spread over: each with its own instances, its own
//! concurrency and its own circuit breaker. Wasm instances share no state, so the pool lives in
//! the host: every endpoint runs the same compiled component with its own `base_url` setting and
//! an HTTP grant for its own origin only. An unpooled plugin is one endpoint without a breaker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::call::{CallError, ModelInfo};
use super::host_fns::Shared;
use super::plugin::{CacheIdentity, Instance};
use crate::config::Breaker;
use crate::types::FailureKind;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A slot on one endpoint, held while an instance is leased. Giving it back wakes the requests
/// waiting for a slot anywhere in the pool.
pub(crate) struct Lease {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.freed.notify_waiters();
    }
}

/// Whether an endpoint is in the pool, as a person reads it in `imbed doctor` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EndpointState {
    /// In the pool.
    Up,
    /// Taken out by its circuit breaker; its health probe may bring it back after the cool-down.
    Down,
}

/// One endpoint's state, for `imbed doctor`, `/metrics` and the work queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint's base URL (`None` for a plugin that is not pooled).
    pub base_url: Option<String>,
    /// Whether it is in the pool.
    pub state: EndpointState,
    /// Requests in flight to it now.
    pub in_flight: usize,
    /// Its concurrency.
    pub concurrency: usize,
    /// Consecutive failures that said the backend is unavailable.
    pub failures: u32,
    /// Calls it answered (successfully or not) since the plugin loaded.
    pub calls: u64,
    /// The last failure that counted against it.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Health {
    failures: u32,
    /// When the breaker took the endpoint out (`None`: in the pool).
    down_since: Option<Instant>,
    last_error: Option<String>,
}

/// What the plugin's model calls answered on one endpoint, learned once (a probe that brings the
/// endpoint back forgets them, so a box that was re-pulled meanwhile is checked again).
#[derive(Default)]
pub(crate) struct Learned {
    pub(crate) text_model: Option<ModelInfo>,
    pub(crate) image_model: Option<ModelInfo>,
    pub(crate) identity: Option<CacheIdentity>,
}

/// One backend of the plugin.
pub(crate) struct Endpoint {
    pub(crate) base_url: Option<String>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) concurrency: usize,
    permits: Arc<Semaphore>,
    pub(crate) idle: Mutex<Vec<Instance>>,
    health: Mutex<Health>,
    pub(crate) learned: Mutex<Learned>,
    calls: AtomicU64,
}

impl Endpoint {
    pub(crate) fn new(base_url: Option<String>, shared: Arc<Shared>, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Endpoint {
            base_url,
            shared,
            concurrency,
            permits: Arc::new(Semaphore::new(concurrency)),
            idle: Mutex::new(Vec::new()),
            health: Mutex::new(Health::default()),
            learned: Mutex::new(Learned::default()),
            calls: AtomicU64::new(0),
        }
    }

    pub(crate) fn label(&self) -> &str {
        self.base_url
            .as_deref()
            .unwrap_or("(its configured backend)")
    }

    fn in_flight(&self) -> usize {
        self.concurrency - self.permits.available_permits().min(self.concurrency)
    }

    pub(crate) fn is_up(&self) -> bool {
        lock(&self.health).down_since.is_none()
    }

    pub(crate) fn learned(&self) -> MutexGuard<'_, Learned> {
        lock(&self.learned)
    }
}

/// The plugin's endpoints.
pub(crate) struct Pool {
    pub(crate) endpoints: Vec<Endpoint>,
    /// Configured as a pool: breakers and retries apply. An unpooled plugin behaves as before
    /// pools existed.
    pub(crate) pooled: bool,
    pub(crate) breaker: Breaker,
    freed: Arc<Notify>,
}

impl Pool {
    pub(crate) fn new(endpoints: Vec<Endpoint>, pooled: bool, breaker: Breaker) -> Self {
        Pool {
            endpoints,
            pooled,
            breaker,
            freed: Arc::new(Notify::new()),
        }
    }

    /// A slot on the endpoint with the fewest requests in flight among those that are up,
    /// `eligible` and not in `tried`, waiting while every such endpoint is at its concurrency.
    /// Fails at once when no endpoint can take the call at all.
    pub(crate) async fn acquire(
        &self,
        key: &str,
        tried: &[usize],
        eligible: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<(usize, Lease), CallError> {
        if !self.pooled {
            let permit = self.endpoints[0]
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| shutting_down())?;
            return Ok((0, self.lease(permit)));
        }
        loop {
            // Registered before looking, so a slot freed between the look and the wait still
            // wakes this request.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let mut candidates: Vec<usize> = (0..self.endpoints.len())
                .filter(|&i| !tried.contains(&i) && eligible(i) && self.endpoints[i].is_up())
                .collect();
            if candidates.is_empty() {
                return Err(self.none_left(key, tried));
            }
            // Fewest in flight first; among equals the one that has answered fewest calls, so
            // an idle pool still spreads its work.
            candidates.sort_by_key(|&i| {
                let e = &self.endpoints[i];
                (e.in_flight(), e.calls.load(Ordering::Relaxed))
            });
            for i in candidates {
                if let Ok(permit) = self.endpoints[i].permits.clone().try_acquire_owned() {
                    return Ok((i, self.lease(permit)));
                }
            }
            freed.await;
        }
    }

    /// A slot on endpoint `i` whatever its state (the health probe, warming).
    pub(crate) async fn acquire_on(&self, i: usize) -> Result<Lease, CallError> {
        let permit = self.endpoints[i]
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| shutting_down())?;
        Ok(self.lease(permit))
    }

    fn lease(&self, permit: OwnedSemaphorePermit) -> Lease {
        Lease {
            _permit: permit,
            freed: self.freed.clone(),
        }
    }

    fn none_left(&self, key: &str, tried: &[usize]) -> CallError {
        let each: Vec<String> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let h = lock(&e.health);
                let why = if tried.contains(&i) {
                    "failed for this request".to_string()
                } else if h.down_since.is_some() {
                    "out of the pool".to_string()
                } else {
                    "not serving the pool's model".to_string()
                };
                match &h.last_error {
                    Some(last) => format!("{} ({why}: {last})", e.label()),
                    None => format!("{} ({why})", e.label()),
                }
            })
            .collect();
        CallError::new(
            FailureKind::Unavailable,
            format!(
                "no endpoint of plugin {key:?} can take the request: {}; an endpoint out of the pool is probed again every {} ms",
                each.join(", "),
                self.breaker.cooldown.as_millis()
            ),
        )
    }

    /// Count a call's outcome against endpoint `i`. Returns whether the call should be tried
    /// on another endpoint: only a failure that says the backend is unavailable is, and only in
    /// a pool.
    pub(crate) fn settle(&self, key: &str, i: usize, error: Option<&CallError>) -> bool {
        let e = &self.endpoints[i];
        e.calls.fetch_add(1, Ordering::Relaxed);
        if !self.pooled {
            return false;
        }
        let Some(error) = error.filter(|e| says_unavailable(e.kind)) else {
            // The backend answered (an error about the input is still an answer).
            lock(&e.health).failures = 0;
            return false;
        };
        let mut h = lock(&e.health);
        h.failures += 1;
        h.last_error = Some(error.message.clone());
        if h.failures >= self.breaker.failures && h.down_since.is_none() {
            h.down_since = Some(Instant::now());
            tracing::warn!(
                plugin = key,
                endpoint = e.label(),
                "endpoint taken out of the pool after {} consecutive failures: {}",
                h.failures,
                error.message
            );
        }
        true
    }

    /// Endpoints out of the pool whose cool-down is over: the health probe's turn.
    pub(crate) fn due_for_probe(&self) -> Vec<usize> {
        let now = Instant::now();
        (0..self.endpoints.len())
            .filter(|&i| {
                lock(&self.endpoints[i].health)
                    .down_since
                    .is_some_and(|t| now.duration_since(t) >= self.breaker.cooldown)
            })
            .collect()
    }

    /// The probe's verdict on endpoint `i`: back into the pool (forgetting what it answered
    /// before, so its models are checked again), or another cool-down.
    pub(crate) fn probed(&self, key: &str, i: usize, result: Result<(), String>) {
        let e = &self.endpoints[i];
        let mut h = lock(&e.health);
        match result {
            Ok(()) => {
                *h = Health::default();
                drop(h);
                *e.learned() = Learned::default();
                tracing::info!(
                    plugin = key,
                    endpoint = e.label(),
                    "endpoint back in the pool"
                );
                self.freed.notify_waiters();
            }
            Err(why) => {
                h.down_since = Some(Instant::now());
                h.last_error = Some(why);
            }
        }
    }

    /// Free slots on the endpoints that are up, and whether any is up.
    pub(crate) fn capacity(&self) -> (usize, bool) {
        let up: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.is_up()).collect();
        let free = up
            .iter()
            .map(|e| e.permits.available_permits().min(e.concurrency))
            .sum();
        (free, !up.is_empty())
    }

    pub(crate) fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints
            .iter()
            .map(|e| {
                let h = lock(&e.health);
                EndpointStatus {
                    base_url: e.base_url.clone(),
                    state: if h.down_since.is_some() {
                        EndpointState::Down
                    } else {
                        EndpointState::Up
                    },
                    in_flight: e.in_flight(),
                    concurrency: e.concurrency,
                    failures: h.failures,
                    calls: e.calls.load(Ordering::Relaxed),
                    last_error: h.last_error.clone(),
                }
            })
            .collect()
    }
}

/// Failures that say the backend cannot take work now, rather than anything about the input.
fn says_unavailable(kind: FailureKind) -> bool {
    matches!(kind, FailureKind::Unavailable | FailureKind::Timeout)
}

fn shutting_down() -> CallError {
    CallError::new(FailureKind::Other, "the plugin is shutting down")
}
