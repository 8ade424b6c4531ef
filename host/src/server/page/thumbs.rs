//! `GET /thumb/{hash}`: a small copy of an indexed image, by content hash only.
//!
//! The server serves a file only when (1) the store knows a path for that content, (2) the path,
//! with every link resolved, lies under a folder `imbed index` was given (also resolved), and
//! (3) the file still holds that content: its size and mtime match the record, or, when they do
//! not, its bytes hash to it. A thumbnail is made only from bytes that hash to the requested
//! content, so a file swapped in between the check and the read is never shown. Thumbnails are
//! kept beside the database, named by content, and only served after the same checks.

use std::io::Read;
use std::path::{Path, PathBuf};

use axum::extract::Path as UrlPath;
use sha2::{Digest, Sha256};

use super::*;
use crate::input::{hex, thumbnail};
use crate::store::Cache;

/// The longer side of a thumbnail: a grid cell at twice the density of a phone's screen.
const THUMB_SIDE: u32 = 320;

/// A thumbnail as served.
struct Thumb {
    data: Vec<u8>,
    mime: &'static str,
}

/// A file that holds the content, found under an indexed folder.
enum Source {
    /// Unchanged since it was indexed (size and mtime match).
    Unchanged(PathBuf),
    /// Changed on disk but still the same content: its bytes, already read and hashed.
    Rehashed(Vec<u8>),
}

pub(in crate::server) async fn page_thumb(
    State(state): State<AppState>,
    UrlPath(hash): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let keyed = !state.settings.api_keys.is_empty();
    harden(
        thumb(&state, hash, &headers, keyed)
            .await
            .unwrap_or_else(|f| f.respond(Api::Native)),
    )
}

async fn thumb(
    state: &AppState,
    hash: String,
    headers: &HeaderMap,
    keyed: bool,
) -> Result<Response, Failure> {
    let hash = content_hash(&hash).ok_or_else(no_such_image)?.to_string();
    let store = store_of(state)?;
    let limits = state.imbed().config().input.clone();
    let etag = format!("\"{hash}-{THUMB_SIDE}\"");
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag));
    let thumb = blocking(move || {
        // The checks run first even for a client that has the thumbnail already: a 304 for a
        // file that is gone would still say the content is here.
        let Some(source) = find_source(&store, &hash, limits.max_bytes)? else {
            return Ok(None);
        };
        if not_modified {
            return Ok(Some(None));
        }
        let thumb = cached_or_made(&store, &hash, source, &limits)?;
        Ok(thumb.map(Some))
    })
    .await?
    .ok_or_else(no_such_image)?;
    // Anyone may keep a copy when the server is open; with API keys only the browser may, since
    // a shared cache would hand it to callers without a key.
    let cache_control = if keyed {
        "private, max-age=31536000, immutable"
    } else {
        "public, max-age=31536000, immutable"
    };
    let mut response = match thumb {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(t) => {
            let mut r = t.data.into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(t.mime));
            r
        }
    };
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // An image, not a page: even opened on its own, it runs nothing.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(response)
}

/// `If-None-Match` holds `*` or a list of (possibly weak) tags.
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// A file under an indexed folder that still holds `hash`, if there is one.
fn find_source(store: &Cache, hash: &str, max_bytes: u64) -> Result<Option<Source>, Failure> {
    let roots: Vec<PathBuf> = store.roots().map_err(store_failure)?;
    if roots.is_empty() {
        tracing::debug!("no indexed folders are recorded: run `imbed index <folder>` once so the search page may show its files");
        return Ok(None);
    }
    for path in store.paths_of(hash).map_err(store_failure)? {
        // Links resolved: a link inside a folder that points outside it is outside.
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if !roots.iter().any(|r| real.starts_with(r)) || !real.is_file() {
            continue;
        }
        let recorded = store.file(&path).map_err(store_failure)?;
        let stamp = crate::store::file_stamp(&real);
        let unchanged = matches!((&recorded, stamp), (Some(r), Some((size, mtime)))
            if r.sha256 == hash && r.size == size && r.mtime_ns == mtime);
        if unchanged {
            return Ok(Some(Source::Unchanged(real)));
        }
        if let Some(bytes) = read_capped(&real, max_bytes) {
            if hex(&Sha256::digest(&bytes)) == hash {
                return Ok(Some(Source::Rehashed(bytes)));
            }
        }
    }
    Ok(None)
}

fn read_capped(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max_bytes).then_some(bytes)
}

fn cache_path(store: &Cache, hash: &str, ext: &str) -> PathBuf {
    store.thumb_dir().join(format!("{hash}-{THUMB_SIDE}.{ext}"))
}

/// The stored thumbnail, or one made now from `source` (and stored).
fn cached_or_made(
    store: &Cache,
    hash: &str,
    source: Source,
    limits: &crate::config::InputLimits,
) -> Result<Option<Thumb>, Failure> {
    for (ext, mime) in [("jpg", "image/jpeg"), ("png", "image/png")] {
        if let Ok(data) = std::fs::read(cache_path(store, hash, ext)) {
            return Ok(Some(Thumb { data, mime }));
        }
    }
    let bytes = match source {
        Source::Rehashed(bytes) => bytes,
        Source::Unchanged(path) => match read_capped(&path, limits.max_bytes) {
            Some(bytes) => bytes,
            None => return Ok(None),
        },
    };
    let made = match thumbnail(&bytes, &format!("image {hash}"), limits, THUMB_SIDE) {
        Ok(t) => t,
        // An indexed file that no longer decodes (or has grown past the input limits) has
        // nothing to show.
        Err(e) => {
            tracing::info!("no thumbnail for {hash}: {e}");
            return Ok(None);
        }
    };
    // Made only from bytes of this very content: a file swapped after the checks is refused.
    if made.sha256 != hash {
        return Ok(None);
    }
    let ext = if made.mime_type == "image/png" {
        "png"
    } else {
        "jpg"
    };
    if let Err(e) = keep(&cache_path(store, hash, ext), &made.data) {
        tracing::warn!(
            "cannot keep the thumbnail of {hash} in {}: {e}",
            store.thumb_dir().display()
        );
    }
    Ok(Some(Thumb {
        data: made.data,
        mime: made.mime_type,
    }))
}

/// Write then rename: a reader never sees half a thumbnail. Two requests making the same one at
/// once each write their own temporary file; the second rename replaces equal bytes.
fn keep(path: &Path, data: &[u8]) -> std::io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let tag = "\"abc-320\"";
        assert!(etag_matches("\"abc-320\"", tag));
        assert!(etag_matches("\"x\", W/\"abc-320\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"abc-64\"", tag));
    }
}
