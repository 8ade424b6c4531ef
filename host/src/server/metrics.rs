//! `GET /metrics`: request and outcome counters in Prometheus' text format.

use super::*;

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    let mut text = state.metrics.render();
    render_dropped_logs(&mut text, &state.imbed().dropped_plugin_logs());
    (headers, Body::from(text)).into_response()
}

/// The family for plugin log lines dropped past their log budgets. The counts start again from
/// zero when a config reload builds a new runtime, which Prometheus reads as a counter reset.
fn render_dropped_logs(out: &mut String, drops: &BTreeMap<String, u64>) {
    out.push_str("# HELP imbed_plugin_log_lines_dropped_total Plugin log lines dropped past the plugin's log budget, by plugin.\n# TYPE imbed_plugin_log_lines_dropped_total counter\n");
    for (plugin, n) in drops {
        // Plugin keys are config table names: a quoted key may hold `"` or `\`.
        let plugin = plugin.replace('\\', "\\\\").replace('"', "\\\"");
        out.push_str(&format!(
            "imbed_plugin_log_lines_dropped_total{{plugin=\"{plugin}\"}} {n}\n"
        ));
    }
}

pub(super) const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub(super) struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    pub(super) fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.total += 1;
    }

    pub(super) fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{label}=\"{value}\",le=\"{b}\"}} {}\n",
                self.counts[i]
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}\n",
            self.total
        ));
        out.push_str(&format!("{name}_sum{{{label}=\"{value}\"}} {}\n", self.sum));
        out.push_str(&format!(
            "{name}_count{{{label}=\"{value}\"}} {}\n",
            self.total
        ));
    }
}

/// Counters for `/metrics`, in Prometheus' text format.
#[derive(Default)]
pub(super) struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Default)]
pub(super) struct MetricsInner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    answers: BTreeMap<(usize, String), u64>,
    step_latency: BTreeMap<String, Histogram>,
    fallbacks: u64,
    exhausted: u64,
    failures: BTreeMap<(String, String), u64>,
}

impl Metrics {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, MetricsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn request(&self, route: &'static str, status: u16, took: Duration) {
        let mut m = self.lock();
        *m.requests.entry((route, status)).or_default() += 1;
        m.latency.entry(route).or_default().observe(took);
    }

    /// Count an embedding result; `took` is the time of the chain walk that produced it.
    pub(super) fn outcome(&self, result: &Result<Embedding, Error>, took: Duration) {
        let mut m = self.lock();
        let label = match result {
            Ok(e) => format!("{}:{}", e.provenance.step, e.provenance.step_kind),
            Err(_) => "none".to_string(),
        };
        m.step_latency.entry(label).or_default().observe(took);
        let attempts = match result {
            Ok(e) => {
                *m.answers
                    .entry((e.provenance.step, e.provenance.step_kind.to_string()))
                    .or_default() += 1;
                if e.provenance.degraded {
                    m.fallbacks += 1;
                }
                e.provenance.attempts.clone()
            }
            Err(Error::Exhausted { attempts }) => {
                m.exhausted += 1;
                attempts.clone()
            }
            Err(_) => vec![],
        };
        for a in attempts {
            let plugin = a.plugin.unwrap_or_else(|| "-".into());
            *m.failures.entry((plugin, a.kind.to_string())).or_default() += 1;
        }
    }

    pub(super) fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP imbed_requests_total HTTP requests by route and status.\n# TYPE imbed_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            out.push_str(&format!(
                "imbed_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP imbed_request_duration_seconds Request latency by route.\n# TYPE imbed_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.render(&mut out, "imbed_request_duration_seconds", "route", route);
        }
        out.push_str("# HELP imbed_embed_duration_seconds Time to embed one input, by the step that answered (step:kind, or none).\n# TYPE imbed_embed_duration_seconds histogram\n");
        for (step, h) in &m.step_latency {
            h.render(&mut out, "imbed_embed_duration_seconds", "step", step);
        }
        out.push_str("# HELP imbed_step_answers_total Embeddings by the chain step that answered.\n# TYPE imbed_step_answers_total counter\n");
        for ((step, kind), n) in &m.answers {
            out.push_str(&format!(
                "imbed_step_answers_total{{step=\"{step}\",kind=\"{kind}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP imbed_fallbacks_total Embeddings answered by a step below the first (degraded).\n# TYPE imbed_fallbacks_total counter\n");
        out.push_str(&format!("imbed_fallbacks_total {}\n", m.fallbacks));
        out.push_str("# HELP imbed_exhausted_total Inputs for which no step answered.\n# TYPE imbed_exhausted_total counter\n");
        out.push_str(&format!("imbed_exhausted_total {}\n", m.exhausted));
        out.push_str("# HELP imbed_step_failures_total Step failures by plugin and kind (trap, timeout, memory-exceeded, ...).\n# TYPE imbed_step_failures_total counter\n");
        for ((plugin, kind), n) in &m.failures {
            out.push_str(&format!(
                "imbed_step_failures_total{{plugin=\"{plugin}\",kind=\"{kind}\"}} {n}\n"
            ));
        }
        out
    }
}
