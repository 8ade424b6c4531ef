//! What every request passes through: the API key, the bound on requests in flight, the
//! deadline, metrics, and the 404 in each API's style.

use super::errors::{api_of, error_response, Api};
use super::page::OPEN_PATHS;
use super::state::AppState;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

pub(super) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let api = api_of(&path);
    let route = route_label(&path);
    let response = guarded(&state, api, &path, request, next).await;
    let status = response.status();
    state
        .metrics
        .request(route, status.as_u16(), started.elapsed());
    tracing::info!(
        target: "imbed::serve",
        %method,
        path,
        status = status.as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

pub(super) async fn guarded(
    state: &AppState,
    api: Api,
    path: &str,
    request: Request,
    next: Next,
) -> Response {
    // The page's HTML, script and style hold no data; what they show needs the key.
    let open = matches!(path, "/health" | "/metrics") || OPEN_PATHS.contains(&path);
    if !open && !state.settings.api_keys.is_empty() {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = presented.is_some_and(|p| {
            state
                .settings
                .api_keys
                .iter()
                .any(|k| constant_time_eq(k, p))
        });
        if !ok {
            let mut r = error_response(
                api,
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer <key>`",
                &[],
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.settings.max_body_bytes) {
        return error_response(
            api,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body is larger than {} bytes",
                state.settings.max_body_bytes
            ),
            &[],
        );
    }
    // Refuse at once rather than queue without bound: a client can retry, a queue only grows.
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        let mut r = error_response(
            api,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the server is busy ({} requests in flight): retry shortly",
                state.settings.max_in_flight
            ),
            &[],
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    // Dropping the handler's future at the deadline drops the plugin calls under it: their
    // instances are discarded and nothing keeps working for a caller who has gone.
    match tokio::time::timeout(state.settings.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(
            api,
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "no answer within {} ms",
                state.settings.request_timeout.as_millis()
            ),
            &[],
        ),
    }
}

pub(super) fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/embeddings" => "/v1/embeddings",
        "/api/embed" => "/api/embed",
        "/api/tags" => "/api/tags",
        "/api/version" => "/api/version",
        "/embed/image" => "/embed/image",
        "/embed/text" => "/embed/text",
        "/embed/batch" => "/embed/batch",
        "/describe" => "/describe",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/" => "/",
        "/page.js" => "/page.js",
        "/page.css" => "/page.css",
        "/search" => "/search",
        "/search/image" => "/search/image",
        // One label per route, not per hash: metrics must not grow with the collection.
        p if p.starts_with("/similar/") => "/similar/{hash}",
        p if p.starts_with("/thumb/") => "/thumb/{hash}",
        _ => "other",
    }
}

pub(super) async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_string();
    error_response(
        api_of(&path),
        StatusCode::NOT_FOUND,
        &format!("no route {path}"),
        &[],
    )
}
