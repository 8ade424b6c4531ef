//! The router: one dispatch for every route, the real server's status codes and bodies.

use super::*;

pub(super) fn app(shared: Arc<Shared>) -> Router {
    fn on(route: Route) -> MethodRouter<Arc<Shared>> {
        let handler = move |State(s): State<Arc<Shared>>,
                            method: Method,
                            uri: Uri,
                            headers: HeaderMap,
                            body: Bytes| async move {
            dispatch(s, Some(route), method, uri, headers, body).await
        };
        match route {
            Route::Root | Route::Version | Route::Tags => get(handler),
            _ => post(handler),
        }
    }
    let mut router = Router::new();
    for route in Route::ALL {
        router = router.route(route.path(), on(route));
    }
    router
        .method_not_allowed_fallback(
            |State(s): State<Arc<Shared>>,
             method: Method,
             uri: Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                let i = s.log.record(None, &method, &uri, &headers, &body, None);
                s.log.set_status(i, StatusCode::METHOD_NOT_ALLOWED);
                text_resp(405, "text/plain", "405 method not allowed")
            },
        )
        .fallback(
            |State(s): State<Arc<Shared>>,
             method: Method,
             uri: Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                let i = s.log.record(None, &method, &uri, &headers, &body, None);
                s.log.set_status(i, StatusCode::NOT_FOUND);
                not_found()
            },
        )
        // Images arrive base64-encoded inside the JSON: bodies of many megabytes are normal.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

pub(super) async fn dispatch(
    shared: Arc<Shared>,
    route: Option<Route>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let Some(route) = route else {
        return not_found();
    };
    let (legacy, down) = {
        let k = lock(&shared.knobs);
        (k.legacy, k.down)
    };
    if down {
        let i = shared
            .log
            .record(Some(route), &method, &uri, &headers, &body, None);
        shared.log.set_status(i, StatusCode::SERVICE_UNAVAILABLE);
        return error_resp(503, DOWN);
    }
    if route == Route::Embed && legacy {
        let i = shared
            .log
            .record(Some(route), &method, &uri, &headers, &body, None);
        shared.log.set_status(i, StatusCode::NOT_FOUND);
        return not_found();
    }
    let parsed = route.takes_json().then(|| go::bind(&body));
    let logged = parsed.as_ref().and_then(|p| p.as_ref().ok().cloned());
    let index = shared
        .log
        .record(Some(route), &method, &uri, &headers, &body, logged);
    let parsed = parsed.unwrap_or(Ok(Value::Null));
    let response = match route {
        Route::Root => text_resp(200, "text/plain; charset=utf-8", "Ollama is running"),
        Route::Version => json_resp(200, &json!({ "version": *lock(&shared.version) })),
        Route::Tags => tags(&shared),
        Route::Show => show(&shared, parsed),
        Route::Generate => generate(&shared, parsed, start).await,
        Route::Chat => chat(&shared, parsed, start).await,
        Route::Embed => embed(&shared, parsed, start).await,
        Route::Embeddings => embeddings(&shared, parsed).await,
    };
    shared.log.set_status(index, response.status());
    response
}

pub(super) fn response(status: u16, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(super) fn text_resp(status: u16, content_type: &'static str, text: &'static str) -> Response {
    response(status, content_type, Body::from(text))
}

pub(super) fn not_found() -> Response {
    text_resp(404, "text/plain", "404 page not found")
}

pub(super) fn json_resp(status: u16, value: &Value) -> Response {
    // Serialising a Value cannot fail: its map keys are strings.
    let body = serde_json::to_vec(value).unwrap_or_default();
    response(status, "application/json; charset=utf-8", Body::from(body))
}

pub(super) fn error_resp(status: u16, error: impl Into<String>) -> Response {
    json_resp(status, &json!({ "error": error.into() }))
}

pub(super) fn ndjson(lines: Vec<Value>, delay: Duration, ticket: Ticket) -> Response {
    let chunks: Vec<Bytes> = lines
        .iter()
        .map(|l| {
            let mut b = serde_json::to_vec(l).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        })
        .collect();
    let stream = futures::stream::iter(chunks.into_iter().enumerate())
        .then(move |(i, chunk)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(chunk)
        })
        // The request stays in flight until its last line is sent (or the client goes away).
        .map(move |chunk| {
            let _in_flight = &ticket;
            chunk
        });
    response(200, "application/x-ndjson", Body::from_stream(stream))
}

/// The body, or the text of the 400 for a body that does not bind or does not type-check.
pub(super) fn bind_checked(
    parsed: Result<Value, String>,
    struct_name: &str,
    fields: &[(&str, go::Ty)],
) -> Result<Value, String> {
    parsed.and_then(|v| go::check(&v, struct_name, fields).map(|()| v))
}

/// The last non-null value of a key, matched case-insensitively, as Go's decoder fills a field.
pub(super) fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .filter(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
        .map(|(_, v)| v)
        .next_back()
}

pub(super) fn str_of(v: &Value, name: &str) -> String {
    field(v, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub(super) fn keep_alive_is_zero(v: &Value) -> bool {
    match field(v, "keep_alive") {
        Some(Value::Number(n)) => n
            .as_f64()
            .is_some_and(|t| t >= 0.0 && (t * 1e9) as i64 == 0),
        Some(Value::String(s)) => go::parse_duration(s).is_ok_and(|ns| ns == 0.0),
        _ => false,
    }
}

pub(super) fn option_i64(v: &Value, name: &str) -> Option<i64> {
    field(v, "options")
        .and_then(|o| field(o, name))
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
}

pub(super) fn images_of(v: &Value) -> Vec<Vec<u8>> {
    field(v, "images")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(|s| go::base64(s.as_bytes()).ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

pub(super) fn nanos(d: Duration) -> u64 {
    // Go omits zero durations; a real measurement is never exactly zero.
    (d.as_nanos() as u64).max(1)
}
