//! A plugin written in Python (tests/programs/python-embedder), built by componentize-py from
//! the same wit/0.2.0 files as the Rust plugins, loaded and used by the unmodified host: the
//! contract does not depend on the guest's language.
//!
//! Its vectors are checked against this file's own Rust implementation of the algorithm the
//! plugin documents (pyhash.py), so a wrong number anywhere between Python and the caller shows.

use imbed::{
    DescriptionSource, Embedding, Error, FailureKind, ImageRequest, ImageSource, Imbed,
    PluginHealth, StepKind,
};
use imbed_tests::{images, python, PluginSpec, TestConfig};
use tokio::sync::OnceCell;

/// Memory cap for the Python plugin. CPython's pre-initialised heap needs 13 to 14 MiB to embed
/// a short text (12 MiB traps as memory-exceeded); the rest is room for batches.
const MEMORY_MB: u64 = 48;
/// Deadline per call. Calls take milliseconds; instantiating the 18 MB component takes longer
/// than a Rust plugin's, and two cores are shared by the whole suite.
const TIMEOUT_MS: u64 = 20_000;

fn py(dims: u32) -> PluginSpec {
    PluginSpec::file(python::component())
        .memory_mb(MEMORY_MB)
        .timeout_ms(TIMEOUT_MS)
        .setting_raw("dimensions", &dims.to_string())
}

/// A config with the compile cache that outlives the test process: the first load compiles
/// the component (tens of seconds), later ones read the cache.
fn config() -> TestConfig {
    TestConfig::new().cache_dir(python::compile_cache_dir())
}

/// Compile the component into the cache once, before the tests that load it run side by side
/// (each would otherwise compile it at the same time).
async fn ready() {
    static READY: OnceCell<()> = OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let cfg = config().plugin("py", py(64)).description("py").build();
            Imbed::new(cfg).await.expect("engine starts");
        })
        .await;
}

async fn imbed(cfg: TestConfig) -> Imbed {
    ready().await;
    Imbed::new(cfg.build()).await.expect("engine starts")
}

// ---------------------------------------------------------------------------------------------
// The algorithm of pyhash.py, independently in Rust.

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn words(text: &str, stopwords: &[&str]) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !stopwords.contains(&w.as_str()))
        .collect()
}

/// The vector the plugin should return, normalised as the host normalises it.
fn reference(text: &str, dims: usize, stopwords: &[&str]) -> Vec<f32> {
    let mut v = vec![0f64; dims];
    for word in words(text, stopwords) {
        let marked: Vec<char> = format!("^{word}$").chars().collect();
        let trigrams = marked
            .windows(3)
            .map(|t| (format!("c:{}", t.iter().collect::<String>()), 0.5));
        for (feature, weight) in std::iter::once((format!("w:{word}"), 1.0)).chain(trigrams) {
            let h = fnv1a64(feature.as_bytes());
            v[(h % dims as u64) as usize] += if h >> 63 == 1 { -weight } else { weight };
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(norm > 0.0, "{text:?} has no features");
    v.iter().map(|x| (x / norm) as f32).collect()
}

#[track_caller]
fn assert_matches_reference(e: &Embedding, text: &str, dims: usize, stopwords: &[&str]) {
    let want = reference(text, dims, stopwords);
    assert_eq!(e.vector.len(), dims);
    let worst = e
        .vector
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-6,
        "{text:?}: the plugin's vector differs from the reference by up to {worst}"
    );
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_component_targets_the_contract_and_loads_with_nothing_granted() {
    let path = python::component();
    let (report, health) = imbed::check_plugin(path)
        .await
        .expect("the component is readable");
    assert_eq!(report.contract.as_deref(), Some("0.2.0"));
    for export in ["imbed:plugin/plugin@0.2.0", "imbed:plugin/embedder@0.2.0"] {
        assert!(
            report.exports.iter().any(|e| e == export),
            "{:?}",
            report.exports
        );
    }
    assert!(
        !report
            .exports
            .iter()
            .any(|e| e.contains("describer") || e.contains("image-embedder")),
        "{:?}",
        report.exports
    );
    assert!(report
        .imports
        .iter()
        .any(|i| i == "imbed:plugin/host@0.2.0"));
    // The Python runtime imports WASI (files, environment, sockets...); the host links all of
    // it and grants none of it, and the plugin still loads and answers.
    assert!(report
        .imports
        .iter()
        .any(|i| i.starts_with("wasi:filesystem/")));
    match health {
        PluginHealth::Ready {
            name,
            version,
            roles,
            ..
        } => {
            assert_eq!((name.as_str(), version.as_str()), ("py-hash", "0.1.0"));
            assert!(roles.text_embedder && !roles.describer && !roles.image_embedder);
        }
        PluginHealth::Failed { kind, message } => panic!("does not load: {kind:?}: {message}"),
    }
}

#[tokio::test]
async fn embeds_a_batch_in_a_chain_with_per_item_errors() {
    let imbed = imbed(
        config()
            .plugin("py", py(64))
            .plugin("hash", PluginSpec::hash())
            .description("py")
            .hash("hash"),
    )
    .await;
    let texts: Vec<String> = [
        "A cat sleeping on a laptop keyboard",
        "!!! ... ???",
        "Café naïve résumé, 42 times",
        "cats sleeping on laptop keyboards",
    ]
    .map(String::from)
    .to_vec();
    let results = imbed.embed_texts(&texts).await;
    assert_eq!(results.len(), 4);

    for i in [0, 2, 3] {
        let e = results[i].as_ref().expect("the Python step answers");
        let p = &e.provenance;
        assert_eq!((p.step, p.step_kind), (0, StepKind::Description));
        assert_eq!(p.plugin.key, "py");
        assert_eq!(
            (p.plugin.name.as_str(), p.plugin.version.as_str()),
            ("py-hash", "0.1.0")
        );
        assert_eq!(p.model, "py-hash-text-v1");
        assert_eq!(p.space, "py-hash/text@v1:64");
        assert_eq!(p.dimensions, 64);
        assert!(!p.degraded && p.attempts.is_empty());
        let d = p
            .description
            .as_ref()
            .expect("text results carry their text");
        assert_eq!(
            (d.text.as_str(), d.source),
            (texts[i].as_str(), DescriptionSource::Query)
        );
        assert_matches_reference(e, &texts[i], 64, &[]);
    }
    let close = results[0]
        .as_ref()
        .unwrap()
        .similarity(results[3].as_ref().unwrap());
    let far = results[0]
        .as_ref()
        .unwrap()
        .similarity(results[2].as_ref().unwrap());
    assert!(close.unwrap() > far.unwrap() + 0.3, "{close:?} vs {far:?}");

    // The text without words fails alone, as bad input, and moves on to the next step alone
    // (where the hash plugin refuses it too).
    match &results[1] {
        Err(Error::Exhausted { attempts }) => {
            let a = &attempts[0];
            assert_eq!(
                (a.plugin.as_deref(), a.kind),
                (Some("py"), FailureKind::BadInput)
            );
            assert!(
                a.message.contains("the text has no letters or digits"),
                "{}",
                a.message
            );
            assert_eq!(attempts[1].plugin.as_deref(), Some("hash"));
        }
        other => panic!("expected the item to fail on its own, got {other:?}"),
    }
}

#[tokio::test]
async fn embeds_the_callers_description_of_an_image() {
    let imbed = imbed(config().plugin("py", py(128)).description("py")).await;
    let text = "a red kite over the beach at sunset";
    let e = imbed
        .embed_image(
            ImageRequest::new(ImageSource::Bytes(images::png(32, 24, 2))).with_description(text),
        )
        .await
        .expect("the description step answers");
    assert_eq!(e.provenance.space, "py-hash/text@v1:128");
    let d = e.provenance.description.as_ref().unwrap();
    assert_eq!(d.source, DescriptionSource::Caller);
    assert_matches_reference(&e, text, 128, &[]);
    // The same text as a query lands on the same vector, in the same space.
    let q = imbed.embed_text(text).await.unwrap();
    assert_eq!(q.similarity(&e).map(|s| s > 0.99999), Some(true));
}

#[tokio::test]
async fn files_are_visible_only_under_the_granted_model_dir() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("stopwords.txt");
    std::fs::write(&list, "# common words\nThe\na\n\n").unwrap();
    let imbed = imbed(
        config()
            // The file exists on this machine, but outside any grant.
            .plugin(
                "outside",
                py(64).setting("stopwords", &list.display().to_string()),
            )
            .plugin(
                "granted",
                py(64)
                    .setting("stopwords", "/model/stopwords.txt")
                    .grant_model_dir(dir.path()),
            )
            .description("outside")
            .description("granted"),
    )
    .await;

    let e = imbed.embed_text("The cat on a mat").await.unwrap();
    let a = &e.provenance.attempts[0];
    assert_eq!(
        (a.plugin.as_deref(), a.kind),
        (Some("outside"), FailureKind::ModelNotFound)
    );
    assert!(
        a.message.contains("cannot read the stop-word file") && a.message.contains("model_dir"),
        "{}",
        a.message
    );

    // Stop words change the numbers, so a digest of the list is in the space id.
    assert_eq!(e.provenance.plugin.key, "granted");
    let digest = fnv1a64(b"a\nthe");
    assert_eq!(
        e.provenance.space,
        format!("py-hash/text@v1+sw{digest:016x}:64")
    );
    assert_matches_reference(&e, "The cat on a mat", 64, &["the", "a"]);
    let plain = imbed.embed_text("cat on mat").await.unwrap();
    assert_eq!(plain.vector, e.vector);
    match imbed.embed_text("the A").await {
        Err(Error::Exhausted { attempts }) => {
            assert_eq!(attempts[1].kind, FailureKind::BadInput);
            assert!(attempts[1]
                .message
                .contains("every word of the text is a stop word"));
        }
        other => panic!("expected bad input, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_setting_fails_the_step_with_what_to_fix() {
    let bad = imbed(
        config()
            .plugin("py", py(64).setting_raw("dimensions", "3"))
            .plugin("hash", PluginSpec::hash())
            .description("py")
            .hash("hash"),
    )
    .await;
    let e = bad.embed_text("anything").await.unwrap();
    let a = &e.provenance.attempts[0];
    assert_eq!(a.kind, FailureKind::BadSetting);
    assert!(
        a.message
            .contains("dimensions = 3 is not an integer from 8 to 4096"),
        "{}",
        a.message
    );

    // A stop-word file that is not text.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stop.txt"), b"caf\xe9\n").unwrap();
    let garbled = imbed(
        config()
            .plugin(
                "py",
                py(64)
                    .setting("stopwords", "/model/stop.txt")
                    .grant_model_dir(dir.path()),
            )
            .description("py"),
    )
    .await;
    match garbled.embed_text("anything").await {
        Err(Error::Exhausted { attempts }) => {
            assert_eq!(attempts[0].kind, FailureKind::ModelNotFound);
            assert!(
                attempts[0].message.contains("is not UTF-8 text"),
                "{}",
                attempts[0].message
            );
        }
        other => panic!("expected a refused stop-word file, got {other:?}"),
    }

    // Alone in the chain, the plugin's per-item error is the answer.
    let only_py = imbed(config().plugin("py", py(64)).description("py")).await;
    match only_py.embed_text("!?").await {
        Err(Error::Exhausted { attempts }) => assert_eq!(attempts[0].kind, FailureKind::BadInput),
        other => panic!("expected bad input, got {other:?}"),
    }
}

#[tokio::test]
async fn the_cli_embeds_with_it_and_shows_its_log_lines() {
    ready().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config()
        .plugin("py", py(64))
        .description("py")
        .write(dir.path());
    let text = "a red kite over the beach";
    let out = crate::cli::imbed(dir.path())
        .arg("--config")
        .arg(&cfg)
        .args(["--log", "info", "embed-text", text])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["provenance"]["space"], "py-hash/text@v1:64");
    assert_eq!(line["provenance"]["plugin"]["name"], "py-hash");
    let vector: Vec<f32> = line["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let want = reference(text, 64, &[]);
    assert!(vector.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
    // The plugin's own log line, through the host's `log` import.
    assert!(
        stderr.contains("py-hash v1: 64 dimensions, 0 stop words, space py-hash/text@v1:64"),
        "{stderr}"
    );
}
