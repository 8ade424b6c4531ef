//! `GET /metrics`: request and outcome counters in the OpenMetrics text format, through
//! `prometheus-client` (the Prometheus project's own Rust client).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::state::AppState;
use crate::error::Error;
use crate::types::Embedding;

/// The content type of what [`Metrics::render`] writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    let imbed = state.imbed();
    // The work queue's gauges when the cache is PostgreSQL: every replica reports the same
    // fleet-wide numbers (scrape one, or take the max). A database that cannot answer now
    // leaves them out rather than failing the page.
    let queue = match imbed.store().map(crate::queue::JobQueue::open) {
        Some(Ok(queue)) => queue
            .run(|q| q.status())
            .await
            .inspect_err(|e| tracing::warn!("metrics: the work queue's status: {e}"))
            .ok(),
        _ => None,
    };
    let text = state.metrics.render(
        &imbed.dropped_plugin_logs(),
        &imbed.endpoints(),
        queue.as_ref(),
    );
    (headers, Body::from(text)).into_response()
}

/// Latency buckets in seconds, from a cached answer to a slow vision model.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginEndpoint {
    plugin: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

/// `step:kind` of the step that answered, or `none`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweringStep {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepKindLabels {
    step: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginKind {
    plugin: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Plugin {
    plugin: String,
}

/// The server's metrics. Counters are registered without their `_total` suffix: OpenMetrics
/// names the family without it and the encoder adds it to each sample.
pub(super) struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<Route, Histogram, fn() -> Histogram>,
    step_latency: Family<AnsweringStep, Histogram, fn() -> Histogram>,
    answers: Family<StepKindLabels, Counter>,
    fallbacks: Counter,
    exhausted: Counter,
    failures: Family<PluginKind, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency as fn() -> Histogram),
            step_latency: Family::new_with_constructor(latency as fn() -> Histogram),
            answers: Family::default(),
            fallbacks: Counter::default(),
            exhausted: Counter::default(),
            failures: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "imbed_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        r.register(
            "imbed_request_duration_seconds",
            "Request latency by route",
            m.latency.clone(),
        );
        r.register(
            "imbed_embed_duration_seconds",
            "Time to embed one input, by the step that answered (step:kind, or none)",
            m.step_latency.clone(),
        );
        r.register(
            "imbed_step_answers",
            "Embeddings by the chain step that answered",
            m.answers.clone(),
        );
        r.register(
            "imbed_fallbacks",
            "Embeddings answered by a step below the first (degraded)",
            m.fallbacks.clone(),
        );
        r.register(
            "imbed_exhausted",
            "Inputs for which no step answered",
            m.exhausted.clone(),
        );
        r.register(
            "imbed_step_failures",
            "Step failures by plugin and kind (trap, timeout, memory-exceeded, ...)",
            m.failures.clone(),
        );
        m
    }
}

impl Metrics {
    pub(super) fn request(&self, route: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&Route {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Count an embedding result; `took` is the time of the chain walk that produced it.
    pub(super) fn outcome(&self, result: &Result<Embedding, Error>, took: Duration) {
        let step = match result {
            Ok(e) => format!("{}:{}", e.provenance.step, e.provenance.step_kind),
            Err(_) => "none".to_string(),
        };
        self.step_latency
            .get_or_create(&AnsweringStep { step })
            .observe(took.as_secs_f64());
        let attempts = match result {
            Ok(e) => {
                self.answers
                    .get_or_create(&StepKindLabels {
                        step: e.provenance.step.to_string(),
                        kind: e.provenance.step_kind.to_string(),
                    })
                    .inc();
                if e.provenance.degraded {
                    self.fallbacks.inc();
                }
                &e.provenance.attempts[..]
            }
            Err(Error::Exhausted { attempts }) => {
                self.exhausted.inc();
                &attempts[..]
            }
            Err(_) => &[],
        };
        for a in attempts {
            self.failures
                .get_or_create(&PluginKind {
                    plugin: a.plugin.clone().unwrap_or_else(|| "-".into()),
                    kind: a.kind.to_string(),
                })
                .inc();
        }
    }

    /// Everything, with the plugin log lines dropped past their budgets (`drops`, by plugin
    /// key). Those are counted by the runtime, which a config reload replaces: their counts then
    /// start again from zero, which Prometheus reads as a counter reset. With `queue` (a
    /// PostgreSQL cache), the work queue's gauges too.
    pub(super) fn render(
        &self,
        drops: &BTreeMap<String, u64>,
        endpoints: &BTreeMap<String, Vec<crate::EndpointStatus>>,
        queue: Option<&crate::queue::QueueStatus>,
    ) -> String {
        // Values read now: the plugins' dropped log lines, the endpoints, the work queue.
        let mut snapshot = Registry::default();
        let in_flight = Family::<PluginEndpoint, Gauge>::default();
        let up = Family::<PluginEndpoint, Gauge>::default();
        for (plugin, list) in endpoints {
            for e in list {
                let labels = PluginEndpoint {
                    plugin: plugin.clone(),
                    endpoint: e.base_url.clone().unwrap_or_default(),
                };
                in_flight.get_or_create(&labels).set(e.in_flight as i64);
                up.get_or_create(&labels)
                    .set(i64::from(e.state == crate::EndpointState::Up));
            }
        }
        snapshot.register(
            "imbed_endpoint_in_flight",
            "Requests in flight to each endpoint of a pooled plugin",
            in_flight,
        );
        snapshot.register(
            "imbed_endpoint_up",
            "Whether each endpoint of a pooled plugin is in the pool (1) or taken out by its circuit breaker (0)",
            up,
        );
        let family = Family::<Plugin, Counter>::default();
        for (plugin, n) in drops {
            family
                .get_or_create(&Plugin {
                    plugin: plugin.clone(),
                })
                .inc_by(*n);
        }
        snapshot.register(
            "imbed_plugin_log_lines_dropped",
            "Plugin log lines dropped past the plugin's log budget, by plugin",
            family,
        );
        if let Some(queue) = queue {
            queue.register(&mut snapshot);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &snapshot))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}
