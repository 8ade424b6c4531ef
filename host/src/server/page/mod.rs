//! The search page: `GET /` (one page, its script and style embedded in the binary), the JSON
//! routes it uses (`/search`, `/search/image`, `/similar/{hash}`) and thumbnails by content hash
//! (`/thumb/{hash}`). The client never names a file: only content hashes, which the server looks
//! up in the store and serves from under the folders `imbed index` was given.
//!
//! The room: `assets` (the page, with its security headers), `api` (the searches), `thumbs`
//! (finding a file that still holds the content, making and caching its thumbnail). It uses the
//! server's shared parts (`super`) and the library's `search`, `store` and `input`.

// The page's modules take these through `use super::*`.
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::errors::{Api, Failure};
use super::native::image_request_from;
use super::state::AppState;
use crate::error::Error;

mod api;
mod assets;
mod thumbs;

pub(super) use api::{page_search, page_search_image, page_similar};
pub(super) use assets::{page_script, page_shell, page_style, OPEN_PATHS};
pub(super) use thumbs::page_thumb;

/// A content hash as the page names images: 64 lowercase hex digits. Anything else (a path, `..`,
/// upper case) is no image of ours, and answers 404 like an unknown hash.
pub(super) fn content_hash(text: &str) -> Option<&str> {
    (text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(text)
}

/// The 404 every unknown, malformed or unservable hash gets: the same words whatever the reason,
/// so an answer tells nothing about files the caller may not see.
pub(super) fn no_such_image() -> Failure {
    Failure {
        status: StatusCode::NOT_FOUND,
        message: "no indexed image has that content hash".into(),
        attempts: vec![],
    }
}

/// The page's routes need the cache: the collection lives there.
pub(super) fn store_of(state: &AppState) -> Result<crate::store::Cache, Failure> {
    state.imbed().store().cloned().ok_or_else(|| Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "searching needs the cache, which the config turns off: set [cache] database \
                  and index a folder with `imbed index <folder>`"
            .into(),
        attempts: vec![],
    })
}

/// The cache failed: the server's fault, not the caller's. A database that cannot be reached
/// (restarting, say) is 503, so a client or balancer tries again rather than giving up.
pub(super) fn store_failure(e: crate::store::StoreError) -> Failure {
    Failure {
        status: if e.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        },
        message: e.to_string(),
        attempts: vec![],
    }
}

/// Headers every answer of the room carries: the browser must take each body for what its
/// content type says (`nosniff`) and send no address of the page elsewhere.
pub(super) fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Run store work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: Error::Internal(crate::error::Internal::Panicked("a search page task"))
                .to_string(),
            attempts: vec![],
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_lowercase_hex_digits_name_an_image() {
        let good = "0123456789abcdef".repeat(4);
        assert_eq!(content_hash(&good), Some(good.as_str()));
        for bad in [
            "",
            "../etc/passwd",
            "/etc/passwd",
            &good.to_uppercase(),
            &good[..63],
            &format!("{good}0"),
            &format!("{}/..", &good[..61]),
        ] {
            assert_eq!(content_hash(bad), None, "{bad:?}");
        }
    }
}
