//! Reading images from where callers have them, and validating them before any plugin sees them.

use std::io::Cursor;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use image::{ImageDecoder as _, ImageFormat, ImageReader};
use sha2::{Digest, Sha256};

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

/// Why an input could not be used. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The URL could not be downloaded.
    #[error("cannot download {url}: {message}")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The base64 text is not valid.
    #[error("invalid base64 image: {0}")]
    Base64(String),
    /// The input has no bytes.
    #[error("the image {0} is empty (0 bytes)")]
    Empty(String),
    /// The input is larger than the configured cap.
    #[error(
        "the image {label} is larger than {limit} bytes: shrink it or raise [input] max_bytes"
    )]
    TooManyBytes {
        /// Which input.
        label: String,
        /// The cap.
        limit: u64,
    },
    /// The bytes are not an image format imbed reads.
    #[error("{label} is not an image imbed can read ({detail}): use PNG, JPEG, GIF, WebP or BMP")]
    NotAnImage {
        /// Which input.
        label: String,
        /// What was seen.
        detail: String,
    },
    /// The image header announces more pixels than allowed; nothing was decoded.
    #[error("the image {label} is {width}x{height} pixels, over the limit of {limit}: downscale it or raise [input] {key}")]
    TooLarge {
        /// Which input.
        label: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit that was exceeded, as text.
        limit: String,
        /// The config key that sets it.
        key: &'static str,
    },
    /// The file ends before its image data does (a cut-off download or copy).
    #[error("the {format} image {label} is truncated: the file ends before the image data does; copy or download it again")]
    Truncated {
        /// Which input.
        label: String,
        /// The format from the header.
        format: String,
    },
    /// The path names something that is not a file or a pipe (a device, a socket).
    #[error("cannot read {path}: it is a {what}, not an image file; give a file, a pipe, a URL or `-` for stdin")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// The image is truncated or corrupt.
    #[error("the {format} image {label} is truncated or corrupt: {detail}")]
    Corrupt {
        /// Which input.
        label: String,
        /// The format from the header.
        format: String,
        /// The decoder's message.
        detail: String,
    },
}

/// An image that passed validation: what plugins receive.
#[derive(Debug, Clone)]
pub struct ValidImage {
    /// PNG or JPEG bytes.
    pub data: Arc<[u8]>,
    /// `image/png` or `image/jpeg`.
    pub mime_type: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// SHA-256 of the bytes as the caller gave them, hex: the image's identity.
    pub sha256: String,
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

/// The address policy for image URLs from untrusted callers (the HTTP service): fetching a URL
/// on a caller's behalf must not reach loopback, private, link-local or cloud-metadata
/// addresses, unless a deployment opens them on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlGuard {
    /// Host names that may resolve to non-public addresses (exact, case-insensitive).
    pub allow_hosts: Vec<String>,
    /// Addresses that may be reached even though they are not public.
    pub allow_ips: Vec<IpAddr>,
}

impl UrlGuard {
    fn allowed(&self, host: &str, ip: IpAddr) -> bool {
        is_public(ip)
            || self.allow_ips.contains(&ip)
            || self
                .allow_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Check a URL before a request or a redirect: http(s) only, and a literal IP must be
    /// allowed (host names are checked when they resolve, on the address then connected to).
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "scheme {}: is not allowed; use http or https",
                url.scheme()
            ));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("the URL has no host".into()),
        };
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']');
        if self.allowed(host, ip) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is not a public address: imbed does not fetch from loopback, private, link-local or metadata addresses for callers (list it in [server] url_allow to open it)"
            ))
        }
    }

    /// An HTTP client that enforces this guard: every name is resolved by the guard, which
    /// drops non-public addresses, and reqwest connects to exactly the addresses it returns, so
    /// a DNS answer that changes between check and use (rebinding) cannot slip through.
    /// Redirects are checked hop by hop; proxies are not used (they would resolve for us).
    pub fn client(&self, user_agent: &str) -> Result<reqwest::Client, String> {
        let guard = std::sync::Arc::new(self.clone());
        let redirect_guard = guard.clone();
        reqwest::Client::builder()
            .no_proxy()
            .user_agent(user_agent)
            .dns_resolver(std::sync::Arc::new(GuardedResolver { guard }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("more than 5 redirects");
                }
                match redirect_guard.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => {
                        let to = attempt.url().to_string();
                        attempt.error(format!("redirect to {to} refused: {e}"))
                    }
                }
            }))
            .build()
            .map_err(|e| format!("cannot build the guarded HTTP client: {e}"))
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// multicast, documentation or otherwise special).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the metadata address
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7 (includes fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: may embed a private IPv4
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

struct GuardedResolver {
    guard: std::sync::Arc<UrlGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| guard.allowed(&host, a.ip()))
                .collect();
            if allowed.is_empty() {
                let seen: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves to {} only, which is not public: imbed does not fetch from loopback, private, link-local or metadata addresses for callers",
                    seen.join(", ")
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
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

/// Check an encoded image: a known format, within the pixel limits (read from the header before
/// anything is decoded), and decodable to the end. Anything that is not PNG or JPEG is
/// re-encoded to PNG, so plugins only ever see those two. CPU-bound: run it off the async threads.
pub fn validate(
    bytes: Vec<u8>,
    label: &str,
    limits: &InputLimits,
) -> Result<ValidImage, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty(label.to_string()));
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(InputError::TooManyBytes {
            label: label.to_string(),
            limit: limits.max_bytes,
        });
    }
    let sha256 = hex(&Sha256::digest(&bytes));
    let format = image::guess_format(&bytes).map_err(|_| InputError::NotAnImage {
        label: label.to_string(),
        detail: sniff(&bytes),
    })?;
    let format_name = format!("{format:?}").to_uppercase();
    let corrupt = |detail: String| InputError::Corrupt {
        label: label.to_string(),
        format: format_name.clone(),
        detail,
    };
    // Decoders paper over a missing end (the JPEG decoder paints it grey): look at the file's
    // own structure first, so a cut-off download is named for what it is.
    let truncated = || InputError::Truncated {
        label: label.to_string(),
        format: format_name.clone(),
    };
    if complete::check(format, &bytes) == complete::Completeness::Truncated {
        return Err(truncated());
    }

    let (width, height) = ImageReader::with_format(Cursor::new(&bytes), format)
        .into_dimensions()
        .map_err(|e| match e {
            image::ImageError::Unsupported(_) => InputError::NotAnImage {
                label: label.to_string(),
                detail: format!("{format_name} is not supported"),
            },
            other if ends_early(&other) => truncated(),
            other => corrupt(other.to_string()),
        })?;
    if width == 0 || height == 0 {
        return Err(corrupt(format!("the header says {width}x{height} pixels")));
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(InputError::TooLarge {
            label: label.to_string(),
            width,
            height,
            limit: format!("{} pixels per side", limits.max_side),
            key: "max_side",
        });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(InputError::TooLarge {
            label: label.to_string(),
            width,
            height,
            limit: format!("{} pixels", limits.max_pixels),
            key: "max_pixels",
        });
    }

    let mut reader = ImageReader::with_format(Cursor::new(&bytes), format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    // RGBA16 is the widest layout the decoders produce.
    decode_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(decode_limits);
    let decode_error = |e: image::ImageError| {
        if ends_early(&e) {
            truncated()
        } else {
            corrupt(e.to_string())
        }
    };
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    // Cameras store most photos sideways and record the turn in EXIF; every plugin and the
    // hash signature must see the picture upright, so it is turned here, once. A tag that
    // cannot be read is no reason to refuse the pixels: the image is then taken as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut decoded = image::DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    let turned = orientation != image::metadata::Orientation::NoTransforms;
    if turned {
        decoded.apply_orientation(orientation);
    }

    let (data, mime_type): (Arc<[u8]>, _) = match format {
        ImageFormat::Png if !turned => (bytes.into(), "image/png"),
        ImageFormat::Jpeg if !turned => (bytes.into(), "image/jpeg"),
        // A turned JPEG stays a JPEG (quality 95: a photo as PNG would be many times the size).
        // Neither re-encoding carries the EXIF tag, so nothing downstream turns it again.
        ImageFormat::Jpeg => (
            encode_jpeg(&decoded, 95)
                .map_err(|e| corrupt(format!("cannot re-encode the turned image: {e}")))?
                .into(),
            "image/jpeg",
        ),
        _ => {
            let mut out = Vec::new();
            decoded
                .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
                .map_err(|e| corrupt(format!("cannot re-encode as PNG: {e}")))?;
            (out.into(), "image/png")
        }
    };
    Ok(ValidImage {
        data,
        mime_type,
        width: decoded.width(),
        height: decoded.height(),
        sha256,
    })
}

/// JPEG holds grey or RGB only: anything else is converted to RGB first.
fn encode_jpeg(image: &image::DynamicImage, quality: u8) -> image::ImageResult<Vec<u8>> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    match image {
        image::DynamicImage::ImageLuma8(gray) => gray.write_with_encoder(encoder)?,
        other => other.to_rgb8().write_with_encoder(encoder)?,
    }
    Ok(out)
}

/// Whether a decoder failed because the data ran out (rather than because it is wrong).
fn ends_early(e: &image::ImageError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// A copy of `image` whose longer side is at most `max_side` pixels (aspect kept), re-encoded in
/// its own format; the image itself when it is already small enough. CPU-bound.
pub fn downsize(image: &ValidImage, max_side: u32) -> Result<ValidImage, InputError> {
    if image.width.max(image.height) <= max_side {
        return Ok(image.clone());
    }
    let corrupt = |detail: String| InputError::Corrupt {
        label: image.sha256.clone(),
        format: image.mime_type.to_string(),
        detail,
    };
    let decoded = image::load_from_memory(&image.data).map_err(|e| corrupt(e.to_string()))?;
    // Triangle filtering is a good speed/quality balance for large reductions.
    let small = decoded.resize(max_side, max_side, image::imageops::FilterType::Triangle);
    let mut out = Vec::new();
    let format = if image.mime_type == "image/jpeg" {
        ImageFormat::Jpeg
    } else {
        ImageFormat::Png
    };
    let written =
        match format {
            ImageFormat::Jpeg => small.to_rgb8().write_with_encoder(
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90),
            ),
            _ => small.write_to(&mut Cursor::new(&mut out), ImageFormat::Png),
        };
    written.map_err(|e| corrupt(format!("cannot re-encode the downsized image: {e}")))?;
    Ok(ValidImage {
        data: out.into(),
        mime_type: image.mime_type,
        width: small.width(),
        height: small.height(),
        // The identity stays the original's: a downsized copy is the same input.
        sha256: image.sha256.clone(),
    })
}

fn sniff(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(512)];
    let text = String::from_utf8_lossy(head).to_lowercase();
    if text.trim_start().starts_with("<!doctype html") || text.contains("<html") {
        "it looks like an HTML page".into()
    } else if head
        .iter()
        .all(|b| b.is_ascii() && (!b.is_ascii_control() || b.is_ascii_whitespace()))
    {
        "it looks like text".into()
    } else {
        format!("{} bytes of unknown data", bytes.len())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an encoded image reaches its own end. Decoders are no help here: the JPEG decoder
/// fills missing data with grey and the GIF decoder stops after the first frame, so each
/// format's structure is walked far enough to see where its data ends. Bytes after that end
/// are fine (some tools append them); an end before it is a truncated file.
mod complete {
    use image::ImageFormat;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Completeness {
        /// The data reaches the format's end marker (or its declared size).
        Complete,
        /// The file ends first.
        Truncated,
        /// The structure is not what the walk expects: the decoder will judge it.
        Unknown,
    }
    use Completeness::*;

    pub(super) fn check(format: ImageFormat, bytes: &[u8]) -> Completeness {
        match format {
            ImageFormat::Jpeg => jpeg(bytes),
            ImageFormat::Png => png(bytes),
            ImageFormat::Gif => gif(bytes),
            ImageFormat::WebP => webp(bytes),
            ImageFormat::Bmp => bmp(bytes),
            _ => Unknown,
        }
    }

    fn be16(b: &[u8], at: usize) -> Option<usize> {
        Some(usize::from(u16::from_be_bytes(
            b.get(at..at + 2)?.try_into().ok()?,
        )))
    }

    fn le16(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn le32(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    /// Segments from SOI to EOI; after each start-of-scan, the entropy-coded data runs to the
    /// next marker that is not a stuffed 0xFF00 or a restart marker. Without EOI the scan
    /// data may have stopped anywhere.
    fn jpeg(b: &[u8]) -> Completeness {
        if !b.starts_with(&[0xFF, 0xD8]) {
            return Unknown;
        }
        let mut pos = 2;
        loop {
            if pos >= b.len() {
                return Truncated;
            }
            if b[pos] != 0xFF {
                return Unknown;
            }
            // Any number of 0xFF fill bytes may precede a marker.
            while pos < b.len() && b[pos] == 0xFF {
                pos += 1;
            }
            let Some(&marker) = b.get(pos) else {
                return Truncated;
            };
            pos += 1;
            match marker {
                0xD9 => return Complete,
                0x01 | 0xD0..=0xD7 => continue,
                0x00 => return Unknown,
                _ => {}
            }
            let Some(len) = be16(b, pos) else {
                return Truncated;
            };
            if len < 2 {
                return Unknown;
            }
            pos += len;
            if pos > b.len() {
                return Truncated;
            }
            if marker == 0xDA {
                // Entropy-coded data: find the marker that ends it.
                loop {
                    match b[pos..].iter().position(|&x| x == 0xFF) {
                        None => return Truncated,
                        Some(i) => pos += i,
                    }
                    match b.get(pos + 1) {
                        None => return Truncated,
                        Some(0x00) | Some(0xD0..=0xD7) => pos += 2,
                        // Fill bytes before the marker: the outer loop skips them.
                        Some(0xFF) => break,
                        Some(_) => break,
                    }
                }
            }
        }
    }

    /// Chunks (length, type, data, CRC) from the signature to IEND.
    fn png(b: &[u8]) -> Completeness {
        if !b.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Unknown;
        }
        let mut pos = 8;
        loop {
            let Some(len) = b.get(pos..pos + 4) else {
                return Truncated;
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let Some(kind) = b.get(pos + 4..pos + 8) else {
                return Truncated;
            };
            let end = pos.saturating_add(12).saturating_add(len);
            if end > b.len() {
                return Truncated;
            }
            if kind == b"IEND" {
                return Complete;
            }
            pos = end;
        }
    }

    /// Blocks from the screen descriptor to the trailer. A file that stops cleanly between
    /// blocks after a whole first frame has all the data imbed uses, so only an end inside a
    /// block, or before the first frame is whole, counts as truncated.
    fn gif(b: &[u8]) -> Completeness {
        if !(b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a")) {
            return Unknown;
        }
        let Some(&flags) = b.get(10) else {
            return Truncated;
        };
        let mut pos = 13;
        if flags & 0x80 != 0 {
            pos += 3 << ((flags & 0x07) + 1);
        }
        let mut frames = 0;
        // Sub-blocks: a size byte and that many bytes, until a size of 0.
        let sub_blocks = |mut pos: usize| -> Option<usize> {
            loop {
                let size = usize::from(*b.get(pos)?);
                pos += 1;
                if size == 0 {
                    return Some(pos);
                }
                pos += size;
                if pos > b.len() {
                    return None;
                }
            }
        };
        loop {
            let Some(&block) = b.get(pos) else {
                return if frames > 0 { Complete } else { Truncated };
            };
            match block {
                0x3B => return Complete,
                0x21 => match sub_blocks(pos + 2) {
                    Some(next) => pos = next,
                    None => return Truncated,
                },
                0x2C => {
                    let Some(&local) = b.get(pos + 9) else {
                        return Truncated;
                    };
                    pos += 10;
                    if local & 0x80 != 0 {
                        pos += 3 << ((local & 0x07) + 1);
                    }
                    // The LZW minimum code size, then the image data.
                    match sub_blocks(pos + 1) {
                        Some(next) => pos = next,
                        None => return Truncated,
                    }
                    frames += 1;
                }
                _ => return if frames > 0 { Complete } else { Unknown },
            }
        }
    }

    /// RIFF says its own size.
    fn webp(b: &[u8]) -> Completeness {
        if b.get(0..4) != Some(b"RIFF") || b.get(8..12) != Some(b"WEBP") {
            return Unknown;
        }
        match le32(b, 4) {
            Some(size) if (b.len() as u64) < u64::from(size) + 8 => Truncated,
            Some(_) => Complete,
            None => Truncated,
        }
    }

    /// Uncompressed bitmaps end where the pixel offset plus rows times stride says; compressed
    /// (RLE) ones are left to the decoder, which reports running out of data.
    fn bmp(b: &[u8]) -> Completeness {
        if !b.starts_with(b"BM") {
            return Unknown;
        }
        let (Some(offset), Some(header)) = (le32(b, 10), le32(b, 14)) else {
            return Truncated;
        };
        let (width, height, bpp, compression) = if header == 12 {
            let (Some(w), Some(h), Some(bpp)) = (le16(b, 18), le16(b, 20), le16(b, 24)) else {
                return Truncated;
            };
            (i64::from(w), i64::from(h), u64::from(bpp), 0)
        } else {
            let (Some(w), Some(h), Some(bpp), Some(c)) =
                (le32(b, 18), le32(b, 22), le16(b, 28), le32(b, 30))
            else {
                return Truncated;
            };
            (i64::from(w as i32), i64::from(h as i32), u64::from(bpp), c)
        };
        // BI_RGB and BI_BITFIELDS (and ALPHABITFIELDS) store plain rows.
        if !matches!(compression, 0 | 3 | 6) || bpp == 0 {
            return Unknown;
        }
        let stride = (width.unsigned_abs() * bpp).div_ceil(32) * 4;
        let need = u64::from(offset) + stride * height.unsigned_abs();
        if (b.len() as u64) < need {
            Truncated
        } else {
            Complete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_png_passes_unchanged() {
        let bytes = png(20, 10);
        let v = validate(bytes.clone(), "a.png", &InputLimits::default()).unwrap();
        assert_eq!((v.width, v.height, v.mime_type), (20, 10, "image/png"));
        assert_eq!(&*v.data, &bytes[..]);
    }

    #[test]
    fn other_formats_are_reencoded_as_png() {
        let img = image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]));
        let mut bmp = Vec::new();
        img.write_to(&mut Cursor::new(&mut bmp), ImageFormat::Bmp)
            .unwrap();
        let v = validate(bmp, "a.bmp", &InputLimits::default()).unwrap();
        assert_eq!(v.mime_type, "image/png");
        assert_eq!(image::guess_format(&v.data).unwrap(), ImageFormat::Png);
    }

    #[test]
    fn truncated_empty_and_text_inputs_are_clear_errors() {
        let mut bytes = png(64, 64);
        bytes.truncate(bytes.len() / 2);
        let e = validate(bytes, "t.png", &InputLimits::default()).unwrap_err();
        assert!(matches!(e, InputError::Truncated { .. }), "{e}");
        assert!(matches!(
            validate(vec![], "e", &InputLimits::default()),
            Err(InputError::Empty(_))
        ));
        let e = validate(
            b"<html><body>404</body></html>".to_vec(),
            "u",
            &InputLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("HTML page"), "{e}");
    }

    #[test]
    fn only_public_addresses_pass_the_guard() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let guard = UrlGuard::default();
        let check = |u: &str| guard.check_url(&url::Url::parse(u).unwrap());
        assert!(check("http://127.0.0.1/x.png").is_err());
        assert!(check("http://[::1]:8080/x.png").is_err());
        assert!(check("file:///etc/passwd").is_err());
        assert!(check("https://example.com/x.png").is_ok());
        let open = UrlGuard {
            allow_ips: vec!["127.0.0.1".parse().unwrap()],
            ..UrlGuard::default()
        };
        assert!(open
            .check_url(&url::Url::parse("http://127.0.0.1/x.png").unwrap())
            .is_ok());
    }

    #[test]
    fn downsizing_keeps_aspect_and_format() {
        let v = validate(png(400, 100), "w.png", &InputLimits::default()).unwrap();
        let d = downsize(&v, 200).unwrap();
        assert_eq!((d.width, d.height, d.mime_type), (200, 50, "image/png"));
        assert_eq!(image::load_from_memory(&d.data).unwrap().width(), 200);
        assert!(std::ptr::eq(
            downsize(&v, 400).unwrap().data.as_ptr(),
            v.data.as_ptr()
        ));
    }

    #[test]
    fn pixel_limits_are_checked_before_decoding() {
        let limits = InputLimits {
            max_pixels: 100,
            ..InputLimits::default()
        };
        let e = validate(png(20, 10), "big.png", &limits).unwrap_err();
        assert!(
            e.to_string()
                .contains("20x10 pixels, over the limit of 100 pixels"),
            "{e}"
        );
    }

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

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x ^ y) * 3) as u8])
        });
        let mut out = Vec::new();
        match format {
            ImageFormat::Jpeg => img
                .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                    &mut out, 90,
                ))
                .unwrap(),
            other => img.write_to(&mut Cursor::new(&mut out), other).unwrap(),
        }
        out
    }

    #[test]
    fn a_file_cut_short_is_truncated_in_every_format_and_trailing_bytes_are_fine() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ] {
            let whole = encoded(format);
            let limits = InputLimits::default();
            let mut with_tail = whole.clone();
            with_tail.extend_from_slice(b"\0\0trailing bytes after the image");
            for (what, bytes) in [("whole", whole.clone()), ("with a tail", with_tail)] {
                let v = validate(bytes, "ok", &limits);
                assert!(v.is_ok(), "{format:?} {what}: {:?}", v.err());
            }
            // A GIF without its one-byte trailer still holds every frame whole.
            let last = if format == ImageFormat::Gif { 2 } else { 1 };
            for cut in [whole.len() / 2, whole.len() - 2, whole.len() - last, 30] {
                let e = validate(whole[..cut].to_vec(), "cut", &limits).unwrap_err();
                assert!(
                    e.to_string()
                        .contains("is truncated: the file ends before the image data does"),
                    "{format:?} cut at {cut} of {}: {e}",
                    whole.len()
                );
            }
        }
    }

    /// A minimal big-endian TIFF block holding one Orientation entry: what an eXIf chunk holds.
    fn exif_orientation(o: u16) -> Vec<u8> {
        let mut t = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        t.extend_from_slice(&0x0112u16.to_be_bytes());
        t.extend_from_slice(&3u16.to_be_bytes());
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&o.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        t
    }

    fn png_with_exif(png: &[u8], exif: &[u8]) -> Vec<u8> {
        // After the signature and IHDR (8 + 25 bytes).
        let mut out = png[..33].to_vec();
        out.extend_from_slice(&(exif.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(b"eXIf");
        out.extend_from_slice(exif);
        let mut crc = 0xffff_ffffu32;
        for &b in &out[start..] {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        out.extend_from_slice(&(!crc).to_be_bytes());
        out.extend_from_slice(&png[33..]);
        out
    }

    #[test]
    fn a_sideways_png_reaches_plugins_upright() {
        // Stored turned 90 degrees anticlockwise; orientation 6 says "turn it clockwise".
        let upright =
            image::RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8 * 8, y as u8 * 12, 9]));
        let stored = image::DynamicImage::ImageRgb8(upright.clone()).rotate270();
        let mut png = Vec::new();
        stored
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let tagged = png_with_exif(&png, &exif_orientation(6));
        let v = validate(tagged, "sideways.png", &InputLimits::default()).unwrap();
        assert_eq!((v.width, v.height, v.mime_type), (30, 20, "image/png"));
        let seen = image::load_from_memory(&v.data).unwrap().to_rgb8();
        assert_eq!(seen, upright);
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
