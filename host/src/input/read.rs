//! Reading an image's bytes from where the caller has it (a file, a URL, base64, bytes), within
//! the size cap and the download deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::InputLimits;
use super::{InputError, UrlGuard};

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
        ImageSource::Path(path) => read_path(path, limits).await,
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

/// Read up to `max_bytes` from `reader`; one byte more is refused, so a stream that never ends
/// costs at most the cap in memory. For stdin; `label` names the input in errors.
pub fn read_capped(
    reader: impl std::io::Read,
    label: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, InputError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    reader
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| InputError::Read {
            path: PathBuf::from(label),
            source,
        })?;
    if bytes.len() as u64 > max_bytes {
        return Err(InputError::TooManyBytes {
            label: label.to_string(),
            limit: max_bytes,
        });
    }
    Ok(bytes)
}

/// Read a file, or a pipe, never more than the cap. The size in the metadata is only a hint:
/// it is 0 for pipes, devices and `/proc` files, so the cap is enforced while reading.
async fn read_path(path: &Path, limits: &InputLimits) -> Result<Vec<u8>, InputError> {
    let read = |source| InputError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_many = || InputError::TooManyBytes {
        label: path.display().to_string(),
        limit: limits.max_bytes,
    };
    let meta = tokio::fs::metadata(path).await.map_err(read)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(read(std::io::Error::other(
            "it is a directory, not an image file",
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        // A device is no image file, and reading one can block forever (a terminal) or never
        // end (/dev/zero); a socket cannot be opened at all.
        let what = if kind.is_char_device() {
            Some("character device")
        } else if kind.is_block_device() {
            Some("block device")
        } else if kind.is_socket() {
            Some("socket")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(InputError::NotAFile {
                path: path.to_path_buf(),
                what,
            });
        }
        if kind.is_fifo() {
            return read_fifo(path, limits).await;
        }
    }
    if meta.len() > limits.max_bytes {
        return Err(too_many());
    }
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await.map_err(read)?;
    let mut bytes = Vec::with_capacity(meta.len().min(limits.max_bytes) as usize);
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(read)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_many());
    }
    Ok(bytes)
}

/// A named pipe (`mkfifo`, or `<(command)` in a shell) is read without blocking a thread, up to
/// the cap and within the download deadline: its writer may never finish.
#[cfg(unix)]
async fn read_fifo(path: &Path, limits: &InputLimits) -> Result<Vec<u8>, InputError> {
    let read = |source| InputError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking open: a blocking one would wait for a writer that may never come.
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(read)?;
    let work = async {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        // Before any writer has opened the pipe, a read says "end of data" at once; only a
        // read that would block proves a writer is there, so until then an empty read is
        // waited out rather than taken for the end.
        let mut writer_seen = false;
        loop {
            receiver.readable().await.map_err(read)?;
            match receiver.try_read(&mut chunk) {
                Ok(0) if writer_seen || !bytes.is_empty() => return Ok(bytes),
                Ok(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(n) => {
                    writer_seen = true;
                    if (bytes.len() + n) as u64 > limits.max_bytes {
                        return Err(InputError::TooManyBytes {
                            label: path.display().to_string(),
                            limit: limits.max_bytes,
                        });
                    }
                    bytes.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => writer_seen = true,
                Err(e) => return Err(read(e)),
            }
        }
    };
    match tokio::time::timeout(limits.download_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(read(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the pipe did not end within {} ms: its writer did not finish (raise [input] download_timeout_ms if it needs longer)",
                limits.download_timeout.as_millis()
            ),
        ))),
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
        guard.check_url(&parsed).map_err(|e| fail(e.to_string()))?;
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

    #[test]
    fn a_stream_is_read_up_to_the_cap_and_no_further() {
        let e = read_capped(std::io::repeat(0), "<stdin>", 1000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the image <stdin> is larger than 1000 bytes: shrink it or raise [input] max_bytes"
        );
        assert_eq!(
            read_capped(&[7u8; 1000][..], "<stdin>", 1000)
                .unwrap()
                .len(),
            1000
        );
    }
}
