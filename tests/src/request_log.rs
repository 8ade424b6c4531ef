//! The request log the API stand-ins keep ([`crate::ollama`], [`crate::openai`]): every request
//! as it arrived, with the status it was answered, for tests to inspect. `R` is the stand-in's
//! route type.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Recorded<R> {
    /// The route it matched; `None` for a 404 or 405.
    pub route: Option<R>,
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body as JSON, when it parsed as the server parses it.
    pub body: Option<Value>,
    /// The body's bytes.
    pub raw: Vec<u8>,
    /// Images carried, counted as the stand-in's API carries them (Ollama: `images` of
    /// generate and of every chat message; OpenAI: `image_url` content parts).
    pub images: usize,
    /// The status answered; `None` while the request is still waiting (a hang, a latency).
    pub status: Option<u16>,
    /// When it arrived.
    pub at: Instant,
}

impl<R> Recorded<R> {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The bearer token sent, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    /// A top-level string field of the JSON body (`model`, `prompt`, ...).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body
            .as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
    }
}

/// The log itself. Per-route counts are read from it rather than kept beside it, so the two can
/// never disagree.
pub(crate) struct RequestLog<R> {
    entries: Mutex<Vec<Recorded<R>>>,
    /// How this API carries images in a JSON body.
    count_images: fn(&Value) -> usize,
}

impl<R: Copy + PartialEq> RequestLog<R> {
    pub(crate) fn new(count_images: fn(&Value) -> usize) -> Self {
        RequestLog {
            entries: Mutex::default(),
            count_images,
        }
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Recorded<R>>> {
        // A test that panicked while holding the lock must not hide the log from the others.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Log a request as it arrives; the index is for [`RequestLog::set_status`].
    pub(crate) fn record(
        &self,
        route: Option<R>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        raw: &[u8],
        body: Option<Value>,
    ) -> usize {
        let rec = Recorded {
            route,
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| uri.path().to_string()),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            images: body.as_ref().map(self.count_images).unwrap_or(0),
            body,
            raw: raw.to_vec(),
            status: None,
            at: Instant::now(),
        };
        let mut log = self.entries();
        log.push(rec);
        log.len() - 1
    }

    /// The status the request at `index` was answered.
    pub(crate) fn set_status(&self, index: usize, status: StatusCode) {
        if let Some(r) = self.entries().get_mut(index) {
            r.status = Some(status.as_u16());
        }
    }

    /// Every request, oldest first.
    pub(crate) fn all(&self) -> Vec<Recorded<R>> {
        self.entries().clone()
    }

    /// The requests on one route.
    pub(crate) fn to(&self, route: R) -> Vec<Recorded<R>> {
        self.entries()
            .iter()
            .filter(|r| r.route == Some(route))
            .cloned()
            .collect()
    }

    /// How many requests match.
    pub(crate) fn count(&self, matches: impl Fn(&Recorded<R>) -> bool) -> usize {
        self.entries().iter().filter(|r| matches(r)).count()
    }

    /// Forget every request.
    pub(crate) fn clear(&self) {
        self.entries().clear();
    }
}
