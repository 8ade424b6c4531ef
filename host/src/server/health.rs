//! `GET /health`: which chain steps can answer and what each plugin says about its backend,
//! probed at most every few seconds.

use super::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use std::time::Duration;
use std::time::Instant;

/// How long a health check's step probes are reused: probing runs the whole chain.
pub(super) const HEALTH_TTL: Duration = Duration::from_secs(15);

pub(super) async fn health(State(state): State<AppState>) -> Response {
    let (steps, checks) = {
        let mut cached = state.health.lock().await;
        match cached.as_ref() {
            Some((at, steps, checks)) if at.elapsed() < HEALTH_TTL => {
                (steps.clone(), checks.clone())
            }
            _ => {
                let imbed = state.imbed();
                let (steps, checks) = futures::join!(imbed.check_steps(), imbed.plugin_checks());
                *cached = Some((Instant::now(), steps.clone(), checks.clone()));
                (steps, checks)
            }
        }
    };
    let answering = steps.iter().filter(|s| s.ok).count();
    let (status, word) = match answering {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "down"),
        n if n == steps.len() => (StatusCode::OK, "ok"),
        _ if steps.first().is_some_and(|s| s.ok) => (StatusCode::OK, "ok"),
        _ => (StatusCode::OK, "degraded"),
    };
    (
        status,
        axum::Json(json!({
            "status": word,
            "steps": steps,
            "plugins": state.imbed().plugins(),
            "plugin_health": checks,
            "config": state.imbed().config().source,
            "reload": state.reload_status(),
        })),
    )
        .into_response()
}
