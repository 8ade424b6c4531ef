//! Why an input could not be used.

use std::path::PathBuf;

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
