//! Helpers the benchmarks share.

use std::future::Future;
use std::path::{Path, PathBuf};

use imbed::{Config, Env};

use crate::ollama::OllamaStandIn;

/// The installed build of plugin `name` (`imbed_<name>.wasm`). Benchmarks time what setup
/// built rather than building it themselves (a debug build would be timed otherwise).
pub fn built_plugin(name: &str) -> PathBuf {
    let wasm = crate::wasm_dir().join(format!("imbed_{name}.wasm"));
    assert!(
        wasm.is_file(),
        "{} is missing: run scripts/setup first",
        wasm.display()
    );
    wasm
}

/// A config whose only step is the Ollama plugin describing and embedding through `ollama`,
/// with `instances` requests in flight at most and compiled plugins cached in `cache`.
pub fn ollama_config(ollama: &OllamaStandIn, instances: usize, cache: &Path) -> Config {
    let wasm = built_plugin("ollama");
    let text = format!(
        "cache_dir = {cache:?}\n[chain]\n[[chain.steps]]\nkind = \"describe-then-embed\"\ndescriber = \"ollama\"\nembedder = \"ollama\"\n\
         [plugins.ollama]\nfile = {wasm:?}\n[plugins.ollama.limits]\ninstances = {instances}\n\
         [plugins.ollama.grants]\nhttp = [{base:?}]\n[plugins.ollama.settings]\nbase_url = {base:?}\n",
        cache = cache.display().to_string(),
        wasm = wasm.display().to_string(),
        base = ollama.base_url(),
    );
    Config::from_toml_str(&text, "<bench>", None, &Env::isolated()).expect("bench config")
}

/// The smallest memory cap (MiB, to within `precision`) in `lo..=hi` under which `works`
/// still succeeds, found by bisection: a plugin instance's real peak, as the host enforces it.
pub async fn smallest_memory_mb<F, Fut>(mut lo: u64, mut hi: u64, precision: u64, works: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(works(hi).await, "does not run even with {hi} MiB");
    while hi - lo > precision {
        let mid = (lo + hi) / 2;
        if works(mid).await {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}
