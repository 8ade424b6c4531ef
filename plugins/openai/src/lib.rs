//! The OpenAI-compatible plugin: describes images with a vision model through
//! `POST {base_url}/chat/completions` (the image as a `data:` URL content part) and embeds texts
//! through `POST {base_url}/embeddings`. One protocol covers OpenAI itself, LM Studio, vLLM,
//! llama.cpp's server and LocalAI. It reaches the server only through the host's HTTP capability,
//! so the config must grant the base URL's origin; the API key comes from a setting, never from
//! the plugin's environment.
//!
//! The protocol logic (settings, request bodies, response parsing, error mapping, retry
//! decisions) lives in [`protocol`], free of the component glue, so it is unit-tested natively.

pub mod protocol;

/// The component glue; only for wasm, so the protocol's unit tests run natively.
#[cfg(target_family = "wasm")]
mod component;
