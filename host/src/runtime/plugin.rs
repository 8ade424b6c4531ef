//! One loaded plugin: its component ready to instantiate, a small pool of live instances, and
//! the calls of each role. Every call runs under the plugin's memory cap and deadline; a trap, a
//! timeout or malformed output is turned into a [`CallError`] and the instance that misbehaved
//! is thrown away, never reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::InstancePre;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::budget;
use super::call::{CallError, HealthReport, ItemResult, ModelInfo, PluginDescription, Roles};
use super::contract::{Exports, Indices};
use super::engine::{Runtime, TICK};
use super::nn;
use super::pool::{Learned, Lease, Pool};
use super::sandbox::PluginState;
use crate::config::{Budgets, PluginConfig};
use crate::input::ValidImage;
use crate::types::{FailureKind, Inference, PluginId, Purpose, SpaceId};

/// Guest stderr kept per instance (panic messages land here).
const STDERR_CAP: usize = 256 * 1024;
/// Longest side of images sent to describers unless the plugin's config says otherwise.
const DESCRIBER_MAX_SIDE: u32 = 1024;

/// A describer's cache identity as its contract version answers it (`None`: no such export).
pub(crate) type CacheIdentity = Option<Vec<(String, String)>>;

/// A live instance, with its store and the slot that counts it against its endpoint's limit.
pub(crate) struct Instance {
    store: Store<PluginState>,
    exports: Exports,
    stderr: MemoryOutputPipe,
    /// Held while the instance is leased; an idle instance holds none.
    permit: Option<Lease>,
    /// The pool endpoint whose backend the instance is set up to reach.
    endpoint: usize,
}

/// One loaded plugin.
pub(crate) struct Plugin {
    pub key: String,
    pub id: PluginId,
    pub config: PluginConfig,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) pre: InstancePre<PluginState>,
    pub(crate) indices: Indices,
    /// The backends the plugin's calls go to, each with its own instances (one for a plugin
    /// that is not pooled). What each answered for its models is kept there.
    pub(crate) pool: Pool,
    pub(crate) learned_dims: Mutex<HashMap<SpaceId, usize>>,
    pub from_cache: bool,
    /// SHA-256 of the component file, hex: what the store records as the writer of the
    /// plugin's vectors.
    pub component_sha256: String,
    pub load_time: Duration,
}

/// Runs one guest function of one role on a leased instance and settles the outcome (`settle`,
/// or with `traced`, `settle_traced`: also what ran natively during the call). A role the
/// component does not export is refused before an instance is leased. In a pool the call goes
/// to an endpoint `$eligible` accepts, and a failure that says that backend is unavailable is
/// tried again on another one.
macro_rules! guest_call {
    (traced $self:ident, $role:ident, $what:literal, $eligible:expr, $method:ident ( $($arg:expr),* )) => {
        guest_call!(@with settle_traced, $self, $role, $what, $eligible, $method($($arg),*))
    };
    ($self:ident, $role:ident, $what:literal, $eligible:expr, $method:ident ( $($arg:expr),* )) => {
        guest_call!(@with settle, $self, $role, $what, $eligible, $method($($arg),*))
    };
    (@with $settle:ident, $self:ident, $role:ident, $what:literal, $eligible:expr, $method:ident ( $($arg:expr),* )) => {{
        if !$self.roles().$role {
            return Err(CallError::new(
                FailureKind::NotApplicable,
                format!("plugin {:?} does not export {}", $self.key, $what),
            ));
        }
        let mut tried: Vec<usize> = Vec::new();
        let mut failed: Option<CallError> = None;
        loop {
            let mut inst = match $self.checkout(&tried, $eligible).await {
                Ok(inst) => inst,
                // Nowhere left to retry: the failure that sent the call on says more.
                Err(e) => break Err(failed.unwrap_or(e)),
            };
            let at = inst.endpoint;
            let budget = $self.arm(&mut inst.store);
            let outcome =
                tokio::time::timeout(budget, inst.exports.$method(&mut inst.store $(, $arg)*)).await;
            let result = $self.$settle(inst, outcome);
            if $self.pool.settle(&$self.key, at, result.as_ref().err()) {
                if let Err(e) = result {
                    tracing::info!(
                        plugin = $self.key.as_str(),
                        endpoint = $self.pool.endpoints[at].label(),
                        "trying another endpoint: {}",
                        e.message
                    );
                    tried.push(at);
                    failed = Some(e);
                    continue;
                }
            }
            break result;
        }
    }};
}

/// Any endpoint may take the call.
fn anywhere(_: usize) -> bool {
    true
}

impl Plugin {
    /// The wasi-nn side for `imbed plugins` (`None` without graph grants).
    pub(crate) fn nn_status(&self) -> Option<nn::NnStatus> {
        self.pool.endpoints[0].shared.nn.status()
    }

    /// Hash the granted graph files not hashed yet, so the status can say `verified`.
    pub(crate) async fn verify_nn_files(&self) {
        self.pool.endpoints[0].shared.nn.verify_files().await
    }

    pub(crate) fn roles(&self) -> Roles {
        self.indices.roles()
    }

    /// The contract version the plugin is built for.
    pub(crate) fn contract(&self) -> &'static str {
        self.indices.version()
    }

    /// Lease an idle instance or make a new one on the least busy endpoint that may take the
    /// call, waiting while every such endpoint is at its limit.
    async fn checkout(
        &self,
        tried: &[usize],
        eligible: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<Instance, CallError> {
        let (at, lease) = self.pool.acquire(&self.key, tried, eligible).await?;
        self.lease_on(at, lease).await
    }

    /// Lease an instance on endpoint `at` whatever its state (the health probe, warming).
    async fn checkout_on(&self, at: usize) -> Result<Instance, CallError> {
        let lease = self.pool.acquire_on(at).await?;
        self.lease_on(at, lease).await
    }

    async fn lease_on(&self, at: usize, lease: Lease) -> Result<Instance, CallError> {
        let idle = self.pool.endpoints[at]
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        if let Some(mut inst) = idle {
            inst.permit = Some(lease);
            return Ok(inst);
        }
        self.instantiate(at, lease).await
    }

    async fn instantiate(&self, at: usize, permit: Lease) -> Result<Instance, CallError> {
        let cfg = &self.config;
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let shared = self.pool.endpoints[at].shared.clone();
        let state = PluginState::new(cfg, shared, stderr.clone())?;
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield to tokio at every tick so a busy guest cannot starve other tasks.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        let budget = self.arm(&mut store);
        let fail =
            |e: wasmtime::Error, store: &Store<PluginState>| self.classify_trap(e, store, &stderr);
        let instance =
            match tokio::time::timeout(budget, self.pre.instantiate_async(&mut store)).await {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => {
                    self.finish_log(&mut store);
                    return Err(fail(e, &store));
                }
                Err(_) => return Err(self.timeout_error("starting")),
            };
        let exports = self.indices.load(&mut store, &instance).map_err(|e| {
            CallError::new(
                FailureKind::NotInstalled,
                format!(
                    "plugin {:?} exports functions of the wrong type: {e:#}",
                    self.key
                ),
            )
        })?;
        Ok(Instance {
            store,
            exports,
            stderr,
            permit: Some(permit),
            endpoint: at,
        })
    }

    /// Set the deadline for the next call; returns the wall-clock budget.
    fn arm(&self, store: &mut Store<PluginState>) -> Duration {
        store.data_mut().deadline = Instant::now() + self.config.timeout;
        store.data_mut().nn.used = None;
        store.set_epoch_deadline(1);
        // A little longer than the deadline: the epoch trap should win while the guest runs,
        // the outer timeout catches time spent waiting in host calls.
        self.config.timeout + TICK * 5
    }

    fn timeout_error(&self, what: &str) -> CallError {
        CallError::new(
            FailureKind::Timeout,
            format!(
                "plugin {:?} ran past its deadline of {} ms while {what}: it was stopped (raise [plugins.{}.limits] timeout_ms if it needs longer)",
                self.key,
                self.config.timeout.as_millis(),
                self.key
            ),
        )
    }

    fn classify_trap(
        &self,
        e: wasmtime::Error,
        store: &Store<PluginState>,
        stderr: &MemoryOutputPipe,
    ) -> CallError {
        if store.data().limiter.exceeded {
            return CallError::new(
                FailureKind::MemoryExceeded,
                format!(
                    "plugin {:?} exceeded its memory cap of {} MiB and was stopped (raise [plugins.{}.limits] memory_mb if it needs more)",
                    self.key,
                    self.config.memory_bytes >> 20,
                    self.key
                ),
            );
        }
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            return self.timeout_error("running");
        }
        let trap = e
            .downcast_ref::<wasmtime::Trap>()
            .map(|t| t.to_string())
            .unwrap_or_else(|| format!("{e}"));
        let output = String::from_utf8_lossy(&stderr.contents()).into_owned();
        let last: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = last[last.len().saturating_sub(3)..].join(" | ");
        let mut message = format!("plugin {:?} crashed ({trap})", self.key);
        if !tail.is_empty() {
            message.push_str(&format!("; its last output: {tail}"));
        }
        CallError::new(FailureKind::Trap, message)
    }

    /// Turn the outcome of a guest call into a result, returning a healthy instance to the pool
    /// and discarding one that trapped or timed out.
    fn settle<T>(
        &self,
        inst: Instance,
        outcome: Result<wasmtime::Result<Result<T, CallError>>, tokio::time::error::Elapsed>,
    ) -> Result<T, CallError> {
        self.settle_traced(inst, outcome).map(|(v, _)| v)
    }

    /// [`Plugin::settle`], also returning what ran natively (wasi-nn) during the call; a
    /// failed call carries it in its error.
    fn settle_traced<T>(
        &self,
        mut inst: Instance,
        outcome: Result<wasmtime::Result<Result<T, CallError>>, tokio::time::error::Elapsed>,
    ) -> Result<(T, Option<Inference>), CallError> {
        let inference = inst.store.data_mut().nn.used.take();
        self.finish_log(&mut inst.store);
        let with = |mut e: CallError| {
            e.inference = inference.clone();
            e
        };
        match outcome {
            Err(_) => Err(with(self.timeout_error("running"))),
            Ok(Err(trap)) => Err(with(self.classify_trap(trap, &inst.store, &inst.stderr))),
            Ok(Ok(result)) => {
                self.give_back(inst);
                match result {
                    Ok(v) => Ok((v, inference)),
                    Err(e) => Err(with(e)),
                }
            }
        }
    }

    /// Close the call's log accounting: one line saying how many lines the budget dropped.
    fn finish_log(&self, store: &mut Store<PluginState>) {
        let state = store.data_mut();
        if let Some(summary) = state.shared.log.finish(&mut state.call_log) {
            tracing::warn!(target: "imbed::plugin", plugin = self.key.as_str(), "{summary}");
        }
    }

    fn give_back(&self, mut inst: Instance) {
        inst.permit = None;
        // An instance whose captured stderr is filling up is retired rather than reused: a full
        // pipe would make the guest's next write fail.
        if inst.stderr.contents().len() < STDERR_CAP / 2 {
            let endpoint = &self.pool.endpoints[inst.endpoint];
            let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < endpoint.concurrency {
                idle.push(inst);
            }
        }
    }

    pub(crate) async fn info(&self) -> Result<super::call::PluginInfo, CallError> {
        let mut inst = self.checkout(&[], &anywhere).await?;
        let budget = self.arm(&mut inst.store);
        let outcome = tokio::time::timeout(budget, inst.exports.info(&mut inst.store)).await;
        self.settle(inst, outcome)
    }

    /// The plugin's own account of whether it can work now; `None` for a contract version
    /// without the export (0.1.0). In a pool: the account of the first endpoint that is up.
    pub(crate) async fn health(&self) -> Result<HealthReport, CallError> {
        let at = (0..self.pool.endpoints.len())
            .find(|&i| self.pool.endpoints[i].is_up())
            .unwrap_or(0);
        self.health_on(at).await
    }

    /// [`Plugin::health`] asked of endpoint `at`, whatever its state.
    pub(crate) async fn health_on(&self, at: usize) -> Result<HealthReport, CallError> {
        let mut inst = self.checkout_on(at).await?;
        let budget = self.arm(&mut inst.store);
        let outcome = tokio::time::timeout(budget, inst.exports.health(&mut inst.store)).await;
        let report = self.settle(inst, outcome)?;
        // A report is for a person to read: a plugin that floods it is broken, not informative.
        if let Some(checks) = &report {
            let longest = checks
                .iter()
                .flat_map(|c| [&c.name, &c.detail].into_iter().chain(&c.fix))
                .map(String::len)
                .max()
                .unwrap_or(0);
            if checks.len() > 64 || longest > 4096 {
                return Err(CallError::new(
                    FailureKind::Malformed,
                    format!(
                        "plugin {:?} returned a health report of {} checks (at most 64, each text at most 4 KiB)",
                        self.key,
                        checks.len()
                    ),
                ));
            }
        }
        Ok(report)
    }

    /// The health probe of an endpoint out of the pool: back in when its health export says
    /// nothing is failing (a plugin without the export gets the benefit of the doubt: its next
    /// failures take it out again).
    pub(crate) async fn probe(&self, at: usize) {
        let verdict = match self.health_on(at).await {
            Ok(None) => Ok(()),
            Ok(Some(checks)) => match checks
                .iter()
                .find(|c| c.status == crate::types::HealthStatus::Failing)
            {
                Some(c) => Err(format!("health probe: {}: {}", c.name, c.detail)),
                None => Ok(()),
            },
            Err(e) => Err(format!("health probe: {}", e.message)),
        };
        self.pool.probed(&self.key, at, verdict);
    }

    /// What determines the describer's descriptions, sorted by key; `None` for a contract
    /// version without the export (0.1.0). Asked once per endpoint, as the models are: a
    /// config change (hot reload) loads the plugin again. Endpoints of a pool must agree.
    pub(crate) async fn cache_identity(&self) -> Result<CacheIdentity, CallError> {
        self.agreed(
            "describer identity",
            |l| &mut l.identity,
            |at| Box::pin(self.cache_identity_on(at)),
            differing_pairs,
        )
        .await
    }

    async fn cache_identity_on(&self, at: usize) -> Result<CacheIdentity, CallError> {
        let only = |i: usize| i == at;
        let mut pairs = guest_call!(self, describer, "a describer", &only, cache_identity())?;
        if let Some(p) = pairs.as_mut() {
            p.sort();
            let longest = p.iter().map(|(k, v)| k.len().max(v.len())).max();
            if p.len() > 256 || longest.is_some_and(|l| l > 64 * 1024) {
                return Err(CallError::new(
                    FailureKind::Malformed,
                    format!(
                        "plugin {:?} returned a cache identity of {} pairs (at most 256 of at most 64 KiB each)",
                        self.key,
                        p.len()
                    ),
                ));
            }
        }
        Ok(pairs)
    }

    /// What every endpoint that is up answers for one model question, learned once per
    /// endpoint; the same answer from all of them, or a refusal naming each endpoint and its
    /// answer: vectors (or descriptions) of different weights must never be pooled together.
    async fn agreed<'a, T: Clone + PartialEq>(
        &'a self,
        what: &str,
        slot: fn(&mut Learned) -> &mut Option<T>,
        ask: impl Fn(usize) -> futures::future::BoxFuture<'a, Result<T, CallError>>,
        show: fn(&[&T]) -> Vec<String>,
    ) -> Result<T, CallError> {
        let pool = &self.pool;
        let mut answers: Vec<(usize, T)> = Vec::new();
        let mut unavailable: Option<CallError> = None;
        for (at, endpoint) in pool.endpoints.iter().enumerate() {
            if pool.pooled && !endpoint.is_up() {
                continue;
            }
            if let Some(known) = slot(&mut endpoint.learned()).clone() {
                answers.push((at, known));
                continue;
            }
            match ask(at).await {
                Ok(answer) => {
                    *slot(&mut endpoint.learned()) = Some(answer.clone());
                    answers.push((at, answer));
                }
                // Counted against the endpoint already; the others may still answer.
                Err(e)
                    if pool.pooled
                        && matches!(e.kind, FailureKind::Unavailable | FailureKind::Timeout) =>
                {
                    unavailable = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        let Some((_, first)) = answers.first() else {
            return Err(unavailable.unwrap_or_else(|| {
                CallError::new(
                    FailureKind::Unavailable,
                    format!(
                        "every endpoint of plugin {:?} is out of the pool; each is probed again every {} ms",
                        self.key,
                        pool.breaker.cooldown.as_millis()
                    ),
                )
            }));
        };
        if answers.iter().all(|(_, a)| a == first) {
            return Ok(first.clone());
        }
        // Forgotten, so the next call asks again: an endpoint that answered while its backend
        // was half up is not refused for ever.
        for (at, _) in &answers {
            *slot(&mut pool.endpoints[*at].learned()) = None;
        }
        let values: Vec<&T> = answers.iter().map(|(_, a)| a).collect();
        let each: Vec<String> = answers
            .iter()
            .zip(show(&values))
            .map(|((at, _), shown)| format!("{} has {shown}", pool.endpoints[*at].label()))
            .collect();
        Err(CallError::new(
            FailureKind::SpaceMismatch,
            format!(
                "the endpoints of plugin {:?} do not serve the same model, so they are not pooled into one space: {} ({what}); pull the same model on every endpoint, or give them separate plugin sections",
                self.key,
                each.join(", ")
            ),
        ))
    }

    /// Ask every instance the plugin may run to get ready (load its models), as the contract
    /// says: each instance holds its own copy, so warming one would leave the others cold for
    /// their first request. All are leased first, so each call reaches a different instance,
    /// then warmed at once, each on its own task (a model load is CPU work; tasks spread over
    /// the cores). One result per instance; failures are for the log.
    pub(crate) async fn warm_all(self: &Arc<Self>) -> Vec<Result<(), CallError>> {
        let slots = self
            .pool
            .endpoints
            .iter()
            .enumerate()
            .flat_map(|(at, e)| std::iter::repeat_n(at, e.concurrency));
        let leases = futures::future::join_all(slots.map(|at| self.checkout_on(at))).await;
        let warms = leases.into_iter().map(|lease| {
            let this = self.clone();
            tokio::spawn(async move {
                let mut inst = lease?;
                let budget = this.arm(&mut inst.store);
                let outcome =
                    tokio::time::timeout(budget, inst.exports.warm(&mut inst.store)).await;
                this.settle(inst, outcome)
            })
        });
        futures::future::join_all(warms)
            .await
            .into_iter()
            .map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(CallError::new(
                        FailureKind::Other,
                        format!("warming panicked: {e}"),
                    ))
                })
            })
            .collect()
    }

    pub(crate) async fn text_model(&self) -> Result<ModelInfo, CallError> {
        self.agreed(
            "embedding space",
            |l| &mut l.text_model,
            |at| {
                Box::pin(async move {
                    let only = |i: usize| i == at;
                    let info =
                        guest_call!(self, text_embedder, "a text embedder", &only, text_model())?;
                    check_model(&self.key, &info)?;
                    Ok(info)
                })
            },
            spaces,
        )
        .await
    }

    pub(crate) async fn image_model(&self) -> Result<ModelInfo, CallError> {
        self.agreed(
            "embedding space",
            |l| &mut l.image_model,
            |at| {
                Box::pin(async move {
                    let only = |i: usize| i == at;
                    let info = guest_call!(
                        self,
                        image_embedder,
                        "an image embedder",
                        &only,
                        image_model()
                    )?;
                    check_model(&self.key, &info)?;
                    Ok(info)
                })
            },
            spaces,
        )
        .await
    }

    /// Embed a batch of texts for `purpose`: the outer error fails the batch, each item has its
    /// own result.
    pub(crate) async fn embed_texts(
        &self,
        texts: &[String],
        purpose: Purpose,
    ) -> Result<(ModelInfo, Vec<ItemResult>), CallError> {
        let mut model = self.text_model().await?;
        let serving = |i: usize| {
            self.pool.endpoints[i]
                .learned()
                .text_model
                .as_ref()
                .is_some_and(|m| m.space == model.space)
        };
        let (items, inference) = guest_call!(traced self, text_embedder, "a text embedder", &serving, embed_texts(texts, purpose))?;
        let items = self.check_vectors(&model, texts.len(), items)?;
        model.inference = inference;
        Ok((model, items))
    }

    /// Embed a batch of images: the outer error fails the batch, each item has its own result.
    pub(crate) async fn embed_images(
        &self,
        images: &[ValidImage],
    ) -> Result<(ModelInfo, Vec<ItemResult>), CallError> {
        let mut model = self.image_model().await?;
        let mut fitted = Vec::with_capacity(images.len());
        for image in images {
            fitted.push(match self.config.image_max_side {
                Some(max_side) => self.fit(image, max_side).await?,
                None => image.clone(),
            });
        }
        let serving = |i: usize| {
            self.pool.endpoints[i]
                .learned()
                .image_model
                .as_ref()
                .is_some_and(|m| m.space == model.space)
        };
        let (vectors, inference) = guest_call!(traced
            self,
            image_embedder,
            "an image embedder",
            &serving,
            embed_images(&fitted)
        )?;
        let vectors = self.check_vectors(&model, images.len(), vectors)?;
        model.inference = inference;
        Ok((model, vectors))
    }

    pub(crate) async fn describe(
        &self,
        image: &ValidImage,
        prompt: Option<&str>,
    ) -> Result<PluginDescription, CallError> {
        let max_side = self.config.image_max_side.unwrap_or(DESCRIBER_MAX_SIDE);
        let image = self.fit(image, max_side).await?;
        // In a pool every endpoint must describe the same way (the same vision model and
        // digest), or the description cache would mix them.
        let identity = if self.pool.pooled {
            Some(self.cache_identity().await?)
        } else {
            None
        };
        let serving = |i: usize| match &identity {
            Some(agreed) => self.pool.endpoints[i].learned().identity.as_ref() == Some(agreed),
            None => true,
        };
        // The version's conversion moved the lifted strings into the domain type, copying
        // nothing: checking it holds every contract version's describer to the same caps.
        let d = guest_call!(
            self,
            describer,
            "a describer",
            &serving,
            describe(&image, prompt)
        )?;
        check_description(&self.key, &self.config.budgets, &d)?;
        if d.text.trim().is_empty() {
            return Err(CallError::new(
                FailureKind::Malformed,
                format!("plugin {:?} returned an empty description", self.key),
            ));
        }
        Ok(d)
    }

    /// Downsize an image for this plugin, off the async threads.
    async fn fit(&self, image: &ValidImage, max_side: u32) -> Result<ValidImage, CallError> {
        if image.width.max(image.height) <= max_side {
            return Ok(image.clone());
        }
        let image = image.clone();
        tokio::task::spawn_blocking(move || crate::input::downsize(&image, max_side))
            .await
            .map_err(|e| CallError::new(FailureKind::Other, format!("downsizing panicked: {e}")))?
            .map_err(|e| CallError::new(FailureKind::BadInput, e.to_string()))
    }

    /// Hold a batch to the contract: one entry per input; each vector of the promised length (or
    /// the length first seen in this space), finite and not all zero. Normalises the vectors.
    fn check_vectors(
        &self,
        model: &ModelInfo,
        expected: usize,
        items: Vec<ItemResult>,
    ) -> Result<Vec<ItemResult>, CallError> {
        let malformed = |m: String| {
            CallError::new(FailureKind::Malformed, format!("plugin {:?} {m}", self.key))
        };
        if items.len() != expected {
            return Err(malformed(format!(
                "returned {} vectors for {expected} inputs",
                items.len()
            )));
        }
        let dims = match model.dimensions {
            Some(d) => Some(d),
            None => items.iter().flatten().next().map(|first| {
                *self
                    .learned_dims
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(model.space.clone())
                    .or_insert(first.len())
            }),
        };
        let check = |i: usize, mut v: Vec<f32>| -> ItemResult {
            let dims = dims.unwrap_or(v.len());
            if v.len() != dims {
                return Err(malformed(format!(
                    "returned a vector of length {} (item {i}) in space {:?}, whose vectors have {dims} dimensions",
                    v.len(),
                    model.space
                )));
            }
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(malformed(format!(
                    "returned a vector containing {bad} (item {i})"
                )));
            }
            let norm = v
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 {
                return Err(malformed(format!("returned an all-zero vector (item {i})")));
            }
            v.iter_mut()
                .for_each(|x| *x = (f64::from(*x) / norm) as f32);
            Ok(v)
        };
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, item)| item.and_then(|v| check(i, v)))
            .collect())
    }
}

/// Hold a lifted description to the plugin's output caps before it is copied any further.
fn check_description(key: &str, budgets: &Budgets, d: &PluginDescription) -> Result<(), CallError> {
    let (fields, longest) = d.structured.as_ref().map_or((0, 0), |s| {
        let all = s.objects.iter().chain(&s.tags).chain(&s.visible_text);
        (all.clone().count(), all.map(String::len).max().unwrap_or(0))
    });
    let longest = longest.max(d.model.len());
    budget::check_description(key, budgets, d.text.len(), fields, longest)
        .map_err(|m| CallError::new(FailureKind::Malformed, m))
}

/// Each answer's space id.
fn spaces(models: &[&ModelInfo]) -> Vec<String> {
    models
        .iter()
        .map(|m| format!("space {}", m.space))
        .collect()
}

/// Each identity shown by the pairs in which the identities differ (the digest, usually).
fn differing_pairs(ids: &[&CacheIdentity]) -> Vec<String> {
    let pairs = |id: &CacheIdentity| id.clone().unwrap_or_default();
    let all: Vec<Vec<(String, String)>> = ids.iter().map(|id| pairs(id)).collect();
    let mut keys: Vec<&String> = all.iter().flatten().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let value = |p: &[(String, String)], k: &str| {
        p.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| all.iter().any(|p| value(p, k) != value(&all[0], k)))
        .collect();
    all.iter()
        .map(|p| {
            differing
                .iter()
                .map(|k| format!("{k}={}", value(p, k).unwrap_or_else(|| "(none)".into())))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn check_model(key: &str, info: &ModelInfo) -> Result<(), CallError> {
    if info.space.trim().is_empty() || info.model.trim().is_empty() {
        return Err(CallError::new(
            FailureKind::Malformed,
            format!("plugin {key:?} reported a model without a model id or space id"),
        ));
    }
    if info.dimensions == Some(0) {
        return Err(CallError::new(
            FailureKind::Malformed,
            format!("plugin {key:?} reported 0 dimensions"),
        ));
    }
    Ok(())
}
