//! The native API: `POST /embed/image` (JSON or multipart), `/embed/text`, `/embed/batch`,
//! `/describe`.

use super::errors::{parse_json, Api, Failure};
use super::items::{embed_items, embedding_json, input_type, native_item, result_json, Item};
use super::state::AppState;
use crate::chain::ImageRequest;
use crate::error::Error;
use crate::input::ImageSource;
use crate::types::Purpose;
use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::extract::Multipart;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use serde_json::Value;
use std::time::Instant;

pub(super) async fn native_embed_image(
    State(state): State<AppState>,
    request: Request,
) -> Response {
    native_image(&state, request)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

pub(super) async fn image_request_from(
    state: &AppState,
    request: Request,
) -> Result<(ImageRequest, Option<String>), Failure> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form = Multipart::from_request(request, state)
            .await
            .map_err(|e| Failure::bad(format!("bad multipart body: {e}")))?;
        // A body past the size limit is 413, not a malformed form (the multipart error knows).
        let multipart_failure =
            |what: String, e: axum::extract::multipart::MultipartError| Failure {
                status: e.status(),
                message: format!("{what}: {}", e.body_text()),
                attempts: vec![],
            };
        let (mut bytes, mut description, mut prompt) = (None, None, None);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| multipart_failure("bad multipart body".into(), e))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| multipart_failure(format!("bad multipart field {name}"), e))?;
            match name.as_str() {
                "image" => bytes = Some(data.to_vec()),
                "description" => description = Some(String::from_utf8_lossy(&data).into_owned()),
                "prompt" => prompt = Some(String::from_utf8_lossy(&data).into_owned()),
                _ => {}
            }
        }
        let bytes = bytes.ok_or_else(|| Failure::bad("the form has no `image` file field"))?;
        let mut r = ImageRequest::new(ImageSource::Bytes(bytes));
        r.description = description;
        return Ok((r, prompt));
    }
    let body = Bytes::from_request(request, state)
        .await
        .map_err(|e| Failure {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: e.to_string(),
            attempts: vec![],
        })?;
    let v = parse_json(&body)?;
    let prompt = v.get("prompt").and_then(Value::as_str).map(str::to_string);
    match native_item(&v, 0)? {
        Item::Image(r) => Ok((r, prompt)),
        Item::Text(_) => Err(Failure::bad(
            "send `image_url` or `image_base64` (for text, use /embed/text)",
        )),
    }
}

pub(super) async fn native_image(state: &AppState, request: Request) -> Result<Response, Failure> {
    let (req, _) = image_request_from(state, request).await?;
    let t = Instant::now();
    let result = state.imbed().embed_image(req).await;
    state.metrics.outcome(&result, t.elapsed());
    let e = result?;
    Ok(axum::Json(embedding_json(&e)).into_response())
}

pub(super) async fn native_embed_text(State(state): State<AppState>, body: Bytes) -> Response {
    native_text(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

pub(super) async fn native_text(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let v = parse_json(&body)?;
    // The native text routes are for searching: queries unless the caller says otherwise.
    let purpose = input_type(v.get("input_type"), Purpose::Query)?;
    if let Some(text) = v.get("text").and_then(Value::as_str) {
        let results = embed_items(state, vec![Item::Text(text.to_string())], purpose).await;
        let e = results.into_iter().next().unwrap_or(Err(Error::Internal(
            crate::error::Internal::MissingResult(0),
        )))?;
        return Ok(axum::Json(embedding_json(&e)).into_response());
    }
    let texts = v
        .get("texts")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::bad("send {\"text\": \"...\"} or {\"texts\": [...]}"))?;
    let items = texts
        .iter()
        .map(|t| {
            t.as_str()
                .map(|s| Item::Text(s.to_string()))
                .ok_or_else(|| Failure::bad("every text must be a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = embed_items(state, items, purpose).await;
    Ok(
        axum::Json(json!({ "results": results.iter().map(result_json).collect::<Vec<_>>() }))
            .into_response(),
    )
}

pub(super) async fn native_embed_batch(State(state): State<AppState>, body: Bytes) -> Response {
    native_batch(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

pub(super) async fn native_batch(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let v = parse_json(&body)?;
    let list = v.get("items").and_then(Value::as_array).ok_or_else(|| {
        Failure::bad("send {\"items\": [{\"image_url\"|\"image_base64\"|\"text\": ...}]}")
    })?;
    let items = list
        .iter()
        .enumerate()
        .map(|(i, v)| native_item(v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let purpose = input_type(v.get("input_type"), Purpose::Query)?;
    let results = embed_items(state, items, purpose).await;
    Ok(
        axum::Json(json!({ "results": results.iter().map(result_json).collect::<Vec<_>>() }))
            .into_response(),
    )
}

pub(super) async fn native_describe(State(state): State<AppState>, request: Request) -> Response {
    describe(&state, request)
        .await
        .unwrap_or_else(|f| f.respond(Api::Native))
}

pub(super) async fn describe(state: &AppState, request: Request) -> Result<Response, Failure> {
    let (req, prompt) = image_request_from(state, request).await?;
    let imbed = state.imbed();
    let image = imbed.load_image(&req.source).await?;
    let d = imbed.describe(&image, prompt.as_deref()).await?;
    Ok(axum::Json(json!({ "description": d })).into_response())
}
