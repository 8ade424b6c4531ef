//! The work queue (issue #17, part 2): `imbed enqueue`, real `imbed worker` processes, `imbed
//! queue status|retry`, against the test PostgreSQL server and the Ollama stand-in.
//!
//! Waits poll the database or the stand-in until something has happened, with a generous
//! bound only so that a broken build fails instead of hanging; nothing asserts how long
//! anything took.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imbed::queue::{Claim, JobQueue, Settled};
use imbed::store::{Cache, ImageMeta, PgOptions, Writer};
use imbed_tests::ollama::{Failure, OllamaStandIn, Route};
use imbed_tests::postgres::{self, TestDb};
use imbed_tests::{component, images, PluginSpec, TestConfig};
use serde_json::Value;

use crate::cli::imbed;

/// How long a wait may take before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(180);

/// A folder of `n` distinct images (the pattern repeats every four seeds; the size does not).
fn photos(dir: &Path, n: u32) -> PathBuf {
    let folder = dir.join("photos");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..n {
        std::fs::write(
            folder.join(format!("p{i:02}.png")),
            images::png(40 + i, 40, i),
        )
        .unwrap();
    }
    folder
}

/// Ollama describe-then-embed as the only step: when it cannot answer, nothing does.
/// `imbed enqueue FOLDER`, which must succeed.
fn enqueue(dir: &Path, config: &Path, folder: &Path) {
    ok(run(dir, config, &["enqueue", folder.to_str().unwrap()]));
}

fn ollama_config(dir: &Path, ollama: &OllamaStandIn, database: &str, instances: usize) -> PathBuf {
    TestConfig::new()
        .plugin(
            "ollama",
            PluginSpec::file(component("ollama"))
                .grant_http(&ollama.base_url())
                .setting("base_url", &ollama.base_url())
                .setting("vision_model", "llava")
                .setting("embed_model", "nomic-embed-text")
                .timeout_ms(120_000)
                .instances(instances),
        )
        .describe_then_embed("ollama", "ollama")
        .database(database)
        .write(dir)
}

/// Ollama describe-then-embed pooled over `endpoints`, `concurrency` requests each, as the
/// only step; an endpoint is taken out after two failures in a row and probed again 200 ms
/// later.
fn pooled_config(
    dir: &Path,
    endpoints: &[&OllamaStandIn],
    database: &str,
    concurrency: usize,
) -> PathBuf {
    let mut plugin = PluginSpec::file(component("ollama"))
        .setting("vision_model", "llava")
        .setting("embed_model", "nomic-embed-text")
        .timeout_ms(120_000)
        .limit("breaker_failures", "2")
        .limit("breaker_cooldown_ms", "200");
    for e in endpoints {
        plugin = plugin
            .grant_http(&e.base_url())
            .endpoint(&e.base_url(), concurrency);
    }
    TestConfig::new()
        .plugin("ollama", plugin)
        .describe_then_embed("ollama", "ollama")
        .database(database)
        .write(dir)
}

fn hash_config(dir: &Path, database: &str) -> PathBuf {
    TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .database(database)
        .write(dir)
}

fn run(dir: &Path, config: &Path, args: &[&str]) -> Output {
    imbed(dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[track_caller]
fn ok(out: Output) -> Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn status(dir: &Path, config: &Path) -> Value {
    json(&ok(run(dir, config, &["queue", "status", "--json"])))
}

/// A worker process, its output in files (a pipe nobody reads could fill and stall it).
struct Worker {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Worker {
    fn start(dir: &Path, config: &Path, name: &str, args: &[&str]) -> Worker {
        let (out, err) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.err")),
        );
        let child = imbed(dir)
            .arg("--config")
            .arg(config)
            .args(["worker", "--json", "--name", name, "--poll", "100ms"])
            .args(args)
            .stdout(Stdio::from(File::create(&out).unwrap()))
            .stderr(Stdio::from(File::create(&err).unwrap()))
            .spawn()
            .unwrap();
        Worker { child, out, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Its JSON lines.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Wait for it to exit by itself; its exit code.
    #[track_caller]
    fn wait(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if started.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("the worker did not finish:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.wait()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll until `done` holds.
#[track_caller]
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.psql(sql).trim().parse().unwrap()
}

#[test]
fn two_workers_describe_every_image_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let ollama = OllamaStandIn::start();
    // Slow enough that both workers hold jobs at once.
    ollama.set_latency(Duration::from_millis(100));
    let config = ollama_config(dir.path(), &ollama, db.url(), 2);
    let folder = photos(dir.path(), 12);
    let folder = folder.to_str().unwrap();

    let first = json(&ok(run(
        dir.path(),
        &config,
        &["enqueue", folder, "--json"],
    )));
    assert_eq!(
        (first["found"].as_u64(), first["queued"].as_u64()),
        (Some(12), Some(12))
    );
    // Again: every content already has its job.
    let again = json(&ok(run(
        dir.path(),
        &config,
        &["index", folder, "--queue", "--json"],
    )));
    assert_eq!(
        (again["queued"].as_u64(), again["already_queued"].as_u64()),
        (Some(0), Some(12))
    );
    let s = status(dir.path(), &config);
    assert_eq!(
        (s["queued"].as_u64(), s["total"].as_u64()),
        (Some(12), Some(12))
    );

    let mut a = Worker::start(dir.path(), &config, "a", &["--until-empty"]);
    let mut b = Worker::start(dir.path(), &config, "b", &["--until-empty"]);
    assert_eq!(a.wait(), 0, "{}", a.stderr());
    assert_eq!(b.wait(), 0, "{}", b.stderr());

    assert_eq!(ollama.vision_calls(), 12, "each image described once");
    let s = status(dir.path(), &config);
    assert_eq!(
        (
            s["done"].as_u64(),
            s["queued"].as_u64(),
            s["in_flight"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(12), Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM entries"), 12);
    assert_eq!(count(&db, "SELECT count(*) FROM descriptions"), 12);
    assert_eq!(count(&db, "SELECT max(attempts) FROM jobs"), 1);
    let done_by: u64 = [&a, &b]
        .iter()
        .map(|w| w.events().iter().filter(|e| e["event"] == "done").count() as u64)
        .sum();
    assert_eq!(done_by, 12);

    // Enqueueing what is done changes nothing, and reads nothing from the backend.
    let later = json(&ok(run(
        dir.path(),
        &config,
        &["enqueue", folder, "--json"],
    )));
    assert_eq!(
        (later["queued"].as_u64(), later["done"].as_u64()),
        (Some(0), Some(12))
    );
    assert_eq!(ollama.vision_calls(), 12);
}

#[test]
fn a_killed_workers_jobs_are_finished_by_another_and_its_late_completion_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let ollama = OllamaStandIn::start();
    let config = ollama_config(dir.path(), &ollama, db.url(), 2);
    let folder = photos(dir.path(), 4);
    enqueue(dir.path(), &config, &folder);

    // The describe calls hang, so the first worker holds its claims inside the backend call.
    ollama.set_hang(true);
    let mut killed = Worker::start(
        dir.path(),
        &config,
        "killed",
        &["--lease", "3s", "--jobs", "2"],
    );
    wait_for("the first worker to hold two jobs in the backend", || {
        ollama.in_flight() == 2
            && count(&db, "SELECT count(*) FROM jobs WHERE state = 'running'") == 2
    });
    let held = db.psql(
        "SELECT id, lease_token, locator, sha256, size, attempts FROM jobs
         WHERE state = 'running' ORDER BY id",
    );
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    ollama.set_hang(false);

    let mut rescuer = Worker::start(
        dir.path(),
        &config,
        "rescuer",
        &["--lease", "3s", "--until-empty"],
    );
    assert_eq!(rescuer.wait(), 0, "{}", rescuer.stderr());
    let s = status(dir.path(), &config);
    assert_eq!(
        (s["done"].as_u64(), s["failed"].as_u64()),
        (Some(4), Some(0)),
        "{s}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM entries"), 4);
    assert_eq!(
        count(&db, "SELECT count(*) FROM (SELECT image FROM entries GROUP BY image, space HAVING count(*) > 1) d"),
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE worker = 'rescuer'"),
        4
    );
    // The two jobs the killed worker held were claimed a second time.
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE attempts = 2"),
        2
    );

    // The killed worker, had it lived, would now complete with its old lease token.
    let cache = Cache::open_postgres(db.url(), PgOptions::default()).unwrap();
    let queue = JobQueue::open(&cache).unwrap();
    let before = db.psql("SELECT * FROM jobs ORDER BY id");
    let entries_before = db.psql("SELECT id, image, space, created_at FROM entries ORDER BY id");
    for line in held.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let claim = Claim {
            id: f[0].parse().unwrap(),
            token: f[1].to_string(),
            locator: f[2].to_string(),
            sha256: f[3].to_string(),
            size: f[4].parse().unwrap(),
            attempts: f[5].parse().unwrap(),
        };
        let space = cache.entries_of(&claim.sha256).unwrap()[0].space.clone();
        let mut embedding = cache
            .entry_embedding(&claim.sha256, &space)
            .unwrap()
            .unwrap();
        embedding.vector.iter_mut().for_each(|x| *x = -*x);
        let writer = Writer {
            key: embedding.provenance.plugin.key.clone(),
            name: embedding.provenance.plugin.name.clone(),
            component: String::new(),
        };
        let meta = ImageMeta {
            sha256: claim.sha256.clone(),
            mime: "image/png".into(),
            width: 40,
            height: 40,
            bytes: claim.size,
        };
        assert_eq!(
            queue.complete(&claim, &meta, &embedding, &writer).unwrap(),
            Settled::LeaseLost
        );
        assert_eq!(
            queue.fail(&claim, "late", 3, Duration::ZERO).unwrap(),
            Settled::LeaseLost
        );
        assert_eq!(queue.release(&claim, "late").unwrap(), Settled::LeaseLost);
    }
    assert_eq!(db.psql("SELECT * FROM jobs ORDER BY id"), before);
    assert_eq!(
        db.psql("SELECT id, image, space, created_at FROM entries ORDER BY id"),
        entries_before
    );
}

#[test]
fn with_the_backend_down_nothing_is_claimed_and_once_up_the_work_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let ollama = OllamaStandIn::start();
    ollama.set_down(true);
    let config = ollama_config(dir.path(), &ollama, db.url(), 2);
    let folder = photos(dir.path(), 3);
    enqueue(dir.path(), &config, &folder);

    let mut worker = Worker::start(dir.path(), &config, "w", &[]);
    let probes = ollama.hits(Route::Version);
    wait_for("three health probes answered 'down'", || {
        ollama.hits(Route::Version) >= probes + 3
    });
    assert_eq!(ollama.vision_calls(), 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts = 0"
        ),
        3,
        "{}",
        db.psql("SELECT id, state, attempts, last_error FROM jobs")
    );

    // Up again, but the first describe call meets a busy server (503: unavailable): that job
    // goes back without spending its attempt, and the worker waits for a probe again.
    ollama.fail_next(1);
    ollama.set_down(false);
    wait_for("every job done", || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'done'") == 3
    });
    assert_eq!(worker.terminate(), 0, "{}", worker.stderr());
    assert_eq!(count(&db, "SELECT max(attempts) FROM jobs"), 1);
    let events = worker.events();
    let released = events.iter().filter(|e| e["event"] == "released").count();
    assert_eq!(released, 1, "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "backend-down"));
    assert!(events.iter().any(|e| e["event"] == "backend-up"));
    assert_eq!(events.last().unwrap()["summary"]["done"], 3);
}

#[test]
fn failing_jobs_are_parked_after_their_attempts_with_the_last_error_and_retry_requeues_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let config = hash_config(dir.path(), db.url());
    let folder = photos(dir.path(), 3);
    enqueue(dir.path(), &config, &folder);
    // One file changes after it was enqueued: the worker must not embed other content.
    let changed = folder.join("p01.png");
    let original = std::fs::read(&changed).unwrap();
    std::fs::write(&changed, images::png(99, 40, 1)).unwrap();

    let mut w = Worker::start(
        dir.path(),
        &config,
        "w",
        &[
            "--until-empty",
            "--max-attempts",
            "2",
            "--retry-delay",
            "0s",
        ],
    );
    assert_eq!(w.wait(), 0, "{}", w.stderr());
    let s = status(dir.path(), &config);
    assert_eq!(
        (
            s["done"].as_u64(),
            s["failed"].as_u64(),
            s["queued"].as_u64(),
            s["total"].as_u64()
        ),
        (Some(2), Some(1), Some(0), Some(3)),
        "{s}"
    );
    let failed = &s["failed_jobs"][0];
    assert_eq!(failed["locator"], changed.display().to_string());
    assert_eq!(failed["attempts"], 2);
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("changed since it was enqueued"),
        "{failed}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM entries"), 2);

    std::fs::write(&changed, original).unwrap();
    let retried = json(&ok(run(dir.path(), &config, &["queue", "retry", "--json"])));
    assert_eq!(retried["requeued"], 1);
    let s = status(dir.path(), &config);
    assert_eq!(
        (s["queued"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );

    let mut w = Worker::start(dir.path(), &config, "w2", &["--until-empty"]);
    assert_eq!(w.wait(), 0, "{}", w.stderr());
    let s = status(dir.path(), &config);
    assert_eq!(
        (
            s["done"].as_u64(),
            s["failed"].as_u64(),
            s["queued"].as_u64(),
            s["in_flight"].as_u64()
        ),
        (Some(3), Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert!(s["rate_per_second"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["eta_seconds"].as_f64(), Some(0.0), "{s}");
    assert_eq!(count(&db, "SELECT count(*) FROM entries"), 3);
    // Retrying by id: nothing is failed now.
    let retried = json(&ok(run(
        dir.path(),
        &config,
        &["queue", "retry", "1", "--json"],
    )));
    assert_eq!(retried["requeued"], 0);
}

#[test]
fn the_queue_on_an_sqlite_cache_is_an_error_saying_it_needs_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let config = hash_config(dir.path(), dir.path().join("cache.db").to_str().unwrap());
    for args in [
        &["queue", "status"][..],
        &["worker"],
        &["enqueue", "."],
        &["index", ".", "--queue"],
    ] {
        let out = run(dir.path(), &config, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("needs a PostgreSQL cache")
                && err.contains("[cache] database = \"postgres://"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_gauges_are_in_the_metrics_of_serve_and_of_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let config = hash_config(dir.path(), db.url());
    let folder = photos(dir.path(), 2);
    let enqueue = run(dir.path(), &config, &["enqueue", folder.to_str().unwrap()]);
    ok(enqueue);
    let port = imbed_tests::free_local_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = Worker::start(dir.path(), &config, "w", &["--metrics", &addr]);
    let done = || count(&db, "SELECT count(*) FROM jobs WHERE state = 'done'") == 2;
    tokio::task::block_in_place(|| wait_for("both jobs done", done));
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "imbed_queue_jobs{state=\"done\"} 2",
        "imbed_queue_jobs{state=\"queued\"} 0",
        "imbed_worker_jobs_done_total 2",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
    assert_eq!(worker.terminate(), 0, "{}", worker.stderr());

    let cache = Cache::open_postgres(db.url(), PgOptions::default()).unwrap();
    let built = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .build();
    let state = imbed::server::AppState::build_with_store(built, Some(cache))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(imbed::server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.abort();
    for line in [
        "imbed_queue_jobs{state=\"done\"} 2",
        "imbed_queue_jobs{state=\"failed\"} 0",
        "imbed_queue_workers 0",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

#[test]
fn heartbeats_keep_a_lease_shorter_than_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let ollama = OllamaStandIn::start();
    let config = ollama_config(dir.path(), &ollama, db.url(), 2);
    let folder = photos(dir.path(), 2);
    enqueue(dir.path(), &config, &folder);
    // Each describe call outlasts the lease several times over.
    ollama.set_latency(Duration::from_secs(6));
    let mut w = Worker::start(
        dir.path(),
        &config,
        "w",
        &["--lease", "2s", "--until-empty"],
    );
    assert_eq!(w.wait(), 0, "{}", w.stderr());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE state = 'done' AND attempts = 1"
        ),
        2
    );
    assert_eq!(ollama.vision_calls(), 2);
    assert!(
        !w.events().iter().any(|e| e["event"] == "lease-lost"),
        "{:?}",
        w.events()
    );
}

#[test]
fn degraded_answers_are_kept_as_imbed_index_keeps_them_and_upgrade_queues_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let ollama = OllamaStandIn::start();
    let config = TestConfig::new()
        .plugin(
            "ollama",
            PluginSpec::file(component("ollama"))
                .grant_http(&ollama.base_url())
                .setting("base_url", &ollama.base_url())
                .setting("vision_model", "llava")
                .setting("embed_model", "nomic-embed-text")
                .timeout_ms(120_000),
        )
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "ollama")
        .hash("hash")
        .database(db.url())
        .write(dir.path());
    let folder = photos(dir.path(), 3);
    enqueue(dir.path(), &config, &folder);
    // The vision model fails (not "unavailable"): the chain falls back to the hash step.
    ollama.set_failure(Failure::Status {
        status: 500,
        error: "model runner crashed".into(),
    });
    ollama.set_failure_rate(1.0);
    let mut w = Worker::start(dir.path(), &config, "w", &["--until-empty"]);
    assert_eq!(w.wait(), 0, "{}", w.stderr());
    assert!(w.stderr().contains("fallback step"), "{}", w.stderr());
    let s = status(dir.path(), &config);
    assert_eq!(
        (s["done"].as_u64(), s["degraded"].as_u64()),
        (Some(3), Some(3)),
        "{s}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM entries WHERE degraded"), 3);

    // The vision model is back: --upgrade alone queues every degraded image again.
    ollama.set_failure_rate(0.0);
    let up = json(&ok(run(
        dir.path(),
        &config,
        &["index", "--queue", "--upgrade", "--json"],
    )));
    assert_eq!(up["queued"], 3, "{up}");
    let mut w = Worker::start(dir.path(), &config, "w2", &["--until-empty"]);
    assert_eq!(w.wait(), 0, "{}", w.stderr());
    let s = status(dir.path(), &config);
    assert_eq!(
        (s["done"].as_u64(), s["degraded"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM entries WHERE NOT degraded"),
        3
    );
}

#[test]
fn a_stopped_worker_claims_nothing_more_finishes_what_it_holds_and_a_second_stop_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let ollama = OllamaStandIn::start();
    let config = ollama_config(dir.path(), &ollama, db.url(), 2);
    let folder = photos(dir.path(), 4);
    enqueue(dir.path(), &config, &folder);
    let holding_two = || {
        ollama.in_flight() == 2
            && count(&db, "SELECT count(*) FROM jobs WHERE state = 'running'") == 2
    };
    let signal = |w: &Worker| {
        Command::new("kill")
            .args(["-TERM", &w.child.id().to_string()])
            .status()
            .unwrap();
    };

    ollama.set_hang(true);
    let mut first = Worker::start(dir.path(), &config, "first", &["--jobs", "2"]);
    wait_for("two jobs held", holding_two);
    signal(&first);
    wait_for("the stop to be seen", || {
        first.stderr().contains("claiming nothing more")
    });
    ollama.set_hang(false);
    assert_eq!(first.wait(), 0, "{}", first.stderr());
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'done'"),
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts = 0"
        ),
        2
    );

    ollama.set_hang(true);
    let mut second = Worker::start(dir.path(), &config, "second", &["--jobs", "2"]);
    wait_for("two jobs held", holding_two);
    signal(&second);
    wait_for("the stop to be seen", || {
        second.stderr().contains("claiming nothing more")
    });
    signal(&second);
    assert_eq!(second.wait(), 0, "{}", second.stderr());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts = 0"
        ),
        2,
        "given back without spending an attempt"
    );
    let released = second
        .events()
        .iter()
        .filter(|e| e["event"] == "released")
        .count();
    assert_eq!(released, 2);
    ollama.set_hang(false);
}

#[test]
fn a_job_whose_worker_died_on_its_last_allowed_attempt_is_parked_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let ollama = OllamaStandIn::start();
    let config = ollama_config(dir.path(), &ollama, db.url(), 2);
    let folder = photos(dir.path(), 2);
    enqueue(dir.path(), &config, &folder);
    ollama.set_hang(true);
    let one = ["--max-attempts", "1", "--lease", "1s"];
    let mut killed = Worker::start(dir.path(), &config, "killed", &one);
    wait_for("two jobs held", || {
        ollama.in_flight() == 2
            && count(&db, "SELECT count(*) FROM jobs WHERE state = 'running'") == 2
    });
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    ollama.set_hang(false);

    let mut next = Worker::start(
        dir.path(),
        &config,
        "next",
        &[&one[..], &["--until-empty"]].concat(),
    );
    assert_eq!(next.wait(), 0, "{}", next.stderr());
    let s = status(dir.path(), &config);
    assert_eq!(
        (s["failed"].as_u64(), s["done"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    for job in s["failed_jobs"].as_array().unwrap() {
        assert!(
            job["last_error"]
                .as_str()
                .unwrap()
                .contains("the lease ran out"),
            "{job}"
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM entries"), 0);
}

#[test]
fn over_two_endpoints_one_stopped_midway_every_job_finishes_and_with_both_down_nothing_is_claimed()
{
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let mut a = OllamaStandIn::start();
    let b = OllamaStandIn::start();
    for s in [&a, &b] {
        s.set_latency(Duration::from_millis(100));
    }
    let config = pooled_config(dir.path(), &[&a, &b], db.url(), 2);
    let folder = photos(dir.path(), 16);
    enqueue(dir.path(), &config, &folder);

    // One worker: the pool's per-endpoint concurrency is per process.
    let mut worker = Worker::start(dir.path(), &config, "w", &[]);
    wait_for("the first endpoint to have described two images", || {
        a.vision_calls() >= 2
    });
    a.stop();
    wait_for("every job done", || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'done'") == 16
    });
    assert_eq!(worker.terminate(), 0, "{}", worker.stderr());
    assert!(a.peak_in_flight() <= 2, "a: {}", a.peak_in_flight());
    assert!(b.peak_in_flight() <= 2, "b: {}", b.peak_in_flight());
    assert!(b.vision_calls() > 0);
    // A request cut off by the stop was retried on the other endpoint within its attempt.
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE attempts <> 1"),
        0,
        "{}",
        db.psql("SELECT id, state, attempts, last_error FROM jobs")
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM entries WHERE NOT degraded"),
        16
    );

    // Both down: a new worker probes, finds no endpoint answering, and claims nothing.
    b.set_down(true);
    let more = dir.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    for i in 0..4 {
        std::fs::write(more.join(format!("m{i}.png")), images::png(70 + i, 30, i)).unwrap();
    }
    ok(run(
        dir.path(),
        &config,
        &["enqueue", more.to_str().unwrap()],
    ));
    let described = b.vision_calls();
    let mut worker = Worker::start(dir.path(), &config, "w2", &[]);
    let probes = b.hits(Route::Version);
    wait_for("three health probes answered 'down'", || {
        b.hits(Route::Version) >= probes + 3
    });
    assert_eq!(b.vision_calls(), described);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts = 0 AND worker IS NULL"
        ),
        4,
        "{}",
        db.psql("SELECT id, state, attempts, worker, last_error FROM jobs")
    );
    // One back: the work finishes there.
    b.set_down(false);
    wait_for("every job done", || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'done'") == 20
    });
    assert_eq!(worker.terminate(), 0, "{}", worker.stderr());
    let events = worker.events();
    assert!(
        events.iter().any(|e| e["event"] == "backend-down"),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "failed" || e["event"] == "released"),
        "{events:?}"
    );
}

#[test]
fn workers_carry_on_across_a_postgres_restart_with_every_image_described_once() {
    let server = postgres::own_server();
    let url = server.url("imbed");
    let dir = tempfile::tempdir().unwrap();
    let ollama = OllamaStandIn::start();
    ollama.set_latency(Duration::from_millis(150));
    let config = ollama_config(dir.path(), &ollama, &url, 2);
    let folder = photos(dir.path(), 12);
    enqueue(dir.path(), &config, &folder);
    let done = || -> i64 {
        server
            .psql("imbed", "SELECT count(*) FROM jobs WHERE state = 'done'")
            .trim()
            .parse()
            .unwrap()
    };
    let mut workers = [
        Worker::start(dir.path(), &config, "w1", &["--lease", "60s"]),
        Worker::start(dir.path(), &config, "w2", &["--lease", "60s"]),
    ];
    wait_for("three jobs done", || done() >= 3);
    // Down while work is in hand: the answers made meanwhile are kept and written once the
    // database is back, within their leases.
    wait_for("a describe call in flight", || ollama.in_flight() > 0);
    server.stop();
    std::thread::sleep(Duration::from_secs(2));
    server.start_again();
    wait_for("every job done", || done() == 12);
    for w in &mut workers {
        assert_eq!(w.terminate(), 0, "{}", w.stderr());
    }
    let psql = |sql: &str| server.psql("imbed", sql).trim().to_string();
    assert_eq!(psql("SELECT count(*) FROM entries"), "12");
    assert_eq!(psql("SELECT count(DISTINCT image) FROM entries"), "12");
    assert_eq!(
        psql("SELECT count(*) FROM jobs WHERE attempts <> 1"),
        "0",
        "{}",
        psql("SELECT id, state, attempts, last_error FROM jobs")
    );
    assert_eq!(ollama.vision_calls(), 12, "every image described once");
    let errors: usize = workers
        .iter()
        .flat_map(|w| w.events())
        .filter(|e| e["event"] == "database-error")
        .count();
    // (The outage was seen: by the claim loop or the settling, which waited it out.)
    let stderr: String = workers.iter().map(|w| w.stderr()).collect();
    assert!(
        errors > 0 || stderr.contains("cannot be reached"),
        "the workers did not notice the restart"
    );
}
