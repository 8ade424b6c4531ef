//! The Ollama plugin: describes images with a vision model (`/api/generate` or `/api/chat`) and
//! embeds texts with an embedding model (`/api/embed`, or the legacy `/api/embeddings` on servers
//! that lack it). It reaches Ollama only through the host's HTTP capability, so the config must
//! grant the base URL's origin.
//!
//! The protocol logic (request bodies, response parsing, error mapping) lives in [`protocol`],
//! free of any host call, so it is unit-tested natively.

pub mod protocol;

/// The plugin: state, HTTP through the host, the contract's roles.
mod component;
