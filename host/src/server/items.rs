//! What the APIs share: image sources, mixed text/image items embedded in one go, JSON for
//! results, and the first failure of a batch that must succeed whole.

use super::errors::Failure;
use super::state::AppState;
use crate::chain::ImageRequest;
use crate::error::Error;
use crate::input::ImageSource;
use crate::types::{Embedding, Purpose};
use serde_json::json;
use serde_json::Value;
use std::time::Instant;

/// An image given as a URL or as base64 (raw or `data:`).
pub(super) fn image_source(text: &str) -> ImageSource {
    if text.starts_with("http://") || text.starts_with("https://") || text.contains("://") {
        ImageSource::Url(text.to_string())
    } else {
        ImageSource::Base64(text.to_string())
    }
}

/// The purpose a request's texts are embedded for: its `input_type` field (as Cohere and Voyage
/// name it; both spellings of each purpose are accepted), or `default` without one.
pub(super) fn input_type(v: Option<&Value>, default: Purpose) -> Result<Purpose, Failure> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => match s.as_str() {
            "query" | "search_query" => Ok(Purpose::Query),
            "document" | "search_document" => Ok(Purpose::Document),
            "classification" => Ok(Purpose::Classification),
            "clustering" => Ok(Purpose::Clustering),
            "none" => Ok(Purpose::None),
            other => Err(Failure::bad(format!(
                "unknown input_type {other:?}: use \"query\" or \"document\" (or \"classification\", \"clustering\", \"none\")"
            ))),
        },
        Some(_) => Err(Failure::bad(
            "input_type must be a string: \"query\" or \"document\"",
        )),
    }
}

/// One item of a mixed request.
pub(super) enum Item {
    Text(String),
    Image(ImageRequest),
}

pub(super) fn native_item(v: &Value, index: usize) -> Result<Item, Failure> {
    let description = v
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string);
    let source = if let Some(url) = v.get("image_url").and_then(Value::as_str) {
        ImageSource::Url(url.to_string())
    } else if let Some(b64) = v.get("image_base64").and_then(Value::as_str) {
        ImageSource::Base64(b64.to_string())
    } else if let Some(text) = v.get("text").and_then(Value::as_str) {
        return Ok(Item::Text(text.to_string()));
    } else {
        return Err(Failure::bad(format!(
            "item {index} needs `image_url`, `image_base64` or `text`"
        )));
    };
    let mut r = ImageRequest::new(source);
    r.description = description;
    Ok(Item::Image(r))
}

/// Embed mixed items: texts in one batch (for `purpose`), images concurrently. Results in input
/// order.
pub(super) async fn embed_items(
    state: &AppState,
    items: Vec<Item>,
    purpose: Purpose,
) -> Vec<Result<Embedding, Error>> {
    let mut texts = Vec::new();
    let mut slots = Vec::new();
    let mut images = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Item::Text(t) => {
                slots.push((i, true, texts.len()));
                texts.push(t);
            }
            Item::Image(r) => {
                slots.push((i, false, images.len()));
                images.push(r);
            }
        }
    }
    let imbed = state.imbed();
    let t = Instant::now();
    let text_results = if texts.is_empty() {
        Vec::new()
    } else {
        imbed.embed_texts_for(&texts, purpose).await
    };
    // A batch is one walk of the chain: each of its texts took the batch's time.
    let text_time = t.elapsed();
    for r in &text_results {
        state.metrics.outcome(r, text_time);
    }
    use futures::StreamExt;
    // Images run concurrently, each timed on its own.
    let image_results: Vec<_> = futures::stream::iter(images)
        .map(|r| {
            let imbed = imbed.clone();
            async move {
                let t = Instant::now();
                let result = imbed.embed_image(r).await;
                state.metrics.outcome(&result, t.elapsed());
                result
            }
        })
        .buffered(4)
        .collect()
        .await;
    let mut text_results: Vec<Option<_>> = text_results.into_iter().map(Some).collect();
    let mut image_results: Vec<Option<_>> = image_results.into_iter().map(Some).collect();
    let mut out: Vec<(usize, Result<Embedding, Error>)> = slots
        .into_iter()
        .map(|(i, is_text, j)| {
            let r = if is_text {
                text_results[j].take()
            } else {
                image_results[j].take()
            };
            (
                i,
                r.unwrap_or(Err(Error::Internal(crate::error::Internal::MissingResult(
                    i,
                )))),
            )
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

pub(super) fn embedding_json(e: &Embedding) -> Value {
    json!({ "vector": e.vector, "provenance": e.provenance })
}

pub(super) fn result_json(r: &Result<Embedding, Error>) -> Value {
    match r {
        Ok(e) => embedding_json(e),
        Err(err) => {
            let f = Failure::of(err);
            json!({ "error": { "status": f.status.as_u16(), "message": f.message, "attempts": f.attempts } })
        }
    }
}

/// The first failure of a batch that must succeed whole.
pub(super) fn all_or_first_error(
    results: Vec<Result<Embedding, Error>>,
) -> Result<Vec<Embedding>, (usize, Failure)> {
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(e) => out.push(e),
            Err(e) => return Err((i, Failure::from(e))),
        }
    }
    Ok(out)
}
