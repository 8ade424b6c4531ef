//! `imbed serve` under load: requests per second and p50/p99 latency of text embedding through
//! the hash plugin with 1, 8 and 64 concurrent clients (every text is new: a cache miss and a
//! write into the server's own SQLite cache per request), and the server's memory under that load.
//! The server runs as its own process (the release `imbed` binary); the clients are in this one.
//! Run with `cargo bench -p imbed --bench server` after `scripts/setup`.

use std::time::{Duration, Instant};

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = imbed_tests::bench::built_plugin("hash");
    let config = dir.path().join("imbed.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\n[cache]\ndatabase = {:?}\n[server]\nmax_in_flight = 256\n[chain]\n[[chain.steps]]\nkind = \"hash\"\nplugin = \"hash\"\n\
             [plugins.hash]\nfile = {:?}\n[plugins.hash.limits]\ninstances = 2\n",
            dir.path().join("cache").display().to_string(),
            // Its own database: the default one is the user's cache, which a benchmark must
            // neither fill nor depend on (an older imbed refuses a newer schema there).
            dir.path().join("imbed.db").display().to_string(),
            wasm.display().to_string()
        ),
    )
    .unwrap();
    let port = imbed_tests::free_local_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imbed"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("RUST_BACKTRACE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start imbed serve");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let started = Instant::now();
    while client
        .get(format!("{base}/api/version"))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_rss = status_kib(child.id(), "VmRSS:").unwrap_or(0);
    println!("server idle RSS: {:.1} MiB", idle_rss as f64 / 1024.0);

    for clients in [1usize, 8, 64] {
        let run_for = Duration::from_secs(3);
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let client = client.clone();
                let url = format!("{base}/api/embed");
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut i = 0u64;
                    while t0.elapsed() < run_for {
                        let body = format!("{{\"model\":\"imbed\",\"input\":\"client {c} asks for text number {i}\"}}");
                        let t = Instant::now();
                        let r = client.post(&url).body(body).send().await.unwrap();
                        assert_eq!(r.status().as_u16(), 200);
                        r.bytes().await.unwrap();
                        latencies.push(t.elapsed());
                        i += 1;
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = t0.elapsed();
        all.sort();
        let p = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
        let rss = status_kib(child.id(), "VmRSS:").unwrap_or(0);
        println!(
            "{clients:>2} clients: {:>7.0} req/s, p50 {:.2} ms, p99 {:.2} ms, server RSS {:.1} MiB",
            all.len() as f64 / elapsed.as_secs_f64(),
            p(0.5).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3,
            rss as f64 / 1024.0
        );
    }
    let peak = status_kib(child.id(), "VmHWM:").unwrap_or(0);
    println!(
        "server peak RSS over the run: {:.1} MiB",
        peak as f64 / 1024.0
    );
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
