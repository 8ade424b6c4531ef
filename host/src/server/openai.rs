//! OpenAI-compatible `POST /v1/embeddings`.

use super::*;

pub(super) async fn openai_embeddings(State(state): State<AppState>, body: Bytes) -> Response {
    openai(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::OpenAi))
}

pub(super) async fn openai(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let req = parse_json(&body)?;
    let input = req
        .get("input")
        .ok_or_else(|| Failure::bad("`input` is required"))?;
    let items: Vec<Item> = match input {
        Value::String(s) => vec![Item::Text(s.clone())],
        Value::Array(list) if list.is_empty() => {
            return Err(Failure::bad("`input` must not be empty"))
        }
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(Item::Text(s.clone())),
                Value::Object(o) => match o.get("image").and_then(Value::as_str) {
                    Some(img) => {
                        let mut r = ImageRequest::new(image_source(img));
                        r.description = o.get("text").and_then(Value::as_str).map(str::to_string);
                        Ok(Item::Image(r))
                    }
                    None => Err(Failure::bad(format!(
                        "input[{i}]: an object item needs an `image` field (a URL or base64)"
                    ))),
                },
                Value::Number(_) | Value::Array(_) => Err(Failure::bad(
                    "token arrays are not supported: send the text itself as a string",
                )),
                _ => Err(Failure::bad(format!(
                    "input[{i}] must be a string or an {{\"image\": ...}} object"
                ))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(Failure::bad("`input` must be a string or an array")),
    };
    let base64_out = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Failure::bad(format!(
                "encoding_format {other:?}: use float or base64"
            )))
        }
    };
    let requested_model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let results = embed_items(state, items).await;
    let embeddings = all_or_first_error(results).map_err(|(i, mut f)| {
        f.message = format!("input[{i}]: {}", f.message);
        f
    })?;
    // A space id as `model` pins the space: answers from any other space are refused, never mixed.
    if requested_model.contains('/') {
        if let Some((i, e)) = embeddings
            .iter()
            .enumerate()
            .find(|(_, e)| !crate::types::space_meets(&e.provenance.space, &requested_model))
        {
            return Err(Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "input[{i}] could only be embedded in space {:?}, not the requested {requested_model:?}",
                    e.provenance.space
                ),
                attempts: e.provenance.attempts.clone(),
            });
        }
    }
    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64_out {
                let bytes: Vec<u8> = e.vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.vector)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding, "imbed": e.provenance })
        })
        .collect();
    let model = embeddings
        .first()
        .map(|e| e.provenance.space.clone())
        .unwrap_or_default();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": 0, "total_tokens": 0 },
    }))
    .into_response())
}
