//! The persistent cache, folder indexing and search:
//! - cache-hit latency (p50/p99) of a whole `embed_image` call, next to the same call without
//!   the cache (hash plugin; Ollama stand-in describe-then-embed);
//! - images per second indexing 1,000 generated images through the hash plugin, and through
//!   the Ollama stand-in answering each request in 200 ms, at several concurrency levels;
//! - search latency over 10k and 100k vectors of 384 and 768 dimensions, exact and approximate
//!   (USearch HNSW), with recall@10 of the approximate search against the exact one.
//!
//! Run with `cargo bench -p imbed --bench collection` after `scripts/setup`. Set
//! `IMBED_BENCH_QUICK=1` for a short run (fewer images, 10k vectors only).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use imbed::index::{IndexOptions, Summary};
use imbed::search::{exact_top_k, AnnIndex};
use imbed::store::{Cache, SpaceVectors};
use imbed::{Config, Env, ImageRequest, ImageSource, Imbed, ImbedOptions};
use imbed_tests::bench::structured_set;
use imbed_tests::ollama::OllamaStandIn;

fn quick() -> bool {
    std::env::var_os("IMBED_BENCH_QUICK").is_some()
}

fn hash_config(cache: &Path) -> Config {
    let wasm = imbed_tests::bench::built_plugin("hash");
    let text = format!(
        "cache_dir = {cache:?}\n[chain]\n[[chain.steps]]\nkind = \"hash\"\nplugin = \"hash\"\n\
         [plugins.hash]\nfile = {wasm:?}\n[plugins.hash.limits]\ninstances = 2\n",
        cache = cache.display().to_string(),
        wasm = wasm.display().to_string(),
    );
    Config::from_toml_str(&text, "<bench>", None, &Env::isolated()).expect("bench config")
}

fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(128, 96, |x, y| {
        image::Rgb([
            (x + seed) as u8,
            (y * 3 + seed / 256) as u8,
            (x ^ y ^ seed) as u8,
        ])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn folder(n: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for i in 0..n {
        std::fs::write(photos.join(format!("p{i:04}.png")), png(i)).unwrap();
    }
    (dir, photos)
}

fn pct(xs: &mut [Duration], p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn latency(imbed: &Imbed, bytes: &[u8], n: usize) -> (Duration, Duration) {
    let mut xs = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let e = imbed
            .embed_image(ImageRequest::new(ImageSource::Bytes(bytes.to_vec())))
            .await
            .unwrap();
        xs.push(t.elapsed());
        std::hint::black_box(e);
    }
    (pct(&mut xs, 0.5), pct(&mut xs, 0.99))
}

async fn cache_hits(compile_cache: &Path) {
    println!("## cache hits: whole embed_image call, 128x96 PNG (p50 / p99)");
    let ollama = OllamaStandIn::start();
    let bytes = png(7);
    for (name, config) in [
        ("hash plugin", hash_config(compile_cache)),
        (
            "ollama stand-in, describe-then-embed",
            imbed_tests::bench::ollama_config(&ollama, 2, compile_cache),
        ),
    ] {
        let db_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(db_dir.path().join("imbed.db")).unwrap();
        let cached = Imbed::with_options(config.clone(), ImbedOptions::default().store(store))
            .await
            .unwrap();
        let plain = Imbed::new(config).await.unwrap();
        latency(&cached, &bytes, 20).await;
        latency(&plain, &bytes, 20).await;
        let (c50, c99) = latency(&cached, &bytes, 500).await;
        let (p50, p99) = latency(&plain, &bytes, 500).await;
        println!(
            "{name}: cache hit {} / {}; no cache {} / {}; ratio at p50 {:.2}x",
            ms(c50),
            ms(c99),
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / c50.as_secs_f64()
        );
    }
}

async fn index_rate(imbed: &Imbed, photos: &Path, jobs: usize) -> (f64, Summary) {
    let (files, _) = imbed::index::find_images(&[photos.to_path_buf()]);
    let t = Instant::now();
    let mut s = Summary::default();
    let mut stream = imbed::index::index_files(imbed, files, &IndexOptions::new(jobs)).unwrap();
    while let Some(r) = stream.next().await {
        s.add(&r);
    }
    (s.total as f64 / t.elapsed().as_secs_f64(), s)
}

async fn indexing(compile_cache: &Path) {
    let n = if quick() { 200 } else { 1000 };
    println!("## indexing {n} generated 128x96 PNGs (images/s)");
    let (_keep, photos) = folder(n);
    for jobs in [1, 2, 4] {
        let db_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(db_dir.path().join("imbed.db")).unwrap();
        let imbed = Imbed::with_options(
            hash_config(compile_cache),
            ImbedOptions::default().store(store),
        )
        .await
        .unwrap();
        let (rate, s) = index_rate(&imbed, &photos, jobs).await;
        assert_eq!(s.embedded, n as u64);
        let (again, s) = index_rate(&imbed, &photos, jobs).await;
        assert_eq!(s.unchanged, n as u64);
        println!("hash plugin, {jobs} in flight: {rate:.0} images/s; re-run (all unchanged) {again:.0} files/s");
    }
    let ollama = OllamaStandIn::start();
    ollama.set_latency(Duration::from_millis(200));
    for jobs in [4, 16, 64] {
        // Each image costs two requests (describe, embed) of 200 ms: ideal = jobs / 0.4 s.
        let count = if jobs < 16 { n.min(200) } else { n };
        let (_keep, photos) = folder(count);
        let db_dir = tempfile::tempdir().unwrap();
        let store = Cache::open(db_dir.path().join("imbed.db")).unwrap();
        let imbed = Imbed::with_options(
            imbed_tests::bench::ollama_config(&ollama, jobs, compile_cache),
            ImbedOptions::default().store(store),
        )
        .await
        .unwrap();
        let (rate, s) = index_rate(&imbed, &photos, jobs).await;
        assert_eq!(s.embedded, count as u64, "{s:?}");
        println!(
            "ollama stand-in at 200 ms per request, {jobs} in flight, {count} images: {rate:.1} images/s (ideal {:.1})",
            jobs as f64 / 0.4
        );
    }
}

fn search() {
    println!("## search, top 10 (p50 / p99 over 100 queries; recall@10 of approximate vs exact)");
    let sizes: &[usize] = if quick() {
        &[10_000]
    } else {
        &[10_000, 100_000]
    };
    for &n in sizes {
        for dims in [384, 768] {
            // The queries come from the same distribution as the collection (the same seed
            // gives the same projection) but are not in it.
            let both = structured_set(n + 100, dims, 4242 + dims as u64);
            let set = SpaceVectors {
                space: both.space.clone(),
                dims,
                ids: both.ids[..n].to_vec(),
                images: both.images[..n].to_vec(),
                data: both.data[..n * dims].to_vec(),
            };
            let qs: Vec<Vec<f32>> = (n..n + 100).map(|i| both.vector(i).to_vec()).collect();

            let mut exact_t = Vec::new();
            let mut exact_hits = Vec::new();
            for q in &qs {
                let t = Instant::now();
                let top = exact_top_k(&set, q, 10, &|_| false);
                exact_t.push(t.elapsed());
                exact_hits.push(top.into_iter().map(|(i, _)| set.ids[i]).collect::<Vec<_>>());
            }
            let t = Instant::now();
            let ann = AnnIndex::build(&set).unwrap();
            let build = t.elapsed();
            let mut ann_t = Vec::new();
            let mut found = 0;
            for (q, want) in qs.iter().zip(&exact_hits) {
                let t = Instant::now();
                let top = ann.search(q, 10).unwrap();
                ann_t.push(t.elapsed());
                found += top.iter().filter(|(id, _)| want.contains(id)).count();
            }
            let (e50, e99) = (pct(&mut exact_t, 0.5), pct(&mut exact_t, 0.99));
            let (a50, a99) = (pct(&mut ann_t, 0.5), pct(&mut ann_t, 0.99));
            println!(
                "{n} x {dims}: exact {} / {}; approximate {} / {} (index built in {:.1} s); recall@10 {:.3}; exact/approximate at p50 {:.1}x",
                ms(e50),
                ms(e99),
                ms(a50),
                ms(a99),
                build.as_secs_f64(),
                found as f64 / (qs.len() * 10) as f64,
                e50.as_secs_f64() / a50.as_secs_f64()
            );
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // SAFETY: nothing else reads the environment yet.
    unsafe { std::env::remove_var("RUST_BACKTRACE") };
    let compile_cache = tempfile::tempdir().unwrap();
    cache_hits(compile_cache.path()).await;
    indexing(compile_cache.path()).await;
    search();
}
