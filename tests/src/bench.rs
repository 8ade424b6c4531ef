//! Helpers the benchmarks share.

use std::future::Future;
use std::path::{Path, PathBuf};

use imbed::store::{Cache, ImageMeta, Ownership, SpaceClaim, SpaceVectors, Writer};
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

/// Unit vectors with the structure real embeddings have: they lie near a low-dimensional
/// subspace (here 24 latent dimensions projected into `dims`), so neighbourhoods mean
/// something. (Uniform random vectors in 384 dimensions are all about equally far apart, which
/// no real collection is and which no approximate method can rank.)
pub fn structured_set(n: usize, dims: usize, seed: u64) -> SpaceVectors {
    const LATENT: usize = 24;
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let projection: Vec<f32> = (0..LATENT * dims).map(|_| next()).collect();
    let mut data = Vec::with_capacity(n * dims);
    for _ in 0..n {
        let z: Vec<f32> = (0..LATENT).map(|_| next()).collect();
        let mut v = vec![0f32; dims];
        for (l, zl) in z.iter().enumerate() {
            for (d, x) in v.iter_mut().enumerate() {
                *x += zl * projection[l * dims + d];
            }
        }
        // A little noise off the subspace, as real vectors have.
        for x in v.iter_mut() {
            *x += 0.05 * next();
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        data.extend(v.into_iter().map(|x| x / norm));
    }
    SpaceVectors {
        space: format!("bench/structured:{dims}"),
        dims,
        ids: (1..=n as i64).collect(),
        images: (0..n).map(|i| i.to_string()).collect(),
        data,
    }
}

/// Load the first `n` vectors of `set` into `cache` as answers of a bench plugin `bench` in
/// `set.space` (claimed first, as a plugin's first write does), in batches; image `i` is
/// `format!("{i:064x}")`.
pub fn load_space(cache: &Cache, set: &SpaceVectors, n: usize) {
    let writer = Writer {
        key: "bench".into(),
        name: "bench".into(),
        component: "0".repeat(64),
    };
    let claim = SpaceClaim {
        writer: writer.clone(),
        shares_with: Vec::new(),
    };
    let granted = cache.claim_space(&set.space, &claim).expect("claim");
    assert!(matches!(granted, Ownership::Granted { .. }), "{granted:?}");
    let template = serde_json::json!({
        "vector": [],
        "provenance": {
            "step": 0, "step_kind": "image-embed",
            "plugin": {"key": "bench", "name": "bench", "version": "0"},
            "model": "bench", "space": set.space, "dimensions": set.dims,
            "degraded": false, "attempts": []
        }
    });
    let template: imbed::Embedding = serde_json::from_value(template).expect("an embedding");
    for start in (0..n).step_by(2_000) {
        let items: Vec<(ImageMeta, imbed::Embedding)> = (start..n.min(start + 2_000))
            .map(|i| {
                let mut e = template.clone();
                e.vector = set.vector(i).to_vec();
                let meta = ImageMeta {
                    sha256: format!("{i:064x}"),
                    mime: "image/png".into(),
                    width: 1,
                    height: 1,
                    bytes: 1,
                };
                (meta, e)
            })
            .collect();
        cache.put_entries(&items, &writer).expect("load");
    }
}
