//! CLIP ViT-B/32 (the real config, random weights): image and text embedding in the sandbox,
//! with the towers in candle (in the sandbox) and on the host's ONNX Runtime through wasi-nn
//! (on 1 and 2 threads), vs the same candle code natively on one thread and the same .onnx
//! graphs in Python onnxruntime, one item at a time and 8 at once, plus the memory one plugin
//! instance needs.
//!
//! The weights are generated at start (a 605 MB f32 safetensors file in a temp folder, in the
//! tensor layout of openai/clip-vit-base-patch32), with the real CLIP tokenizer from the
//! fixtures. Run with `cargo bench -p imbed --bench clip` after `scripts/setup`. Figures are
//! medians; compare ratios of one run.
//!
//! The host sends images to an image embedder one per call, so "8 images" in the sandbox is 8
//! calls on one instance; 8 texts are one call. Natively, 8 images are one batched forward pass.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use imbed::{Config, Env, ImageRequest, ImageSource, Imbed};
use imbed_clip::model::ClipConfig;
use imbed_clip::Clip;
use sha2::{Digest, Sha256};

const ROUNDS: usize = 7;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every tensor of transformers' CLIPModel for `c`, with its shape.
fn tensors(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut t = Vec::new();
    let (tc, vc) = (&c.text_config, &c.vision_config);
    let mut encoder = |prefix: &str, h: usize, i: usize, layers: usize| {
        for l in 0..layers {
            let p = format!("{prefix}.encoder.layers.{l}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                t.push((format!("{p}.self_attn.{proj}.weight"), vec![h, h]));
                t.push((format!("{p}.self_attn.{proj}.bias"), vec![h]));
            }
            for ln in ["layer_norm1", "layer_norm2"] {
                t.push((format!("{p}.{ln}.weight"), vec![h]));
                t.push((format!("{p}.{ln}.bias"), vec![h]));
            }
            t.push((format!("{p}.mlp.fc1.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.fc1.bias"), vec![i]));
            t.push((format!("{p}.mlp.fc2.weight"), vec![h, i]));
            t.push((format!("{p}.mlp.fc2.bias"), vec![h]));
        }
    };
    encoder(
        "text_model",
        tc.hidden_size,
        tc.intermediate_size,
        tc.num_hidden_layers,
    );
    encoder(
        "vision_model",
        vc.hidden_size,
        vc.intermediate_size,
        vc.num_hidden_layers,
    );
    let (th, vh) = (tc.hidden_size, vc.hidden_size);
    let patches = (vc.image_size / vc.patch_size).pow(2) + 1;
    t.extend([
        (
            "text_model.embeddings.token_embedding.weight".into(),
            vec![tc.vocab_size, th],
        ),
        (
            "text_model.embeddings.position_embedding.weight".into(),
            vec![tc.max_position_embeddings, th],
        ),
        ("text_model.final_layer_norm.weight".into(), vec![th]),
        ("text_model.final_layer_norm.bias".into(), vec![th]),
        ("vision_model.embeddings.class_embedding".into(), vec![vh]),
        (
            "vision_model.embeddings.patch_embedding.weight".into(),
            vec![vh, vc.num_channels, vc.patch_size, vc.patch_size],
        ),
        (
            "vision_model.embeddings.position_embedding.weight".into(),
            vec![patches, vh],
        ),
        ("vision_model.pre_layrnorm.weight".into(), vec![vh]),
        ("vision_model.pre_layrnorm.bias".into(), vec![vh]),
        ("vision_model.post_layernorm.weight".into(), vec![vh]),
        ("vision_model.post_layernorm.bias".into(), vec![vh]),
        (
            "visual_projection.weight".into(),
            vec![c.projection_dim, vh],
        ),
        ("text_projection.weight".into(), vec![c.projection_dim, th]),
        ("logit_scale".into(), vec![]),
    ]);
    t
}

/// Write a random-weight ViT-B/32 model folder: config, weights, tokenizer, preprocessor config
/// and a manifest (as `imbed models pull` leaves it, so the plugin does not hash 605 MB).
fn write_model(dir: &Path) -> u64 {
    let config = ClipConfig::vit_base_patch32();
    let list = tensors(&config);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &list {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let path = dir.join("model.safetensors");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut sha = Sha256::new();
    let mut put = |out: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| {
        sha.update(b);
        out.write_all(b).unwrap();
    };
    put(&mut out, &(h.len() as u64).to_le_bytes());
    put(&mut out, &h);
    // xorshift: uniform in ±0.035 (std 0.02, transformers' initializer range); layer-norm
    // weights 1 and biases 0 keep the activations in a realistic range.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (name, shape) in &list {
        let n = shape.iter().product::<usize>();
        let mut buf = Vec::with_capacity(n * 4);
        let is_norm =
            name.contains("layer_norm") || name.contains("layernorm") || name.contains("layrnorm");
        for _ in 0..n {
            let v = if is_norm {
                if name.ends_with("weight") {
                    1.0f32
                } else {
                    0.0
                }
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
            };
            buf.extend_from_slice(&v.to_le_bytes());
        }
        put(&mut out, &buf);
    }
    out.flush().unwrap();
    drop(out);
    let weights_sha: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();

    let cfg = serde_json::json!({
        "projection_dim": config.projection_dim,
        "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                        "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                        "eos_token_id": 2},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                          "num_hidden_layers": 12, "image_size": 224, "patch_size": 32},
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let fixtures = imbed_tests::clip::fixtures().join("model");
    for f in ["tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(fixtures.join(f), dir.join(f)).unwrap();
    }
    let manifest = serde_json::json!({
        "name": imbed_clip::DEFAULT_MODEL,
        "files": {"model.safetensors": weights_sha},
        "source": "generated by host/benches/clip.rs (random weights)",
    });
    std::fs::write(dir.join("imbed-model.json"), manifest.to_string()).unwrap();
    std::fs::metadata(&path).unwrap().len()
}

/// The same weights converted by scripts/onnx/clip.py into `vision.onnx` and `text.onnx` (what
/// the host runs for the graph path), timed in Python onnxruntime on 1 and 2 threads: ONNX
/// Runtime alone (no decoding or preprocessing), for side-by-side figures.
fn onnxruntime_in_python(model_dir: &Path) {
    use imbed_tests::onnx::nn::Tensor;
    use imbed_tests::onnx::{convert_clip, PythonGraph};

    let t = Instant::now();
    convert_clip(model_dir, model_dir);
    println!(
        "converted to vision.onnx and text.onnx in {}",
        ms(t.elapsed())
    );
    let pixels = |n: usize| {
        let values: Vec<f32> = (0..n * 3 * 224 * 224)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::f32(&[n, 3, 224, 224], &values).unwrap()
    };
    // "a photo of a cat" with CLIP's real tokenizer: <|startoftext|> ... <|endoftext|>.
    let ids = Tensor::i64(&[1, 7], &[49406, 320, 1125, 539, 320, 2368, 49407]).unwrap();
    let mask = Tensor::i64(&[1, 7], &[1; 7]).unwrap();
    let (one, eight) = (pixels(1), pixels(8));
    for threads in [1, 2] {
        let median = |graph: &str, inputs: &[(&str, &Tensor)]| {
            let g = PythonGraph {
                path: model_dir.join(graph),
                threads,
            };
            match g.run_timed(inputs, ROUNDS) {
                Ok((_, mut secs)) => {
                    secs.sort_by(f64::total_cmp);
                    format!("{:.1} ms", secs[secs.len() / 2] * 1e3)
                }
                Err(e) => format!("failed: {e}"),
            }
        };
        println!(
            "Python onnxruntime, {threads} thread(s), same graphs: image one {}, 8 images {}, text one {}",
            median("vision.onnx", &[("pixel_values", &one)]),
            median("vision.onnx", &[("pixel_values", &eight)]),
            median("text.onnx", &[("input_ids", &ids), ("attention_mask", &mask)]),
        );
    }
}

fn config(cache: &Path, model_dir: &Path, memory_mb: u64) -> Config {
    config_with(cache, model_dir, memory_mb, None, 1)
}

/// With `nn_threads`, the plugin is granted the `vision` and `text` graphs, run by the host's
/// ONNX Runtime on that many intra-op threads; without, the towers run in candle in the sandbox.
fn config_with(
    cache: &Path,
    model_dir: &Path,
    memory_mb: u64,
    nn_threads: Option<usize>,
    instances: usize,
) -> Config {
    let wasm = imbed_tests::bench::built_plugin("clip");
    let mut text = format!(
        "cache_dir = {:?}\n[chain]\n[[chain.steps]]\nkind = \"image-embed\"\nplugin = \"clip\"\n\
         [plugins.clip]\nfile = {:?}\n[plugins.clip.limits]\ninstances = {instances}\nmemory_mb = {memory_mb}\n\
         timeout_ms = 600000\n[plugins.clip.grants]\nmodel_dir = {:?}\n",
        cache.display().to_string(),
        wasm.display().to_string(),
        model_dir.display().to_string(),
    );
    if let Some(threads) = nn_threads {
        text.push_str(&format!(
            "nn = [\"vision\", \"text\"]\n[nn]\nthreads = {threads}\n"
        ));
    }
    Config::from_toml_str(&text, "<bench>", None, &Env::isolated()).expect("bench config")
}

/// Add the converted graphs to the folder's manifest with their SHA-256, as `imbed models
/// import` records converted graphs: the host loads a graph only when the manifest vouches for it.
fn vouch_for_graphs(dir: &Path) {
    let path = dir.join("imbed-model.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let weights = manifest["files"]["model.safetensors"].clone();
    for graph in ["vision.onnx", "text.onnx"] {
        let sha: String = Sha256::digest(std::fs::read(dir.join(graph)).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        manifest["files"][graph] = sha.into();
    }
    manifest["weights_sha256"] = weights;
    manifest["converted"] = serde_json::json!(["vision.onnx", "text.onnx"]);
    std::fs::write(&path, manifest.to_string()).unwrap();
}

/// One sandbox setup's figures: first call, image one, images 8, text one, texts 8.
struct Sandbox {
    load: Duration,
    img1: Duration,
    img8: Duration,
    txt1: Duration,
    txt8: Duration,
    graphs: bool,
}

async fn sandbox(config: Config, images: &[Vec<u8>], texts: &[String]) -> Sandbox {
    let imbed = Imbed::new(config).await.unwrap();
    let t = Instant::now();
    let first = imbed.embed_text("warm up").await.unwrap();
    let load = t.elapsed();
    assert_eq!(
        first.provenance.plugin.key, "clip",
        "{:?}",
        first.provenance.attempts
    );
    let graphs = first.provenance.inference.is_some();
    let (img1, img8) = time(
        |idx| {
            let imbed = imbed.clone();
            let reqs: Vec<ImageRequest> = idx
                .iter()
                .map(|&i| ImageRequest::new(ImageSource::Bytes(images[i].clone())))
                .collect();
            async move {
                let out: Vec<_> = imbed.embed_images(reqs, 1).collect().await;
                for e in out {
                    let e = std::hint::black_box(e.unwrap());
                    assert_eq!(e.provenance.plugin.key, "clip");
                    assert_eq!(e.provenance.inference.is_some(), graphs);
                }
            }
        },
        8,
    )
    .await;
    let (txt1, txt8) = time(
        |idx| {
            let imbed = imbed.clone();
            let batch: Vec<String> = idx.iter().map(|&i| texts[i].clone()).collect();
            async move {
                for e in imbed.embed_texts(&batch).await {
                    assert_eq!(
                        std::hint::black_box(e.unwrap()).provenance.plugin.key,
                        "clip"
                    );
                }
            }
        },
        8,
    )
    .await;
    Sandbox {
        load,
        img1,
        img8,
        txt1,
        txt8,
        graphs,
    }
}

/// `imbed index` of a folder of generated 640x480 JPEG photos (`IMBED_BENCH_PHOTOS`, default
/// 1000), images per second: the towers in candle in the sandbox (two instances, one per core)
/// against the graphs on the host's ONNX Runtime (two instances on one thread each, and one
/// instance on two threads). Every image is decoded, checked and preprocessed in each setup.
async fn indexing(compile_cache: &Path, model_dir: &Path) {
    let n: u32 = std::env::var("IMBED_BENCH_PHOTOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        // The test pictures come in four patterns; a patch whose place and colour follow `i`
        // makes every photo a different content, so each one is embedded, not found by hash.
        let mut picture = imbed_tests::images::picture(640, 480, i);
        let (px, py) = ((i * 37) % 600, (i / 16 * 23) % 440);
        let colour = image::Rgb([(i * 7 % 256) as u8, (i * 13 % 256) as u8, (i / 256) as u8]);
        for y in py..py + 40 {
            for x in px..px + 40 {
                picture.put_pixel(x, y, colour);
            }
        }
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(picture)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        std::fs::write(dir.path().join(format!("p{i:04}.jpg")), jpeg).unwrap();
    }
    let setups: [(&str, Option<usize>, usize); 3] = [
        ("candle in the sandbox, 2 instances", None, 2),
        ("graphs on ONNX Runtime, 2 instances x 1 thread", Some(1), 2),
        ("graphs on ONNX Runtime, 1 instance x 2 threads", Some(2), 1),
    ];
    let mut rates = Vec::new();
    for (what, threads, instances) in setups {
        let db = tempfile::tempdir().unwrap();
        let store = imbed::store::Cache::open(db.path().join("imbed.db")).unwrap();
        let cfg = config_with(compile_cache, model_dir, 2048, threads, instances);
        let imbed = Imbed::with_options(cfg, imbed::ImbedOptions::default().store(store))
            .await
            .unwrap();
        let (files, _) = imbed::index::find_images(&[dir.path().to_path_buf()]);
        let t = Instant::now();
        let mut summary = imbed::index::Summary::default();
        let mut stream =
            imbed::index::index_files(&imbed, files, &imbed::index::IndexOptions::new(2)).unwrap();
        while let Some(r) = stream.next().await {
            summary.add(&r);
        }
        let rate = summary.total as f64 / t.elapsed().as_secs_f64();
        assert_eq!(summary.embedded, n as u64, "{what}: {summary:?}");
        println!("imbed index of {n} 640x480 JPEGs, {what}: {rate:.2} images/s");
        rates.push(rate);
    }
    println!(
        "index speed-up of the graphs over candle: {:.2}x (2x1 threads), {:.2}x (1x2 threads)",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
}

fn pngs(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| imbed_tests::images::png_of(&imbed_tests::images::picture(640, 480, i)))
        .collect()
}

fn texts() -> Vec<String> {
    [
        "a photo of a cat sleeping on a laptop keyboard",
        "a red bicycle leaning against a brick wall",
        "sunset over the sea with sailing boats",
        "a bowl of ramen with an egg and spring onions",
        "two dogs playing in the snow",
        "a city street at night in the rain, neon signs reflected in puddles",
        "a hand-drawn map of an island",
        "an old lighthouse on a cliff",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Medians of one item per call and of 8 items, `ROUNDS` times each.
async fn time<F, Fut>(mut one: F, items: usize) -> (Duration, Duration)
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    one((0..items).collect()).await; // warm-up
    let (mut single, mut batch) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let t = Instant::now();
        one(vec![r % items]).await;
        single.push(t.elapsed());
        let t = Instant::now();
        one((0..items).collect()).await;
        batch.push(t.elapsed());
    }
    (median(single), median(batch))
}

/// The smallest memory cap (MiB, to 16 MiB) under which one instance loads the model and embeds
/// an image and a text: the instance's peak linear memory, since wasm memory only grows.
async fn smallest_cap(cache: &Path, model_dir: &Path, png: &[u8]) -> u64 {
    let works = |mb: u64| async move {
        let imbed = Imbed::new(config(cache, model_dir, mb)).await.unwrap();
        let image = imbed
            .embed_image(ImageRequest::new(ImageSource::Bytes(png.to_vec())))
            .await;
        let text = imbed.embed_text("a photo of a cat").await;
        image.is_ok_and(|e| e.provenance.plugin.key == "clip") && text.is_ok()
    };
    imbed_tests::bench::smallest_memory_mb(256, 2048, 16, works).await
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
    let model = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let size = write_model(model.path());
    println!(
        "random-weight ViT-B/32: {:.0} MB written in {}",
        size as f64 / 1e6,
        ms(t.elapsed())
    );
    let images = pngs(8);
    let texts = texts();
    onnxruntime_in_python(model.path());

    vouch_for_graphs(model.path());

    // In the sandbox, through the host (one instance): candle in the sandbox, then the graphs
    // on the host's ONNX Runtime on 1 and 2 threads.
    let cache = tempfile::tempdir().unwrap();
    drop(
        Imbed::new(config(cache.path(), model.path(), 2048))
            .await
            .unwrap(),
    ); // compile once, cached
    let candle = sandbox(config(cache.path(), model.path(), 2048), &images, &texts).await;
    assert!(!candle.graphs, "no nn grant: the towers run in candle");
    let mut graph = Vec::new();
    for threads in [1, 2] {
        let cfg = config_with(cache.path(), model.path(), 2048, Some(threads), 1);
        let figures = sandbox(cfg, &images, &texts).await;
        assert!(
            figures.graphs,
            "the nn grant: the towers run on the host's graphs"
        );
        graph.push((threads, figures));
    }
    let (wasm_load, w_img1, w_img8, w_txt1, w_txt8) = (
        candle.load,
        candle.img1,
        candle.img8,
        candle.txt1,
        candle.txt8,
    );

    // Native, one thread: the same crate, decoding the same PNGs.
    // The sandbox run above already set the process's high-water mark, so measure what the
    // native model keeps resident instead.
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let native = Clip::load(model.path(), imbed_clip::DEFAULT_MODEL).unwrap();
    native.embed_texts(&["warm up"]).unwrap().remove(0).unwrap();
    let native_load = t.elapsed();
    let (n_img1, n_img8) = time(
        |idx| {
            let native = &native;
            let images = &images;
            async move {
                let decoded: Vec<_> = idx
                    .iter()
                    .map(|&i| Clip::decode(&images[i], "image/png").unwrap())
                    .collect();
                let refs: Vec<_> = decoded.iter().collect();
                std::hint::black_box(native.embed_images(&refs).unwrap());
            }
        },
        8,
    )
    .await;
    let (n_txt1, n_txt8) = time(
        |idx| {
            let native = &native;
            let batch: Vec<&str> = idx.iter().map(|&i| texts[i].as_str()).collect();
            async move {
                for r in native.embed_texts(&batch).unwrap() {
                    std::hint::black_box(r.unwrap());
                }
            }
        },
        8,
    )
    .await;
    let native_rss = status_kib("VmRSS:").unwrap_or(0).saturating_sub(rss_before);
    drop(native);

    let row = |what: &str, w: Duration, n: Duration| {
        println!(
            "{what:<28} sandbox {:>10}   native 1 thread {:>10}   ratio {:.2}x",
            ms(w),
            ms(n),
            w.as_secs_f64() / n.as_secs_f64()
        )
    };
    row("first call (load + embed)", wasm_load, native_load);
    row("image, one", w_img1, n_img1);
    row("images, 8", w_img8, n_img8);
    row("text, one", w_txt1, n_txt1);
    row("texts, 8 (one call)", w_txt8, n_txt8);
    for (threads, g) in &graph {
        let row = |what: &str, w: Duration, c: Duration| {
            println!(
                "{what:<28} sandbox + graph, {threads} thread(s) {:>10}   sandbox candle {:>10}   {:.2}x faster",
                ms(w),
                ms(c),
                c.as_secs_f64() / w.as_secs_f64()
            )
        };
        row("first call (load + embed)", g.load, wasm_load);
        row("image, one", g.img1, w_img1);
        row("images, 8", g.img8, w_img8);
        row("text, one", g.txt1, w_txt1);
        row("texts, 8 (one call)", g.txt8, w_txt8);
    }

    indexing(cache.path(), model.path()).await;

    let cap = smallest_cap(cache.path(), model.path(), &images[0]).await;
    println!(
        "peak linear memory of one instance (smallest memory_mb that loads and embeds): {cap} MiB"
    );
    println!(
        "native: resident memory grew by {:.0} MiB (model loaded, after the runs above)",
        native_rss as f64 / 1024.0
    );
}
