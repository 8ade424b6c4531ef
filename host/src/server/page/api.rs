//! The searches the page runs, as JSON: by text (`GET /search`), by an example image
//! (`POST /search/image`) and "more like this" (`GET /similar/{hash}`). Each answer says what was
//! searched (space, vectors, exact or approximate, time) and whether the query was embedded by
//! a fallback step, and names images by content hash, never by absolute path.

use std::path::{Path, PathBuf};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query};
use serde::{Deserialize, Serialize};

use super::*;
use crate::search::{search_collection, Hit, Method, SearchError};
use crate::store::{Cache, StoreError};
use crate::types::{Provenance, StepKind};

/// Results one request may ask for, and how deep paging may go: enough for a person scrolling,
/// not a way to dump the collection in one request.
const MAX_K: usize = 200;
const MAX_DEPTH: usize = 10_000;
const DEFAULT_K: usize = 24;
/// File names listed per hit (the count of copies is always whole).
const MAX_FILES: usize = 20;

/// The query string the routes share.
#[derive(Debug, Default, Deserialize)]
pub(in crate::server) struct PageQuery {
    /// The words (for `/search`).
    q: Option<String>,
    /// Results per page.
    k: Option<usize>,
    /// Results to skip ("load more").
    offset: Option<usize>,
    /// `exact`, `approximate` or `auto` (the default).
    method: Option<String>,
    /// For `/similar`: the space to compare in (default: the image's best stored answer).
    space: Option<String>,
    /// For `/similar`: keep the image itself among the results (the page's image mode, where
    /// the query image may be part of the collection).
    #[serde(rename = "self")]
    include_self: Option<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Asked {
    offset: usize,
    k: usize,
    method: Method,
}

impl PageQuery {
    fn parse(query: Result<Query<PageQuery>, QueryRejection>) -> Result<PageQuery, Failure> {
        query
            .map(|Query(q)| q)
            .map_err(|e| Failure::bad(format!("bad query string: {}", e.body_text())))
    }

    fn asked(&self) -> Result<Asked, Failure> {
        let k = self.k.unwrap_or(DEFAULT_K);
        if !(1..=MAX_K).contains(&k) {
            return Err(Failure::bad(format!("k must be from 1 to {MAX_K}")));
        }
        let offset = self.offset.unwrap_or(0);
        if offset.saturating_add(k) > MAX_DEPTH {
            return Err(Failure::bad(format!(
                "offset + k must be at most {MAX_DEPTH}: refine the query instead"
            )));
        }
        let method = match self.method.as_deref() {
            None | Some("auto") => Method::Auto,
            Some("exact") => Method::Exact,
            Some("approximate") => Method::Approximate,
            Some(other) => {
                return Err(Failure::bad(format!(
                    "method {other:?} is not one of exact, approximate, auto"
                )))
            }
        };
        Ok(Asked { offset, k, method })
    }
}

/// One result as the page shows it.
#[derive(Debug, Serialize)]
struct PageHit {
    /// Content hash: the image's only name on the wire.
    image: String,
    score: f32,
    /// Paths relative to the indexed folder holding them (a bare file name when none does):
    /// absolute paths would tell a caller how the server's disk is laid out.
    files: Vec<String>,
    /// Files with this same content (copies are shown once).
    copies: usize,
    /// The cached description, when a describer wrote one: caption and alt text.
    description: Option<String>,
    thumb: String,
}

/// Why the query did not come from the chain's first step, and what to do.
#[derive(Debug, Serialize)]
struct Fallback {
    step: usize,
    step_kind: StepKind,
    attempts: Vec<crate::types::Attempt>,
    message: String,
}

#[derive(Debug, Serialize)]
struct PageAnswer {
    /// `text`, `image` or `similar`.
    mode: &'static str,
    /// The query image's content hash (image and similar modes): `/similar/{hash}?self=true`
    /// runs the same search again without sending the image.
    query_image: Option<String>,
    space: String,
    /// Vectors in the space (0 when nothing is stored in it).
    searched: usize,
    method: Method,
    offset: usize,
    k: usize,
    /// Whether a next page holds anything.
    more: bool,
    /// Time to embed the query and search, in milliseconds.
    ms: f64,
    /// The query came from a fallback step.
    degraded: bool,
    fallback: Option<Fallback>,
    /// Set when nothing could be compared (no stored vector in the query's space): why.
    notice: Option<String>,
    hits: Vec<PageHit>,
}

fn fallback(p: &Provenance) -> Option<Fallback> {
    if !p.degraded {
        return None;
    }
    let what = if p.step_kind == StepKind::Hash {
        "the hash step compares pixels, not meaning: results are near-duplicates only"
    } else {
        "results may be worse than usual"
    };
    Some(Fallback {
        step: p.step,
        step_kind: p.step_kind,
        attempts: p.attempts.clone(),
        message: format!(
            "the query was embedded by a fallback step (step {}, {}) in space {}; {what}. \
             Run `imbed doctor` to see why the earlier steps did not answer.",
            p.step, p.step_kind, p.space
        ),
    })
}

/// How a path is shown: relative to the indexed folder that holds it, else its file name.
fn shown(path: &Path, roots: &[PathBuf]) -> String {
    let name = || {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    roots
        .iter()
        .filter_map(|r| path.strip_prefix(r).ok())
        .find(|rest| !rest.as_os_str().is_empty())
        .map(|rest| rest.to_string_lossy().into_owned())
        .unwrap_or_else(name)
}

fn page_hits(store: &Cache, space: &str, hits: &[Hit]) -> Result<Vec<PageHit>, StoreError> {
    let roots = store.roots()?;
    hits.iter()
        .map(|h| {
            let description = store
                .entry_embedding(&h.image, space)?
                .and_then(|e| e.provenance.description)
                .map(|d| d.text);
            let mut files: Vec<String> = h.paths.iter().map(|p| shown(p, &roots)).collect();
            // The shallowest name first: the page shows it, and a copy usually sits deeper.
            files.sort_by(|a, b| (a.matches('/').count(), a).cmp(&(b.matches('/').count(), b)));
            files.truncate(MAX_FILES);
            Ok(PageHit {
                image: h.image.clone(),
                score: h.score,
                files,
                copies: h.paths.len(),
                description,
                thumb: format!("/thumb/{}", h.image),
            })
        })
        .collect()
}

fn search_failure(e: SearchError) -> Failure {
    if let SearchError::Store(e) = e {
        return store_failure(e);
    }
    Failure {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: e.to_string(),
        attempts: vec![],
    }
}

/// What a page search compares with: a vector in a space, with where it came from.
struct Compared {
    mode: &'static str,
    provenance: Provenance,
    vector: Vec<f32>,
    query_image: Option<String>,
    exclude: Option<String>,
}

async fn answer(
    store: Cache,
    query: Compared,
    asked: Asked,
    started: Instant,
) -> Result<Response, Failure> {
    let space = query.provenance.space.to_string();
    let (vector, exclude) = (query.vector, query.exclude);
    let (found, notice) = blocking(move || {
        let found = search_collection(
            &store,
            &space,
            &vector,
            asked.offset,
            asked.k,
            asked.method,
            exclude.as_deref(),
        );
        match found {
            Ok((result, more)) => {
                let hits = page_hits(&store, &space, &result.hits).map_err(store_failure)?;
                Ok((Some((result, hits, more)), None))
            }
            // Not a failure of the request: the page says why and what to do.
            Err(e @ SearchError::EmptySpace { .. }) => Ok((None, Some(e.to_string()))),
            Err(e) => Err(search_failure(e)),
        }
    })
    .await?;
    let (searched, method, more, hits) = match found {
        Some((result, hits, more)) => (result.searched, result.method, more, hits),
        None => (0, asked.method, false, Vec::new()),
    };
    let body = PageAnswer {
        mode: query.mode,
        query_image: query.query_image,
        space: query.provenance.space.to_string(),
        searched,
        method,
        offset: asked.offset,
        k: asked.k,
        more,
        ms: started.elapsed().as_secs_f64() * 1000.0,
        degraded: query.provenance.degraded,
        fallback: fallback(&query.provenance),
        notice,
        hits,
    };
    Ok(axum::Json(body).into_response())
}

fn finish(result: Result<Response, Failure>) -> Response {
    harden(result.unwrap_or_else(|f| f.respond(Api::Native)))
}

pub(in crate::server) async fn page_search(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    finish(text_search(&state, query).await)
}

async fn text_search(
    state: &AppState,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let q = PageQuery::parse(query)?;
    let asked = q.asked()?;
    let text =
        q.q.as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Failure::bad("send the words to search for as ?q=..."))?
            .to_string();
    let store = store_of(state)?;
    let started = Instant::now();
    let imbed = state.imbed();
    let result = imbed.embed_text(&text).await;
    state.metrics.outcome(&result, started.elapsed());
    let e = result?;
    let query = Compared {
        mode: "text",
        provenance: e.provenance,
        vector: e.vector,
        query_image: None,
        exclude: None,
    };
    answer(store, query, asked, started).await
}

pub(in crate::server) async fn page_search_image(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
    request: Request,
) -> Response {
    finish(image_search(&state, query, request).await)
}

async fn image_search(
    state: &AppState,
    query: Result<Query<PageQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, Failure> {
    let asked = PageQuery::parse(query)?.asked()?;
    let store = store_of(state)?;
    let (req, _) = image_request_from(state, request).await?;
    let started = Instant::now();
    let imbed = state.imbed();
    let image = imbed.load_image(&req.source).await?;
    let result = imbed
        .embed_valid_image(&image, req.description.as_deref())
        .await;
    state.metrics.outcome(&result, started.elapsed());
    let e = result?;
    // The query image itself is not left out: when it is part of the collection, it is the
    // best match there is. An uploaded image that is not has no file, so it is never a hit.
    let query = Compared {
        mode: "image",
        provenance: e.provenance,
        vector: e.vector,
        query_image: Some(image.sha256.clone()),
        exclude: None,
    };
    answer(store, query, asked, started).await
}

pub(in crate::server) async fn page_similar(
    State(state): State<AppState>,
    UrlPath(hash): UrlPath<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    finish(similar(&state, hash, query).await)
}

async fn similar(
    state: &AppState,
    hash: String,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let q = PageQuery::parse(query)?;
    let asked = q.asked()?;
    let hash = content_hash(&hash).ok_or_else(no_such_image)?.to_string();
    let store = store_of(state)?;
    let started = Instant::now();
    let (for_lookup, image, wanted) = (store.clone(), hash.clone(), q.space.clone());
    // No model runs: the image's stored answer is the query.
    let stored = blocking(move || {
        let entries = for_lookup.entries_of(&image).map_err(store_failure)?;
        let entry = match &wanted {
            Some(space) => entries.iter().find(|e| &e.space == space),
            // The latest answer from a first-choice step, else the latest of any.
            None => entries
                .iter()
                .rev()
                .find(|e| !e.degraded)
                .or(entries.last()),
        };
        match entry {
            Some(entry) => for_lookup
                .entry_embedding(&image, &entry.space)
                .map_err(store_failure),
            None => Ok(None),
        }
    })
    .await?
    .ok_or_else(|| match &q.space {
        Some(space) => Failure {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "no indexed image with that content hash has a vector in space {space:?}"
            ),
            attempts: vec![],
        },
        None => no_such_image(),
    })?;
    let include_self = q.include_self.unwrap_or(false);
    let query = Compared {
        mode: if include_self { "image" } else { "similar" },
        provenance: stored.provenance,
        vector: stored.vector,
        query_image: Some(hash.clone()),
        exclude: (!include_self).then_some(hash),
    };
    answer(store, query, asked, started).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_shown_relative_to_their_folder_or_by_name() {
        let roots = vec![PathBuf::from("/srv/photos"), PathBuf::from("/srv/one.jpg")];
        assert_eq!(
            shown(Path::new("/srv/photos/2019/beach.jpg"), &roots),
            "2019/beach.jpg"
        );
        assert_eq!(shown(Path::new("/srv/one.jpg"), &roots), "one.jpg");
        assert_eq!(shown(Path::new("/home/me/x.png"), &roots), "x.png");
    }

    #[test]
    fn paging_is_bounded() {
        let q = |k, offset| PageQuery {
            k,
            offset,
            ..PageQuery::default()
        };
        assert_eq!(q(None, None).asked().unwrap().k, DEFAULT_K);
        assert!(q(Some(0), None).asked().is_err());
        assert!(q(Some(MAX_K + 1), None).asked().is_err());
        assert!(q(Some(10), Some(MAX_DEPTH)).asked().is_err());
        let bad = PageQuery {
            method: Some("fast".into()),
            ..PageQuery::default()
        };
        assert!(bad.asked().is_err());
    }
}
