//! The page itself: HTML, script and style, embedded in the binary. They hold no data, so they are
//! served without an API key; everything they show comes from the keyed JSON routes.

use super::*;

const SHELL: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// The paths served without an API key: the page's code, never the collection.
pub(in crate::server) const OPEN_PATHS: &[&str] = &["/", "/page.js", "/page.css"];

/// Only the page's own script and style run, images come from the page's origin or from blob
/// URLs it makes itself, and nothing may frame it or send forms anywhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = harden(body.into_response());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated every time, so a new binary's page is never mixed with an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(in crate::server) async fn page_shell() -> Response {
    let mut r = asset("text/html; charset=utf-8", SHELL);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

pub(in crate::server) async fn page_script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(in crate::server) async fn page_style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
