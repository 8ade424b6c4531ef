//! Ollama-compatible `POST /api/embed`, `GET /api/tags`, `GET /api/version`.

use super::errors::{parse_json, Api, Failure};
use super::items::{all_or_first_error, embed_items, input_type, Item};
use super::state::AppState;
use crate::types::Purpose;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use serde_json::Value;
use std::time::Instant;

pub(super) async fn ollama_embed(State(state): State<AppState>, body: Bytes) -> Response {
    ollama(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::Ollama))
}

pub(super) async fn ollama(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let started = Instant::now();
    let req = parse_json(&body)?;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("imbed")
        .to_string();
    let texts: Vec<String> = match req.get("input") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) if s.is_empty() => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Failure::bad("invalid input type"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Failure::bad("invalid input type")),
    };
    // Ollama's clients expect their texts embedded as sent; `input_type` opts in to a purpose.
    let purpose = input_type(req.get("input_type"), Purpose::None)?;
    let embeddings = if texts.is_empty() {
        vec![]
    } else {
        let results =
            embed_items(state, texts.into_iter().map(Item::Text).collect(), purpose).await;
        all_or_first_error(results).map_err(|(_, f)| f)?
    };
    let vectors: Vec<&Vec<f32>> = embeddings.iter().map(|e| &e.vector).collect();
    Ok(axum::Json(json!({
        "model": model,
        "embeddings": vectors,
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": 0,
    }))
    .into_response())
}

pub(super) async fn ollama_tags(State(state): State<AppState>) -> Response {
    let spaces: Vec<String> = state
        .imbed()
        .config()
        .chain
        .steps
        .iter()
        .map(|s| format!("{}", s.kind()))
        .collect();
    axum::Json(json!({ "models": [{
        "name": "imbed:latest",
        "model": "imbed:latest",
        "modified_at": "1970-01-01T00:00:00Z",
        "size": 0,
        "digest": "",
        "details": { "format": "wasm", "family": "imbed", "families": spaces },
        "capabilities": ["embedding"],
    }]}))
    .into_response()
}

pub(super) async fn ollama_version() -> Response {
    axum::Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}
