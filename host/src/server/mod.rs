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
//! `input`, `types`, and for the page `search` and `store`) only.

// The rooms share their imports through this module: each opens with `use super::*`.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::chain::{ImageRequest, Imbed, StepCheck};
use crate::config::ServerSettings;
use crate::error::Error;
use crate::input::{ImageSource, InputError};
use crate::types::{Attempt, Embedding};

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

use errors::*;
use health::*;
use items::*;
use metrics::*;
use middleware::*;
use native::*;
use ollama::*;
use openai::*;
use page::*;
pub use reload::ReloadStatus;
pub use state::{app, serve, AppState};
