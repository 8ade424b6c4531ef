//! How much work the chain's first step can take now ([`Imbed::backend_capacity`]): the work
//! queue's worker asks before it claims jobs, so it claims no more than the backend can start
//! and nothing while the backend is down.
//!
//! Two things are known: each plugin's endpoints (its pool: free slots of the endpoints in the
//! pool, and whether any is; a breaker takes a pooled endpoint out), and one up/down state for
//! the step as a whole, learned from its answers (down after it failed with `unavailable`, up
//! again once a health probe succeeds). The second is what keeps a single, unpooled endpoint
//! that is down from burning the queue's attempts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::imbed::Imbed;
use crate::error::Error;
use crate::runtime::Plugin;
use crate::types::{Embedding, FailureKind, HealthStatus};

/// How long a failed probe waits before the next may run.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How much work the chain's first step can take now: what a work queue asks before it claims
/// jobs (a worker claims only as many as there are free slots, and none while the step is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendCapacity {
    /// Requests the step's plugins can start at once without waiting: for each plugin, the
    /// free slots of its endpoints that are in the pool, the smaller over the step's describer
    /// and embedder.
    pub free_slots: usize,
    /// Whether each of the step's plugins is loaded and has an endpoint in the pool, and the
    /// step is believed to answer: false until a health probe succeeded, and after the step
    /// failed with `unavailable` until a probe succeeds again.
    pub up: bool,
}

/// What is known of the first step's backend.
#[derive(Default)]
pub(super) struct FirstStep {
    /// `None`: not probed yet; `Some(up)` after a probe or an answer.
    up: Mutex<Option<bool>>,
    probing: AtomicBool,
}

impl FirstStep {
    fn set(&self, up: bool) {
        *self.up.lock().unwrap_or_else(|p| p.into_inner()) = Some(up);
    }

    fn get(&self) -> Option<bool> {
        *self.up.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether any endpoint of `plugin` that is in its pool answers its health check with nothing
/// failing (a plugin without a health export cannot say, and counts as healthy: its next call
/// tells). Each is asked in turn: one endpoint that is down must not hide another that is up.
async fn any_endpoint_healthy(key: &str, plugin: &Arc<Plugin>) -> bool {
    for (at, endpoint) in plugin.pool.endpoints.iter().enumerate() {
        if !endpoint.is_up() {
            continue;
        }
        match plugin.health_on(at).await {
            Ok(Some(checks)) if checks.iter().all(|c| c.status != HealthStatus::Failing) => {
                return true
            }
            Ok(None) => return true,
            Ok(Some(_)) => tracing::debug!(plugin = key, endpoint = at, "health probe: failing"),
            Err(e) => tracing::debug!(plugin = key, endpoint = at, "health probe: {}", e.message),
        }
    }
    false
}

impl Imbed {
    /// How much the chain's first step can take now (see [`BackendCapacity`]): synchronous and
    /// cheap, it reads counters and calls no backend. While the step is not known to be up, this
    /// starts a health probe in the background (at most one at a time, one a second); a later
    /// call sees its outcome. No step, or a plugin that did not load: not up.
    pub fn backend_capacity(&self) -> BackendCapacity {
        let Some(step) = self.inner.config.chain.steps.first() else {
            return BackendCapacity {
                free_slots: 0,
                up: false,
            };
        };
        let mut free_slots = usize::MAX;
        let mut endpoints_up = true;
        for key in step.plugins() {
            match self.plugin(key) {
                Ok(p) => {
                    let (free, up) = p.pool.capacity();
                    free_slots = free_slots.min(free);
                    endpoints_up &= up;
                }
                // A plugin that did not load never comes up in this runtime.
                Err(_) => {
                    return BackendCapacity {
                        free_slots: 0,
                        up: false,
                    }
                }
            }
        }
        let answers = self.inner.first_step.get() == Some(true);
        if !answers {
            self.probe_first_step();
        }
        BackendCapacity {
            free_slots,
            up: endpoints_up && answers,
        }
    }

    /// Learn from an image answer whether the first step's backend answers.
    pub(super) fn note_first_step(&self, result: &crate::Result<Embedding>) {
        let attempts = match result {
            Ok(e) if e.provenance.step == 0 => return self.inner.first_step.set(true),
            Ok(e) => &e.provenance.attempts,
            Err(Error::Exhausted { attempts }) => attempts,
            Err(_) => return,
        };
        if attempts
            .iter()
            .any(|a| a.step == 0 && a.kind == FailureKind::Unavailable)
        {
            self.inner.first_step.set(false);
        }
    }

    /// Ask the first step's plugins' health in the background; up when none reports a failing
    /// check (a plugin without a health export cannot say, and counts as up: its next call
    /// tells).
    fn probe_first_step(&self) {
        let first = &self.inner.first_step;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if first.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        runtime.spawn(async move {
            let mut up = true;
            let keys: Vec<String> = match this.inner.config.chain.steps.first() {
                Some(step) => step.plugins().into_iter().map(str::to_string).collect(),
                None => Vec::new(),
            };
            let mut seen = Vec::new();
            for key in keys {
                if seen.contains(&key) {
                    continue;
                }
                let healthy = match this.plugin(&key) {
                    Ok(p) => any_endpoint_healthy(&key, p).await,
                    Err(_) => false,
                };
                up &= healthy;
                seen.push(key);
            }
            this.inner.first_step.set(up);
            if !up {
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
            this.inner
                .first_step
                .probing
                .store(false, Ordering::Release);
        });
    }
}
