//! `imbed serve`: the library behind HTTP, speaking APIs that existing clients already use.
//!
//! - OpenAI-compatible `POST /v1/embeddings` (texts, and images as `{"image": url-or-base64}`
//!   items; `encoding_format` float or base64), errors as OpenAI error objects;
//! - Ollama-compatible `POST /api/embed`, `GET /api/tags`, `GET /api/version`, errors as
//!   `{"error": "..."}`;
//! - native `POST /embed/image` (JSON or multipart), `/embed/text`, `/embed/batch`, `/describe`;
//! - `GET /health` (which chain steps can answer) and `GET /metrics` (Prometheus text);
//! - the search page: `GET /` and its JSON routes `/search`, `/search/image`, `/similar/{hash}`,
//!   `/thumb/{hash}`.
//!
//! Every request runs under a deadline and a bound on requests in flight; image URLs are fetched
//! through the [`UrlGuard`](crate::input::UrlGuard), so callers cannot make the server reach
//! loopback, private or metadata addresses.
//!
//! The room: `state` (the shared state, the router), one module per API (`openai`, `ollama`,
//! `native`), `items` (what they share), `errors`, `middleware`, `health`, `metrics`, `reload`
//! and `page/` (the search page). It uses the library's public face (`chain`, `config`,
//! `input`, `types`, for the page `search` and `store`, for `/metrics` `queue`) only.

mod errors;
mod health;
mod items;
mod metrics;
mod middleware;
mod native;
mod ollama;
mod openai;
mod page;
mod reload;
mod state;

pub use reload::ReloadStatus;
pub use state::{app, serve, AppState};
