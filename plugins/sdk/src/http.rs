//! Outbound HTTP through the host, allowed only to the origins in the plugin's `grants.http`.
//!
//! The host makes the request, follows no redirects, caps the response size and bounds the
//! request by the call's deadline. Non-2xx statuses are responses, not errors:
//! [`Response::error_for_status`] maps them to the contract's cases when a plugin has nothing
//! more specific to say.
//!
//! ```no_run
//! use imbed_plugin_sdk::http::Request;
//! use imbed_plugin_sdk::Error;
//!
//! # fn demo() -> Result<(), Error> {
//! let answer: serde_json::Value = Request::post("http://localhost:8000/v1/embeddings")
//!     .bearer_auth("sk-...")
//!     .json(&serde_json::json!({ "model": "m", "input": ["a cat"] }))?
//!     .timeout_ms(10_000)
//!     .send()?
//!     .error_for_status()?
//!     .json()?;
//! # Ok(()) }
//! ```

use std::fmt;

use crate::Error;

/// One outgoing request, built step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, `HEAD`, `PUT` or `DELETE`.
    pub method: String,
    /// Absolute `http://` or `https://` URL; its origin must be granted.
    pub url: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
    /// Give up after this many milliseconds (the host also caps it by the call's deadline).
    pub timeout_ms: Option<u32>,
}

impl Request {
    /// A request with `method` to `url`, no headers, no body, no timeout of its own.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Request::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Request::new("POST", url)
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Add `authorization: Bearer <token>`.
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Set a JSON body and `content-type: application/json`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self, Error> {
        self.body = serde_json::to_vec(value).map_err(|e| {
            Error::other(format!(
                "cannot write the request to {} as JSON: {e}",
                self.url
            ))
        })?;
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
        Ok(self.header("content-type", "application/json"))
    }

    /// Give up after `ms` milliseconds.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Send it through the host and wait for the whole response.
    pub fn send(&self) -> Result<Response, HttpError> {
        let (status, headers, body) = send(self)?;
        Ok(Response {
            method: self.method.clone(),
            url: self.url.clone(),
            status,
            headers,
            body,
        })
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request's method, for messages.
    pub method: String,
    /// The request's URL, for messages.
    pub url: String,
    /// The status code.
    pub status: u16,
    /// Headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON into `T`; an error quoting the start of the body otherwise.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::other(format!(
                "the answer to {} {} is not the JSON expected ({e}): {}",
                self.method,
                self.url,
                snippet(&self.text(), 200)
            ))
        })
    }

    /// The response itself when the status is 2xx, else the error [`status_error`] maps it to.
    pub fn error_for_status(self) -> Result<Response, Error> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(status_error(&self))
        }
    }
}

/// A non-2xx response as one of the contract's cases, with the body quoted:
///
/// | status | case |
/// |---|---|
/// | 408, 504 | `timeout` |
/// | 429, 502, 503 | `unavailable` (busy or restarting: try later) |
/// | 400, 413, 415, 422 | `bad-input` (this input was refused) |
/// | 401, 403 | `other`, saying to check the credentials |
/// | anything else | `other` |
pub fn status_error(response: &Response) -> Error {
    let Response {
        method,
        url,
        status,
        ..
    } = response;
    let body = snippet(response.text().trim(), 300);
    let head = format!("{method} {url} answered {status}: {body}");
    match status {
        408 | 504 => Error::timeout(head),
        429 | 502 | 503 => Error::unavailable(format!("{head}; try again later")),
        400 | 413 | 415 | 422 => Error::bad_input(head),
        401 | 403 => Error::other(format!(
            "{head}; check the credentials (API key) in this plugin's settings"
        )),
        _ => Error::other(head),
    }
}

fn snippet(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Why no response came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The origin is not granted to this plugin; the message names the config key to add.
    Denied(String),
    /// No connection could be made (refused, no route, DNS failure).
    Unreachable(String),
    /// No complete response within the time allowed.
    Timeout(String),
    /// The request itself was malformed (bad URL, method or header).
    Invalid(String),
    /// The response body exceeded the host's size cap.
    TooLarge(String),
    /// Any other transport failure.
    Other(String),
}

impl HttpError {
    /// The host's message.
    pub fn message(&self) -> &str {
        match self {
            HttpError::Denied(m)
            | HttpError::Unreachable(m)
            | HttpError::Timeout(m)
            | HttpError::Invalid(m)
            | HttpError::TooLarge(m)
            | HttpError::Other(m) => m,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for HttpError {}

/// The contract's case for a transport failure: unreachable means `unavailable` (the chain
/// moves on and tries later), a timeout `timeout`, the rest `other`. A denied origin is `other`:
/// it is a config mistake, and the host's message names the grant to add.
impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Unreachable(m) => Error::Unavailable(m),
            HttpError::Timeout(m) => Error::Timeout(m),
            HttpError::Denied(m)
            | HttpError::Invalid(m)
            | HttpError::TooLarge(m)
            | HttpError::Other(m) => Error::Other(m),
        }
    }
}

type Parts = (u16, Vec<(String, String)>, Vec<u8>);

#[cfg(target_family = "wasm")]
fn send(req: &Request) -> Result<Parts, HttpError> {
    use crate::bindings::imbed::plugin::http as wit;
    let request = wit::Request {
        method: req.method.clone(),
        url: req.url.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        timeout_ms: req.timeout_ms,
    };
    match wit::send(&request) {
        Ok(r) => Ok((r.status, r.headers, r.body)),
        Err(wit::HttpError::Denied(m)) => Err(HttpError::Denied(m)),
        Err(wit::HttpError::Unreachable(m)) => Err(HttpError::Unreachable(m)),
        Err(wit::HttpError::Timeout(m)) => Err(HttpError::Timeout(m)),
        Err(wit::HttpError::Invalid(m)) => Err(HttpError::Invalid(m)),
        Err(wit::HttpError::TooLarge(m)) => Err(HttpError::TooLarge(m)),
        Err(wit::HttpError::Other(m)) => Err(HttpError::Other(m)),
    }
}

#[cfg(not(target_family = "wasm"))]
fn send(req: &Request) -> Result<Parts, HttpError> {
    Err(HttpError::Other(format!(
        "cannot send {} {}: imbed's HTTP capability exists only inside a component run by the host",
        req.method, req.url
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            method: "POST".into(),
            url: "http://localhost:1234/v1/embeddings".into(),
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn requests_are_built_step_by_step() {
        let r = Request::post("http://x/y")
            .bearer_auth("k")
            .header("content-type", "text/plain")
            .timeout_ms(5)
            .body("hi");
        assert_eq!(r.method, "POST");
        assert_eq!(r.headers[0], ("authorization".into(), "Bearer k".into()));
        assert_eq!((r.body.as_slice(), r.timeout_ms), (&b"hi"[..], Some(5)));
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_bodies_replace_the_content_type() {
        let r = Request::post("http://x")
            .header("Content-Type", "text/plain")
            .json(&serde_json::json!({"a": 1}))
            .unwrap();
        assert_eq!(
            r.headers,
            vec![("content-type".into(), "application/json".into())]
        );
        assert_eq!(r.body, br#"{"a":1}"#);
        let v: serde_json::Value = response(200, r#"{"ok":true}"#).json().unwrap();
        assert_eq!(v["ok"], true);
        let e = response(200, "<html>")
            .json::<serde_json::Value>()
            .unwrap_err();
        assert!(e.message().contains("<html>"), "{e}");
    }

    #[test]
    fn statuses_map_to_the_contract_cases() {
        assert!(response(200, "").error_for_status().is_ok());
        assert!(
            matches!(status_error(&response(503, "busy")), Error::Unavailable(m) if m.contains("busy"))
        );
        assert!(matches!(
            status_error(&response(504, "")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            status_error(&response(400, "too long")),
            Error::BadInput(_)
        ));
        assert!(
            matches!(status_error(&response(401, "")), Error::Other(m) if m.contains("API key"))
        );
        assert_eq!(
            status_error(&response(500, "boom")).message(),
            "POST http://localhost:1234/v1/embeddings answered 500: boom"
        );
        assert_eq!(
            response(200, "").header("Content-Type"),
            Some("application/json")
        );
    }

    #[test]
    fn transport_failures_map_to_the_contract_cases() {
        assert!(matches!(
            Error::from(HttpError::Unreachable("x".into())),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            Error::from(HttpError::Timeout("x".into())),
            Error::Timeout(_)
        ));
        assert!(
            matches!(Error::from(HttpError::Denied("grant it".into())), Error::Other(m) if m == "grant it")
        );
    }

    #[cfg(not(target_family = "wasm"))]
    #[test]
    fn there_is_no_host_outside_a_component() {
        let e = Request::get("http://x").send().unwrap_err();
        assert!(e.message().contains("only inside a component"));
    }
}
