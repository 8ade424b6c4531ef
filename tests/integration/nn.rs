//! The wasi-nn capability on the host's ONNX Runtime backend, with real graphs (made by
//! tests/fixtures/nn/make_graphs.py) and a guest (tests/programs/nn-probe) that calls wasi-nn
//! well and in hostile ways. Every refusal is an error the guest sees; the host stays up and the
//! chain moves on to the hash plugin.

use std::time::{Duration, Instant};

use imbed::{Embedding, FailureKind, Imbed};
use imbed_tests::{component, nn, PluginSpec, TestConfig};

fn probe(mode: &str, dir: &std::path::Path) -> PluginSpec {
    PluginSpec::file(component("nn-probe"))
        .setting("mode", mode)
        .grant_model_dir(dir)
}

/// `probe` first, the hash plugin after it.
fn config(probe: PluginSpec) -> TestConfig {
    TestConfig::new()
        .plugin("probe", probe)
        .plugin("hash", PluginSpec::hash())
        .description("probe")
        .hash("hash")
}

async fn embed(config: TestConfig) -> Embedding {
    let imbed = Imbed::new(config.build()).await.expect("engine starts");
    imbed
        .embed_text("a query")
        .await
        .expect("the chain answers")
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f32]) {
    let want = normalised(want);
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

/// The hash step answered after the probe failed with `needle` in its message.
#[track_caller]
fn refused(e: &Embedding, needle: &str) {
    assert_eq!(e.provenance.plugin.key, "hash", "{:?}", e.provenance);
    let a = &e.provenance.attempts[0];
    assert_eq!(a.plugin.as_deref(), Some("probe"));
    assert_eq!(a.kind, FailureKind::Other, "{}", a.message);
    assert!(
        a.message.contains(needle),
        "expected {needle:?} in {:?}",
        a.message
    );
}

#[tokio::test]
async fn a_granted_graph_computes_the_right_numbers_natively_and_provenance_says_so() {
    let dir = nn::model_dir(&["tiny", "types"], &[]);
    let e = embed(config(
        probe("tiny", dir.path()).grant_nn("tiny").grant_nn("types"),
    ))
    .await;
    assert_eq!(e.provenance.plugin.key, "probe", "{:?}", e.provenance);
    // y = [1,0,0,1] @ W + b with W, b of make_graphs.py; n = ids * 2 + 1.
    assert_close(
        &e.vector,
        &[1.0 + 7.0 + 0.5, 2.0 + 8.0 - 0.5, 3.0, 5.0, 7.0],
    );
    let inference = e.provenance.inference.as_ref().expect("inference recorded");
    assert_eq!(inference.backend, "onnxruntime");
    assert_eq!(inference.graphs, ["tiny"]);
    assert_eq!(inference.runs, 1);
    let json = serde_json::to_value(&e.provenance).unwrap();
    assert_eq!(json["inference"]["graphs"][0], "tiny");

    // f16 and i32 in and out.
    let e = embed(config(
        probe("types", dir.path())
            .grant_nn("tiny")
            .grant_nn("types"),
    ))
    .await;
    assert_eq!(e.provenance.plugin.key, "probe", "{:?}", e.provenance);
    assert_close(&e.vector, &[3.0, -4.0, 2.0, 3.0]);

    // A plugin that never imports wasi:nn records nothing.
    let hash = embed(
        TestConfig::new()
            .plugin("hash", PluginSpec::hash())
            .hash("hash"),
    )
    .await;
    assert!(hash.provenance.inference.is_none());
    assert!(serde_json::to_value(&hash.provenance)
        .unwrap()
        .get("inference")
        .is_none());
}

#[tokio::test]
async fn hostile_wasi_nn_calls_are_errors_and_the_chain_moves_on() {
    let dir = nn::model_dir(&["tiny", "types"], &[]);
    let cases: &[(&str, &[&str], &str)] = &[
        // No grant at all, though the plugin imports wasi:nn and has a model_dir.
        (
            "tiny",
            &[],
            "wasi-nn security: plugin \"probe\" is not granted wasi-nn",
        ),
        // A graph that is not granted (the file is there and listed).
        (
            "tiny",
            &["types"],
            "wasi-nn security: graph \"tiny\" is not granted",
        ),
        (
            "load-bytes",
            &["tiny"],
            "wasi-nn security: loading a graph from bytes is refused",
        ),
        (
            "wrong-dtype",
            &["tiny"],
            "wasi-nn invalid-argument: input \"x\" takes f32, not i64",
        ),
        (
            "wrong-rank",
            &["tiny"],
            "wasi-nn invalid-argument: input \"x\" has rank 1",
        ),
        (
            "huge",
            &["tiny"],
            "wasi-nn too-large: input \"x\" has 1099511627776 elements",
        ),
        (
            "nan",
            &["tiny"],
            "wasi-nn invalid-argument: input \"x\": element 1 is NaN",
        ),
        (
            "unknown-input",
            &["tiny"],
            "wasi-nn invalid-argument: the graph has no input \"z\"",
        ),
        (
            "short-data",
            &["tiny"],
            "need 16 bytes of data, but 12 were given",
        ),
        (
            "bf16",
            &["tiny"],
            "wasi-nn unsupported-operation: input \"x\": tensor type bf16",
        ),
    ];
    for (mode, grants, needle) in cases {
        let mut spec = probe(mode, dir.path());
        for g in *grants {
            spec = spec.grant_nn(g);
        }
        let e = embed(config(spec)).await;
        refused(&e, needle);
        // Refused inputs never reached ONNX Runtime.
        assert!(e.provenance.attempts[0].inference.is_none(), "{mode}");
    }
    // The host is alive and the same process still computes.
    let e = embed(config(probe("tiny", dir.path()).grant_nn("tiny"))).await;
    assert_eq!(e.provenance.plugin.key, "probe", "{:?}", e.provenance);
}

#[tokio::test]
async fn graph_files_the_manifest_does_not_vouch_for_are_refused() {
    let tampered = nn::model_dir(&["tiny"], &["tiny"]);
    let e = embed(config(probe("tiny", tampered.path()).grant_nn("tiny"))).await;
    refused(&e, "wasi-nn security: graph \"tiny\": ");
    refused(&e, "but the folder's imbed-model.json says 0000");

    let unlisted = nn::model_dir(&["tiny"], &[]);
    std::fs::remove_file(unlisted.path().join("imbed-model.json")).unwrap();
    let e = embed(config(probe("tiny", unlisted.path()).grant_nn("tiny"))).await;
    refused(&e, "graph \"tiny\" cannot be verified");

    // Granted and listed, but the file is not there.
    let missing = nn::model_dir(&["tiny"], &[]);
    std::fs::remove_file(missing.path().join("tiny.onnx")).unwrap();
    let e = embed(config(probe("tiny", missing.path()).grant_nn("tiny"))).await;
    refused(&e, "wasi-nn not-found: graph file");
}

#[tokio::test]
async fn a_run_past_the_call_deadline_is_stopped_and_frees_its_thread() {
    let dir = nn::model_dir(&["slow", "tiny"], &[]);
    // One run thread: the tiny graph after the slow one only runs once the slow run has
    // really stopped (unstopped it takes well over ten seconds).
    let config = TestConfig::new()
        .nn("runs", "1")
        .plugin(
            "slow",
            probe("slow", dir.path()).grant_nn("slow").timeout_ms(2500),
        )
        .plugin("probe", probe("tiny", dir.path()).grant_nn("tiny"))
        .description("slow")
        .description("probe");
    let imbed = Imbed::new(config.build()).await.unwrap();
    let started = Instant::now();
    let e = imbed.embed_text("a query").await.unwrap();
    let took = started.elapsed();
    assert_eq!(e.provenance.plugin.key, "probe", "{:?}", e.provenance);
    let a = &e.provenance.attempts[0];
    // The host's answer to `compute` normally reaches the guest first; on a loaded machine
    // the call's own deadline may win by a few milliseconds. Either way the run was stopped.
    assert!(
        a.message
            .contains("wasi-nn timeout: graph \"slow\" ran past the plugin call's deadline")
            || a.kind == FailureKind::Timeout,
        "{a:?}"
    );
    assert_eq!(
        a.inference.as_ref().map(|i| i.graphs.clone()),
        Some(vec!["slow".to_string()])
    );
    assert!(
        took < Duration::from_millis(8000),
        "the slow run was not stopped: {took:?}"
    );
}

#[tokio::test]
async fn the_native_memory_budget_is_enforced_at_graph_load_and_shown() {
    // big.onnx holds a 4 MiB weight: over a 2 MiB budget before ONNX Runtime reads it.
    let dir = nn::model_dir(&["big", "tiny"], &[]);
    let e = embed(config(
        probe("tiny", dir.path())
            .setting("graph", "big")
            .grant_nn("big")
            .limit("nn_memory_mb", "2"),
    ))
    .await;
    refused(
        &e,
        "wasi-nn too-large: graph \"big\" needs 4.0 MiB of native memory",
    );
    refused(&e, "raise [plugins.probe.limits] nn_memory_mb");

    // The status: budget, usage, graphs, library.
    let imbed = Imbed::new(
        config(
            probe("tiny", dir.path())
                .grant_nn("tiny")
                .grant_nn("absent")
                .limit("nn_memory_mb", "64"),
        )
        .build(),
    )
    .await
    .unwrap();
    let e = imbed.embed_text("a query").await.unwrap();
    assert_eq!(e.provenance.plugin.key, "probe", "{:?}", e.provenance);
    imbed.verify_nn_graphs().await;
    let status = imbed.plugins();
    let probe = status.iter().find(|p| p.key == "probe").unwrap();
    let nn = probe.nn.as_ref().expect("nn status");
    assert_eq!(nn.memory_budget_bytes, 64 << 20);
    assert_eq!(nn.library.version.as_deref(), Some("1.22.1"));
    assert!(nn.library.loaded, "{:?}", nn.library);
    let states: Vec<(&str, &str)> = nn
        .graphs
        .iter()
        .map(|g| (g.name.as_str(), g.state.as_str()))
        .collect();
    // The plugin keeps the session of a graph once loaded.
    assert_eq!(states, [("tiny", "loaded"), ("absent", "missing")]);
    assert!(nn.memory_used_bytes > 0);
    let hash = status.iter().find(|p| p.key == "hash").unwrap();
    assert!(hash.nn.is_none());
}

#[tokio::test]
async fn a_missing_onnx_runtime_library_is_a_clear_error_not_a_crash() {
    let dir = nn::model_dir(&["tiny"], &[]);
    let e = embed(
        config(probe("tiny", dir.path()).grant_nn("tiny"))
            .nn("library", "\"/nonexistent/libonnxruntime.so.1.22.1\""),
    )
    .await;
    refused(&e, "wasi-nn not-found: the ONNX Runtime library /nonexistent/libonnxruntime.so.1.22.1 is not there: run ./imbed.sh once");
}

#[tokio::test]
async fn instances_share_one_session_and_compute_concurrently() {
    let dir = nn::model_dir(&["tiny"], &[]);
    let imbed = Imbed::new(
        config(probe("tiny", dir.path()).grant_nn("tiny").instances(2))
            .nn("runs", "2")
            .build(),
    )
    .await
    .unwrap();
    let calls = (0..8).map(|i| {
        let imbed = imbed.clone();
        async move { imbed.embed_text(&format!("query {i}")).await.unwrap() }
    });
    for e in futures::future::join_all(calls).await {
        assert_eq!(e.provenance.plugin.key, "probe", "{:?}", e.provenance);
        assert_close(&e.vector, &[8.5, 9.5, 3.0, 5.0, 7.0]);
    }
    let status = imbed.plugins();
    let nn = status
        .iter()
        .find(|p| p.key == "probe")
        .unwrap()
        .nn
        .clone()
        .unwrap();
    // One session for both instances: the graph is counted once.
    assert_eq!(nn.graphs.len(), 1);
    assert_eq!(nn.graphs[0].state, "loaded");
    assert_eq!(nn.graphs[0].memory_bytes, Some(nn.memory_used_bytes));
}

/// Random wasi-nn calls from a guest (the probe's `fuzz` mode, seeded): names, element types,
/// ranks, dimensions up to u32::MAX, data lengths that match or not, NaN and infinities. The
/// host answers every one with a result: the probe's instance never traps (the probe, not the
/// hash step, answers), and afterwards the same engine still computes the right numbers.
#[tokio::test]
async fn random_tensors_from_a_guest_never_trap_or_crash_the_host() {
    let dir = nn::model_dir(&["tiny", "types"], &[]);
    let granted = |mode: &str| probe(mode, dir.path()).grant_nn("tiny").grant_nn("types");
    for seed in 1..=6u64 {
        let e = embed(config(
            granted("fuzz")
                .setting("seed", &seed.to_string())
                .setting("rounds", "150"),
        ))
        .await;
        assert_eq!(
            e.provenance.plugin.key, "probe",
            "seed {seed}: the fuzzing guest did not answer: {:?}",
            e.provenance.attempts
        );
        // [computed, refused]: the fuzz mode ran (the tiny graph's answer has 5 numbers).
        assert_eq!(e.vector.len(), 2, "seed {seed}");
    }
    let e = embed(config(granted("tiny"))).await;
    assert_eq!(e.provenance.plugin.key, "probe", "{:?}", e.provenance);
    assert_close(
        &e.vector,
        &[1.0 + 7.0 + 0.5, 2.0 + 8.0 - 0.5, 3.0, 5.0, 7.0],
    );
}
