//! Reading an image's bytes from where the caller has it (a file, a URL, base64, bytes), within
//! the size cap and the download deadline.

use std::path::PathBuf;

use base64::Engine as _;

use super::{InputError, UrlGuard};
use crate::config::InputLimits;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageSource {
    /// A file.
    Path(PathBuf),
    /// An `http://` or `https://` URL, downloaded with the configured deadline and size cap.
    Url(String),
    /// Base64 text, raw or as a `data:` URI.
    Base64(String),
    /// Encoded image bytes (for example, read from stdin).
    Bytes(Vec<u8>),
}

impl ImageSource {
    /// A short label for messages and output: the path or URL, or the kind of inline data.
    pub fn label(&self) -> String {
        match self {
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Url(u) => u.clone(),
            ImageSource::Base64(_) => "<base64>".into(),
            ImageSource::Bytes(_) => "<bytes>".into(),
        }
    }
}

/// Decode base64 image text: standard or URL-safe alphabet, with or without padding, whitespace
/// ignored, optionally as a `data:<mime>;base64,` URI.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, InputError> {
    let text = text.trim();
    let payload = if let Some(rest) = text.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            InputError::Base64("the data: URI has no comma before its data".into())
        })?;
        if !meta.ends_with(";base64") {
            return Err(InputError::Base64(format!(
                "the data: URI is not base64-encoded (`data:{meta},...`): use `data:image/png;base64,...`"
            )));
        }
        data
    } else {
        text
    };
    let cleaned: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if cleaned.is_empty() {
        return Err(InputError::Base64(
            "no data after removing whitespace".into(),
        ));
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let engines = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD];
    let mut first_error = None;
    for engine in engines {
        match engine.decode(&cleaned) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(InputError::Base64(format!(
        "{}: check the text was copied whole",
        first_error.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Read the bytes of a source, enforcing the size cap and the download deadline.
pub(crate) async fn read_source(
    source: &ImageSource,
    limits: &InputLimits,
    http: &reqwest::Client,
    guard: Option<&UrlGuard>,
) -> Result<Vec<u8>, InputError> {
    let label = source.label();
    let too_many = || InputError::TooManyBytes {
        label: label.clone(),
        limit: limits.max_bytes,
    };
    match source {
        ImageSource::Path(path) => {
            let read = |source| InputError::Read {
                path: path.clone(),
                source,
            };
            let meta = tokio::fs::metadata(path).await.map_err(read)?;
            if meta.is_dir() {
                return Err(InputError::Read {
                    path: path.clone(),
                    source: std::io::Error::other("it is a directory, not an image file"),
                });
            }
            if meta.len() > limits.max_bytes {
                return Err(too_many());
            }
            tokio::fs::read(path).await.map_err(read)
        }
        ImageSource::Bytes(bytes) => {
            if bytes.len() as u64 > limits.max_bytes {
                return Err(too_many());
            }
            Ok(bytes.clone())
        }
        ImageSource::Base64(text) => {
            // Base64 is 4/3 the size of its bytes: refuse before decoding a huge string.
            if (text.len() as u64).saturating_mul(3) / 4 > limits.max_bytes + 3 {
                return Err(too_many());
            }
            decode_base64(text)
        }
        ImageSource::Url(url) => download(url, limits, http, guard).await,
    }
}

async fn download(
    url: &str,
    limits: &InputLimits,
    http: &reqwest::Client,
    guard: Option<&UrlGuard>,
) -> Result<Vec<u8>, InputError> {
    let fail = |message: String| InputError::Download {
        url: url.to_string(),
        message,
    };
    let parsed = url::Url::parse(url).map_err(|e| fail(format!("not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(fail(format!(
            "scheme {}: is not allowed; use http or https",
            parsed.scheme()
        )));
    }
    if let Some(guard) = guard {
        guard.check_url(&parsed).map_err(fail)?;
    }
    let work = async {
        let mut response = http
            .get(parsed)
            .send()
            .await
            .map_err(|e| fail(describe_reqwest(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("the server answered {status}")));
        }
        if response
            .content_length()
            .is_some_and(|n| n > limits.max_bytes)
        {
            return Err(InputError::TooManyBytes {
                label: url.to_string(),
                limit: limits.max_bytes,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(describe_reqwest(&e)))?
        {
            if (body.len() + chunk.len()) as u64 > limits.max_bytes {
                return Err(InputError::TooManyBytes {
                    label: url.to_string(),
                    limit: limits.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match tokio::time::timeout(limits.download_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(fail(format!(
            "no complete answer within {} ms: check the URL or raise [input] download_timeout_ms",
            limits.download_timeout.as_millis()
        ))),
    }
}

pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    // reqwest's Display stops at the outermost layer; the cause (refused, DNS) is what helps.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_variants_decode_and_garbage_is_named() {
        let raw = b"\x89PNG hello";
        let std = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(decode_base64(&std).unwrap(), raw);
        assert_eq!(
            decode_base64(&format!("data:image/png;base64,{std}")).unwrap(),
            raw
        );
        assert_eq!(decode_base64(std.trim_end_matches('=')).unwrap(), raw);
        assert!(matches!(
            decode_base64("not base64!!"),
            Err(InputError::Base64(_))
        ));
        assert!(matches!(
            decode_base64("data:image/png,abc"),
            Err(InputError::Base64(_))
        ));
    }
}
