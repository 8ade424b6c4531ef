//! The cache's keys: content hashes of texts, a file's stamp, and a describer's identity.

use std::path::Path;
use std::time::UNIX_EPOCH;

/// Size and modification time (ns since the epoch) of a file, or `None` when it is gone.
pub fn file_stamp(path: &Path) -> Option<(u64, i64)> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    Some((meta.len(), mtime))
}

/// The identity of a describer for the description cache, from what the describer itself says
/// determines its descriptions (contract 0.2.0's `cache-identity`, sorted by key).
pub fn describer_identity_of(plugin_name: &str, pairs: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // A different domain than the settings hash below, so the two can never collide.
    h.update(b"cache-identity\0");
    h.update(plugin_name.as_bytes());
    for (k, v) in pairs {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    let digest = h.finalize();
    format!("{plugin_name}:{}", hex(&digest[..12]))
}

/// Settings that cannot change what a describer writes: where the backend is, how long to
/// wait, which *embedding* model to use. Everything else (the vision model, prompts, output
/// format, settings this list does not know) is part of the describer's identity, so a cached
/// description is reused only when it would be written the same way again.
const NOT_DESCRIBING: &[&str] = &[
    "base_url",
    "api_key",
    "embed_model",
    "keep_alive",
    "request_timeout_ms",
    "load_timeout_ms",
    "dimensions",
];

/// The identity of a describer that cannot state its own (contract 0.1.0), and of every
/// description cached before 0.2.0: its name and the settings that can change a description,
/// hashed. The list above is a guess made for the Ollama plugin's settings, which is why 0.2.0
/// describers state their identity themselves ([`describer_identity_of`]).
pub fn describer_identity(
    plugin_name: &str,
    settings: &std::collections::BTreeMap<String, String>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(plugin_name.as_bytes());
    for (k, v) in settings {
        if NOT_DESCRIBING.contains(&k.as_str()) {
            continue;
        }
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    let digest = h.finalize();
    format!("{plugin_name}:{}", hex(&digest[..12]))
}

/// SHA-256 of a text, hex: the key of its cached vectors.
pub fn text_key(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stated_identity_depends_on_every_pair_and_differs_from_the_settings_hash() {
        let pairs = |model: &str| {
            vec![
                ("prompt".to_string(), "Describe.".to_string()),
                ("vision_model".to_string(), model.to_string()),
            ]
        };
        let a = describer_identity_of("ollama", &pairs("llava"));
        assert_eq!(a, describer_identity_of("ollama", &pairs("llava")));
        assert_ne!(a, describer_identity_of("ollama", &pairs("moondream")));
        assert_ne!(a, describer_identity_of("other", &pairs("llava")));
        assert!(a.starts_with("ollama:"));
        assert_ne!(
            describer_identity_of("ollama", &[]),
            describer_identity("ollama", &Default::default())
        );
    }

    #[test]
    fn describer_identity_ignores_embedding_and_transport_settings() {
        let mut a = std::collections::BTreeMap::new();
        a.insert("vision_model".to_string(), "llava".to_string());
        a.insert("embed_model".to_string(), "nomic-embed-text".to_string());
        a.insert("base_url".to_string(), "http://a:11434".to_string());
        let mut b = a.clone();
        b.insert("embed_model".to_string(), "all-minilm".to_string());
        b.insert("base_url".to_string(), "http://b:11434".to_string());
        assert_eq!(
            describer_identity("ollama", &a),
            describer_identity("ollama", &b)
        );
        let mut c = a.clone();
        c.insert("vision_model".to_string(), "moondream".to_string());
        assert_ne!(
            describer_identity("ollama", &a),
            describer_identity("ollama", &c)
        );
        let mut d = a.clone();
        d.insert("prompt".to_string(), "List the objects.".to_string());
        assert_ne!(
            describer_identity("ollama", &a),
            describer_identity("ollama", &d)
        );
    }
}
