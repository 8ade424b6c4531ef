//! Plugin host benchmarks: cold start with and without the compile cache, the cost of a
//! host-to-plugin call, and hash-plugin throughput for texts and 512x512 images, in the sandbox
//! and natively. Run with `cargo bench -p imbed --bench plugins` after `scripts/setup`.
//!
//! Figures are medians over repeated runs on this machine; compare ratios measured in one run.

use std::path::Path;
use std::time::{Duration, Instant};

use imbed::{Config, Env, ImageSource, Imbed, PluginHealth};

fn config(cache: &Path) -> Config {
    let text = format!(
        "cache_dir = {:?}\n[chain]\n[[chain.steps]]\nkind = \"hash\"\nplugin = \"hash\"\n\
         [plugins.hash]\nfile = {:?}\n[plugins.hash.limits]\ninstances = 1\n",
        cache.display().to_string(),
        imbed_tests::bench::built_plugin("hash")
            .display()
            .to_string()
    );
    Config::from_toml_str(&text, "<bench>", None, &Env::isolated()).expect("bench config")
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn pct(mut xs: Vec<Duration>, p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn picture(seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(512, 512, |x, y| {
        let v = ((x * (seed + 3) + y * 7) % 256) as u8;
        image::Rgb([v, (x ^ y) as u8, (y / 2) as u8])
    })
}

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // A captured backtrace per wasmtime error would distort the timings.
    // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
    unsafe { std::env::remove_var("RUST_BACKTRACE") };
    let runs = 9;

    // Cold start: engine + compile vs engine + cache hit.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let imbed = Imbed::new(config(dir.path())).await.unwrap();
        cold.push(t.elapsed());
        assert!(matches!(
            imbed.plugins()[0].health,
            PluginHealth::Ready {
                from_cache: false,
                ..
            }
        ));
        drop(imbed);
        let t = Instant::now();
        let imbed = Imbed::new(config(dir.path())).await.unwrap();
        warm.push(t.elapsed());
        assert!(matches!(
            imbed.plugins()[0].health,
            PluginHealth::Ready {
                from_cache: true,
                ..
            }
        ));
    }
    let (cold, warm) = (median(cold), median(warm));
    println!("start, compile (no cache):   {}", ms(cold));
    println!("start, compile cache hit:    {}", ms(warm));
    println!(
        "  ratio cold/warm:           {:.1}x",
        cold.as_secs_f64() / warm.as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let imbed = Imbed::new(config(dir.path())).await.unwrap();

    // Per call: the shortest text through the whole chain, vs the same hashing natively.
    for _ in 0..200 {
        imbed.embed_text("a").await.unwrap();
    }
    let n = 5000;
    let mut in_wasm = Vec::with_capacity(n);
    let mut native = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(imbed.embed_text("a").await.unwrap());
        in_wasm.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(imbed_hash::algo::embed_text("a", 256));
        native.push(t.elapsed());
    }
    let (w50, w99, n50) = (
        pct(in_wasm.clone(), 0.5),
        pct(in_wasm, 0.99),
        pct(native, 0.5),
    );
    println!(
        "call, 1-word text via chain:  p50 {} p99 {} (native hashing {})",
        us(w50),
        us(w99),
        us(n50)
    );
    println!(
        "  host->plugin overhead p50:  {}",
        us(w50.saturating_sub(n50))
    );

    // Text throughput, one call per text as the chain makes them.
    let texts: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                "photo {i} of a cat sleeping on a laptop keyboard near a window, item {}",
                i * 7
            )
        })
        .collect();
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(imbed.embed_text(s).await.unwrap());
    }
    let wasm_rate = texts.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(imbed_hash::algo::embed_text(s, 256));
    }
    let native_rate = texts.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "texts/s (one thread):        sandbox {wasm_rate:.0}, native {native_rate:.0} (native/sandbox {:.2}x)",
        native_rate / wasm_rate
    );

    // 512x512 images: through the host (validation + plugin), plugin only, and native.
    let pictures: Vec<Vec<u8>> = (0..24).map(|i| png(&picture(i))).collect();
    let valid: Vec<_> = {
        let mut v = Vec::new();
        for p in &pictures {
            v.push(
                imbed
                    .load_image(&ImageSource::Bytes(p.clone()))
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let t = Instant::now();
    for p in &pictures {
        std::hint::black_box(
            imbed
                .embed_image(imbed::ImageRequest::new(ImageSource::Bytes(p.clone())))
                .await
                .unwrap(),
        );
    }
    let full = pictures.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for v in &valid {
        std::hint::black_box(imbed.embed_valid_image(v, None).await.unwrap());
    }
    let plugin_only = valid.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &pictures {
        let img = image::load_from_memory(p).unwrap();
        std::hint::black_box(imbed_hash::algo::embed_image(&img, 256));
    }
    let native = pictures.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "512x512 PNG images/s:        with host validation {full:.1}, plugin only {plugin_only:.1}, native {native:.1} (native/plugin {:.2}x)",
        native / plugin_only
    );
}
