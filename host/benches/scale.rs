//! Beyond one machine (issue #17):
//! - search p50/p99 of top 10 over 100,000 vectors of 768 dimensions: pgvector (exact scan and
//!   its HNSW index at the default `ef_search`, 100, then at 40 and 200) next to the embedded
//!   SQLite cache (exact and USearch HNSW), each approximate search with its recall@10 against
//!   the exact answer;
//! - images per second through the work queue with 1, 2 and 4 `imbed worker` processes against
//!   four Ollama stand-ins answering each request in 200 ms, with the ideal line.
//!
//! Needs the test PostgreSQL (`scripts/setup --test`) and the release build (`scripts/setup`).
//! Run with `cargo bench -p imbed --bench scale`; `IMBED_BENCH_QUICK=1` for 20k vectors and fewer
//! images.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use imbed::search::Method;
use imbed::store::{Cache, PgOptions};
use imbed_tests::bench::{built_plugin, load_space, structured_set};
use imbed_tests::ollama::OllamaStandIn;
use imbed_tests::{images, postgres, PluginSpec, TestConfig};

fn quick() -> bool {
    std::env::var_os("IMBED_BENCH_QUICK").is_some()
}

fn pct(xs: &mut [Duration], p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Time `queries` top-10 searches; the answers' image ids, the first search, and p50/p99.
fn time_searches(
    cache: &Cache,
    space: &str,
    queries: &[Vec<f32>],
    method: Method,
) -> (Vec<Vec<String>>, Duration, Duration, Duration) {
    // One search first, timed apart: the embedded cache loads the space (and builds or loads
    // its index) on a process's first search and keeps it while the space is unchanged.
    let t = Instant::now();
    imbed::search::search(cache, space, &queries[0], 10, method, None).unwrap();
    let first = t.elapsed();
    let mut times = Vec::with_capacity(queries.len());
    let mut answers = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let found = imbed::search::search(cache, space, q, 10, method, None).unwrap();
        times.push(t.elapsed());
        answers.push(found.hits.into_iter().map(|h| h.image).collect());
    }
    let (p50, p99) = (pct(&mut times, 0.5), pct(&mut times, 0.99));
    (answers, first, p50, p99)
}

fn recall(exact: &[Vec<String>], approx: &[Vec<String>]) -> f64 {
    let found: usize = exact
        .iter()
        .zip(approx)
        .map(|(want, got)| got.iter().filter(|g| want.contains(g)).count())
        .sum();
    found as f64 / (exact.len() * 10) as f64
}

fn search() {
    let n = if quick() { 20_000 } else { 100_000 };
    let dims = 768;
    println!("## search, top 10 over {n} x {dims} (p50 / p99 over 200 queries)");
    let set = structured_set(n + 200, dims, 4242);
    let space = set.space.clone();
    let queries: Vec<Vec<f32>> = (n..n + 200).map(|i| set.vector(i).to_vec()).collect();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Cache::open(dir.path().join("imbed.db")).unwrap();
    let db = postgres::database();
    let mut options = PgOptions::default();
    options.local_dir = dir.path().join("pg-local");
    let pg = Cache::open_postgres(db.url(), options).unwrap();

    for (name, cache) in [("sqlite", &sqlite), ("pgvector", &pg)] {
        let t = Instant::now();
        load_space(cache, &set, n);
        let loaded = t.elapsed();
        let t = Instant::now();
        imbed::search::prepare(cache).unwrap();
        let built = t.elapsed();
        let (exact, e0, e50, e99) = time_searches(cache, &space, &queries, Method::Exact);
        let (approx, a0, a50, a99) = time_searches(cache, &space, &queries, Method::Approximate);
        println!(
            "{name}: exact {} / {}; HNSW {} / {}, recall@10 {:.3}; exact/HNSW at p50 {:.1}x (loaded in {:.1} s, index ready in {:.1} s; first exact search {}, first HNSW search {})",
            ms(e50),
            ms(e99),
            ms(a50),
            ms(a99),
            recall(&exact, &approx),
            e50.as_secs_f64() / a50.as_secs_f64(),
            loaded.as_secs_f64(),
            built.as_secs_f64(),
            ms(e0),
            ms(a0),
        );
        if name == "pgvector" {
            // The recall/latency trade of `[cache] ef_search`, on the same index.
            for ef in [40, 200] {
                let mut options = PgOptions::default();
                options.local_dir = dir.path().join("pg-local");
                options.ef_search = ef;
                let wider = Cache::open_postgres(db.url(), options).unwrap();
                let (found, _, w50, w99) =
                    time_searches(&wider, &space, &queries, Method::Approximate);
                println!(
                    "pgvector, ef_search {ef}: HNSW {} / {}, recall@10 {:.3}",
                    ms(w50),
                    ms(w99),
                    recall(&exact, &found),
                );
            }
        }
    }
}

/// The latency of every model request of the stand-ins: a describe and an embed per image.
const LATENCY: Duration = Duration::from_millis(200);

/// `imbed` (this build, release) with `args`, in `dir`, its output to files there.
fn imbed(dir: &Path, config: &Path, args: &[&str], name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_imbed"))
        .current_dir(dir)
        .env("IMBED_LOG", "warn")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child, dir: &Path, name: &str) {
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{name} failed: {}",
        std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
    );
}

/// Images per second through the work queue: `n` images enqueued, then 1, 2 and 4 `imbed
/// worker` processes run until the queue is empty. Every worker pools the same four stand-ins,
/// one request in flight per endpoint per worker, so a worker has four images in flight and
/// each image takes two requests: the ideal is 4 / (2 x 200 ms) = 10 images/s per worker.
fn workers() {
    let n: u32 = if quick() { 80 } else { 400 };
    let standins: Vec<OllamaStandIn> = (0..4)
        .map(|_| {
            let s = OllamaStandIn::start();
            s.set_latency(LATENCY);
            s
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for i in 0..n {
        // Distinct content: the picture's pattern repeats every four seeds, its size does not.
        let (w, h) = (32 + i % 97, 32 + i / 97);
        std::fs::write(photos.join(format!("p{i:04}.png")), images::png(w, h, i)).unwrap();
    }
    let per_worker = standins.len() as f64 / (2.0 * LATENCY.as_secs_f64());
    println!(
        "## the work queue: {n} images, 4 Ollama stand-ins at {} ms per request, one request per endpoint per worker",
        LATENCY.as_millis()
    );
    println!("workers | images/s | ideal | of ideal | wall");
    for workers in [1usize, 2, 4] {
        let db = postgres::database();
        let mut plugin = PluginSpec::file(built_plugin("ollama"))
            .setting("vision_model", "llava")
            .setting("embed_model", "nomic-embed-text")
            .timeout_ms(120_000);
        for s in &standins {
            plugin = plugin.grant_http(&s.base_url()).endpoint(&s.base_url(), 1);
        }
        let run = dir.path().join(format!("run{workers}"));
        std::fs::create_dir_all(&run).unwrap();
        let config = TestConfig::new()
            .plugin("ollama", plugin)
            .describe_then_embed("ollama", "ollama")
            .cache_dir(dir.path().join("compiled"))
            .database(db.url())
            .write(&run);
        let photos = photos.display().to_string();
        finish(
            imbed(&run, &config, &["enqueue", &photos], "enqueue"),
            &run,
            "enqueue",
        );
        for s in &standins {
            s.reset_log();
        }
        let started = Instant::now();
        let children: Vec<(Child, String)> = (0..workers)
            .map(|k| {
                let name = format!("w{k}");
                let args = ["worker", "--until-empty", "--poll", "50ms", "--name", &name];
                (imbed(&run, &config, &args, &name), name)
            })
            .collect();
        for (child, name) in children {
            finish(child, &run, &name);
        }
        let wall = started.elapsed();
        let described: usize = standins.iter().map(|s| s.vision_calls()).sum();
        let peak = standins
            .iter()
            .map(|s| s.peak_in_flight())
            .max()
            .unwrap_or(0);
        assert!(peak <= workers, "an endpoint had {peak} requests in flight");
        let done: i64 = db
            .psql("SELECT count(*) FROM jobs WHERE state = 'done'")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(done, i64::from(n), "every job done");
        assert_eq!(described, n as usize, "every image described once");
        let rate = f64::from(n) / wall.as_secs_f64();
        let ideal = per_worker * workers as f64;
        println!(
            "{workers} | {rate:.1} | {ideal:.1} | {:.0}% | {:.1} s",
            100.0 * rate / ideal,
            wall.as_secs_f64()
        );
    }
}

fn main() {
    // SAFETY: nothing else reads the environment yet.
    unsafe { std::env::remove_var("RUST_BACKTRACE") };
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| o == "workers") {
        workers();
    }
    if only.as_deref().is_none_or(|o| o == "search") {
        search();
    }
}
