//! The router and the HTTP envelope: the key check, OpenAI's error objects and headers, `/v1/models`.

use super::*;

pub(super) fn set_header(r: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

pub(super) fn set_retry_after(r: &mut Response, after: Duration) {
    let ms = after.as_millis().max(1);
    set_header(r, "retry-after", ms.div_ceil(1000).to_string());
    set_header(r, "retry-after-ms", ms.to_string());
}

pub(super) fn json_resp(status: u16, value: &Value) -> Response {
    // Serialising a Value cannot fail: its map keys are strings.
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// OpenAI's error object.
pub(super) fn error_resp(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_resp(
        status,
        &json!({ "error": { "message": message, "type": kind, "param": param, "code": code } }),
    )
}

pub(super) fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    error_resp(400, message, "invalid_request_error", param, code)
}

pub(super) fn failure_resp(f: &Failure) -> Response {
    match f {
        Failure::Server => error_resp(500, SERVER_ERROR, "server_error", None, None),
        Failure::Overloaded(after) => {
            let mut r = error_resp(503, OVERLOADED, "server_error", None, None);
            if let Some(a) = after {
                set_retry_after(&mut r, *a);
            }
            r
        }
        Failure::Status {
            status,
            message,
            kind,
            code,
        } => error_resp(*status, message, kind, None, code.as_deref()),
    }
}

pub(super) fn model_not_found(model: &str) -> Response {
    error_resp(
        404,
        &format!("The model `{model}` does not exist or you do not have access to it."),
        "invalid_request_error",
        None,
        Some("model_not_found"),
    )
}

/// `sk-abc***...wxyz` as OpenAI echoes a wrong key: enough to recognise it, not to use it.
pub(super) fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// A refusal: boxed, since a response is large and the happy path should not carry its size.
pub(super) fn refuse<T>(r: Response) -> Result<T, Box<Response>> {
    Err(Box::new(r))
}

pub(super) fn check_key(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(expected) = lock(&shared.api_key).clone() else {
        return Ok(());
    };
    let sent = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match sent {
        None => refuse(error_resp(401, NO_KEY, "invalid_request_error", None, None)),
        Some(k) if k == expected => Ok(()),
        Some(k) => refuse(error_resp(
            401,
            &format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                redact(k)
            ),
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )),
    }
}

pub(super) async fn dispatch(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let route = match path.as_str() {
        "/v1/models" => Some((Route::Models, Method::GET)),
        "/v1/chat/completions" => Some((Route::ChatCompletions, Method::POST)),
        "/v1/embeddings" => Some((Route::Embeddings, Method::POST)),
        p if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            Some((Route::Model, Method::GET))
        }
        _ => None,
    };
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let index = shared.log.record(
        route.as_ref().map(|r| r.0),
        &method,
        &uri,
        &headers,
        &body,
        parsed.clone(),
    );
    let response = match &route {
        None => invalid_url(404, "Invalid URL", &method, &path),
        Some((_, expected)) if method != *expected => {
            invalid_url(405, "Invalid method for URL", &method, &path)
        }
        Some((route, _)) => match check_key(&shared, &headers) {
            Err(r) => *r,
            Ok(()) => match route {
                Route::Models => list_models(&shared),
                Route::Model => get_model(&shared, &path["/v1/models/".len()..]),
                Route::ChatCompletions => chat(&shared, parsed).await,
                Route::Embeddings => embeddings(&shared, parsed).await,
            },
        },
    };
    shared.log.set_status(index, response.status());
    let mut response = response;
    set_header(&mut response, "x-request-id", shared.next_id("req_"));
    response
}

pub(super) fn invalid_url(status: u16, what: &str, method: &Method, path: &str) -> Response {
    error_resp(
        status,
        &format!("{what} ({method} {path})"),
        "invalid_request_error",
        None,
        None,
    )
}

pub(super) const CREATED: u64 = 1_715_367_049;

pub(super) fn model_object(m: &ModelSpec) -> Value {
    json!({ "id": m.id, "object": "model", "created": CREATED, "owned_by": m.owned_by })
}

pub(super) fn list_models(shared: &Shared) -> Response {
    let data: Vec<Value> = read(&shared.models).iter().map(model_object).collect();
    json_resp(200, &json!({ "object": "list", "data": data }))
}

pub(super) fn get_model(shared: &Shared, id: &str) -> Response {
    match shared.model(id) {
        Some(m) => json_resp(200, &model_object(&m)),
        None => error_resp(
            404,
            &format!("The model '{id}' does not exist"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ),
    }
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn words(text: &str) -> usize {
    text.split_whitespace().count()
}
