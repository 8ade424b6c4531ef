//! The Ollama plugin path against the Ollama stand-in: what the sandboxed plugin adds over a
//! direct HTTP call (p50/p99), and throughput with 1, 4 and 16 images in flight against a server
//! that takes 200 ms per request. Run with `cargo bench -p imbed --bench ollama` after
//! `scripts/setup`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use imbed::{ImageRequest, ImageSource, Imbed};
use imbed_tests::ollama::OllamaStandIn;

fn pct(xs: &mut [Duration], p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(256, 256, |x, y| {
        image::Rgb([(x + seed) as u8, (y * 3) as u8, (x ^ y) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // SAFETY: nothing else reads the environment yet.
    unsafe { std::env::remove_var("RUST_BACKTRACE") };
    let cache = tempfile::tempdir().unwrap();
    let ollama = OllamaStandIn::start();

    // Overhead: one text embedding through the plugin vs the same request sent directly.
    let imbed = Imbed::new(imbed_tests::bench::ollama_config(&ollama, 1, cache.path()))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let body = serde_json::json!({ "model": "nomic-embed-text", "input": ["a cat on a laptop"], "truncate": true })
        .to_string();
    let post = || {
        client
            .post(ollama.url("/api/embed"))
            .header("content-type", "application/json")
            .body(body.clone())
    };
    for _ in 0..50 {
        imbed.embed_text("a cat on a laptop").await.unwrap();
        post().send().await.unwrap().bytes().await.unwrap();
    }
    let n = 400;
    let (mut direct, mut plugin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let r = post().send().await.unwrap();
        let bytes = r.bytes().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        std::hint::black_box(v);
        direct.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(imbed.embed_text("a cat on a laptop").await.unwrap());
        plugin.push(t.elapsed());
    }
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (p50, p99) = (pct(&mut plugin, 0.5), pct(&mut plugin, 0.99));
    println!(
        "embed one text, direct HTTP:      p50 {} p99 {}",
        ms(d50),
        ms(d99)
    );
    println!(
        "embed one text, through plugin:   p50 {} p99 {}",
        ms(p50),
        ms(p99)
    );
    println!(
        "  added by the plugin path:        p50 {} p99 {} (ratio p50 {:.2}x)",
        ms(p50.saturating_sub(d50)),
        ms(p99.saturating_sub(d99)),
        p50.as_secs_f64() / d50.as_secs_f64()
    );

    // Throughput: describe-then-embed (two requests of 200 ms each per image).
    ollama.set_latency(Duration::from_millis(200));
    for in_flight in [1usize, 4, 16] {
        let imbed = Imbed::new(imbed_tests::bench::ollama_config(
            &ollama,
            in_flight,
            cache.path(),
        ))
        .await
        .unwrap();
        imbed.embed_text("warm").await.unwrap();
        let count = in_flight * 4;
        let requests: Vec<ImageRequest> = (0..count as u32)
            .map(|i| ImageRequest::new(ImageSource::Bytes(png(i))))
            .collect();
        let t = Instant::now();
        let results: Vec<_> = imbed.embed_images(requests, in_flight).collect().await;
        let elapsed = t.elapsed();
        assert!(results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|e| e.provenance.step == 0)));
        println!(
            "{in_flight:>2} in flight, 200 ms per request: {:.2} images/s ({count} images in {}, ideal {:.2}/s)",
            count as f64 / elapsed.as_secs_f64(),
            ms(elapsed),
            in_flight as f64 / 0.4
        );
    }
}
