//! Errors in the style of each API, and how a library error maps to a status.

use crate::error::Error;
use crate::input::InputError;
use crate::types::Attempt;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use serde_json::Value;

#[derive(Clone, Copy)]
pub(super) enum Api {
    OpenAi,
    Ollama,
    Native,
}

pub(super) fn api_of(path: &str) -> Api {
    if path.starts_with("/v1/") {
        Api::OpenAi
    } else if path.starts_with("/api/") {
        Api::Ollama
    } else {
        Api::Native
    }
}

pub(super) fn error_response(
    api: Api,
    status: StatusCode,
    message: &str,
    attempts: &[Attempt],
) -> Response {
    let body = match api {
        Api::OpenAi => json!({ "error": {
            "message": message,
            "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "param": null,
            "code": status.canonical_reason().map(|r| r.to_lowercase().replace(' ', "_")),
        }}),
        Api::Ollama => json!({ "error": message }),
        Api::Native => json!({ "error": {
            "status": status.as_u16(),
            "message": message,
            "attempts": attempts,
        }}),
    };
    (status, axum::Json(body)).into_response()
}

/// What went wrong while answering, mapped to a status.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) attempts: Vec<Attempt>,
}

impl Failure {
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            attempts: vec![],
        }
    }

    pub(super) fn respond(self, api: Api) -> Response {
        error_response(api, self.status, &self.message, &self.attempts)
    }
}

impl Failure {
    /// The status and message for `e`, read in place: a batch reports each item's error without
    /// taking it out of the results or turning it into another kind of error.
    pub(super) fn of(e: &Error) -> Self {
        let status = match e {
            Error::Input(InputError::TooManyBytes { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Input(_) | Error::Usage(_) => StatusCode::BAD_REQUEST,
            // No step answered: the service cannot serve this now, but may later.
            Error::Exhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let attempts = match e {
            Error::Exhausted { attempts } => attempts.clone(),
            _ => vec![],
        };
        Failure {
            status,
            message: e.to_string(),
            attempts,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::of(&e)
    }
}

/// The body as a typed request: invalid JSON and a body of the wrong shape get different
/// messages, both naming what was expected.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &Bytes,
    what: &str,
) -> Result<T, Failure> {
    if body.is_empty() {
        return Err(Failure::bad("the request has no body: send JSON"));
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Failure::bad(format!("the body is not valid JSON: {e}"))
        } else {
            Failure::bad(format!("the body is not {what}: {e}"))
        }
    })
}

pub(super) fn parse_json(body: &Bytes) -> Result<Value, Failure> {
    if body.is_empty() {
        return Err(Failure::bad("the request has no body: send JSON"));
    }
    serde_json::from_slice(body)
        .map_err(|e| Failure::bad(format!("the body is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::Failure;
    use crate::error::Error;
    use crate::input::InputError;
    use crate::types::Attempt;

    #[test]
    fn an_error_maps_to_its_status_in_place() {
        let too_big = Error::Input(InputError::TooManyBytes {
            label: "item 3".into(),
            limit: 10,
        });
        let f = Failure::of(&too_big);
        assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(f.message, too_big.to_string());
        let exhausted = Error::Exhausted {
            attempts: vec![Attempt {
                step: 0,
                step_kind: crate::types::StepKind::Hash,
                plugin: Some("hash".into()),
                kind: crate::types::FailureKind::Trap,
                message: "crashed".into(),
                inference: None,
            }],
        };
        let f = Failure::of(&exhausted);
        assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(f.attempts.len(), 1);
        let bad = Error::Input(InputError::Base64("not base64".into()));
        assert_eq!(Failure::of(&bad).status, StatusCode::BAD_REQUEST);
    }
}
