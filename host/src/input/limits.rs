//! The caps every input image meets before any plugin sees it. They live here, not in
//! `config`, so input needs nothing from the layers above it; `config` fills them in.

use std::time::Duration;

/// Limits applied to every input image before any plugin sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLimits {
    /// Largest encoded image accepted, in bytes.
    pub max_bytes: u64,
    /// Largest width × height accepted, checked from the header before decoding.
    pub max_pixels: u64,
    /// Largest width or height accepted.
    pub max_side: u32,
    /// Deadline for downloading an image from a URL.
    pub download_timeout: Duration,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_bytes: 64 << 20,
            max_pixels: 50_000_000,
            max_side: 30_000,
            download_timeout: Duration::from_secs(30),
        }
    }
}
