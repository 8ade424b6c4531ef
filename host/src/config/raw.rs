//! The config file as written: serde structs that reject unknown keys and keep each value's
//! span, so validation can name the line of a bad value.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::located::Located;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) plugin_dir: Option<Spanned<String>>,
    pub(super) cache_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) input: RawInput,
    pub(super) chain: Located<RawChain>,
    #[serde(default)]
    pub(super) plugins: BTreeMap<Spanned<String>, Located<RawPlugin>>,
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) models: RawModels,
    #[serde(default)]
    pub(super) nn: RawNn,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNn {
    pub(super) library: Option<Spanned<String>>,
    pub(super) threads: Option<Spanned<usize>>,
    pub(super) runs: Option<Spanned<usize>>,
    pub(super) max_tensor_mb: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModels {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) mirror: Option<Spanned<String>>,
    pub(super) registry: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) urls: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) database: Option<Spanned<String>>,
    pub(super) ef_search: Option<Spanned<u32>>,
    pub(super) halfvec: Option<bool>,
    pub(super) exact_rerank: Option<bool>,
    pub(super) pool_size: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) api_keys: Vec<Spanned<String>>,
    pub(super) max_body_mb: Option<usize>,
    pub(super) max_in_flight: Option<Spanned<usize>>,
    pub(super) request_timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) url_allow: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    pub(super) max_bytes: Option<Spanned<u64>>,
    pub(super) max_pixels: Option<Spanned<u64>>,
    pub(super) max_side: Option<Spanned<u32>>,
    pub(super) download_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChain {
    pub(super) require_space: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) steps: Vec<Located<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub(super) kind: Spanned<String>,
    pub(super) describer: Option<Spanned<String>>,
    pub(super) embedder: Option<Spanned<String>>,
    pub(super) plugin: Option<Spanned<String>>,
    pub(super) prompt: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub(super) file: Spanned<String>,
    /// A config key, or a list of them.
    pub(super) shares_space_with: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) grants: RawGrants,
    #[serde(default)]
    pub(super) settings: BTreeMap<String, Located<toml::Value>>,
    #[serde(default)]
    pub(super) endpoints: Vec<Located<RawEndpoint>>,
}

/// `[[plugins.X.endpoints]]`: one backend of a pool.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub(super) base_url: Spanned<String>,
    pub(super) concurrency: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) memory_mb: Option<Spanned<u64>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) instances: Option<Spanned<usize>>,
    pub(super) warm: Option<bool>,
    pub(super) image_max_side: Option<Spanned<u32>>,
    pub(super) nn_memory_mb: Option<Spanned<u64>>,
    pub(super) log_lines_per_call: Option<Spanned<u32>>,
    pub(super) log_bytes_per_call: Option<Spanned<u64>>,
    pub(super) log_lines_per_minute: Option<Spanned<u32>>,
    pub(super) log_bytes_per_minute: Option<Spanned<u64>>,
    pub(super) log_line_max_bytes: Option<Spanned<usize>>,
    pub(super) description_max_bytes: Option<Spanned<usize>>,
    pub(super) structured_max_fields: Option<Spanned<usize>>,
    pub(super) breaker_failures: Option<Spanned<u32>>,
    pub(super) breaker_cooldown_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrants {
    #[serde(default)]
    pub(super) http: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) env: Vec<Spanned<String>>,
    pub(super) model_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) sockets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) nn: Vec<Spanned<String>>,
}
