//! Space ownership: a space belongs to the plugin (config key) that first wrote into it; a
//! plugin reporting another plugin's space is refused before anything it returns is stored or
//! returned, unless the config declares the two as sharing.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use imbed::search::Method;
use imbed::store::Cache;
use imbed::types::FailureKind;
use imbed::{Embedding, Error, ImageRequest, ImageSource, Imbed, ImbedOptions};
use imbed_tests::{images, PluginSpec, TestConfig};
use sha2::{Digest, Sha256};

use crate::cli::imbed as imbed_cli;

const HASH_SPACE: &str = "imbed-hash/image@v1:256";

async fn open(config: &TestConfig, db: &Path) -> Imbed {
    let store = Cache::open(db).expect("cache opens");
    Imbed::with_options(config.build(), ImbedOptions::default().store(store))
        .await
        .expect("engine starts")
}

/// A distinct image per seed (the generator draws four patterns; the size tells them apart).
fn png(seed: u32) -> Vec<u8> {
    images::png(40 + seed, 32, seed)
}

async fn embed(imbed: &Imbed, seed: u32) -> Result<Embedding, Error> {
    imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(png(seed))))
        .await
}

fn sha_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The image's content hash, as the store keys it.
fn image_sha(seed: u32) -> String {
    sha_of(&png(seed))
}

/// A test plugin that reports `space` (with `dims` dimensions) whatever it really computes.
fn reporting(space: &str, dims: u32) -> PluginSpec {
    PluginSpec::misbehave("ok")
        .setting("space", space)
        .setting("dims", &dims.to_string())
}

#[tokio::test]
async fn a_plugin_reporting_another_plugins_space_is_refused_and_nothing_it_returns_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("imbed.db");
    // The hash plugin writes its space first: it owns it.
    let hash = TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .database(&db);
    let owner = open(&hash, &db).await;
    for seed in 1..=3 {
        assert_eq!(
            embed(&owner, seed).await.unwrap().provenance.space,
            HASH_SPACE
        );
    }
    let query = embed(&owner, 1).await.unwrap();
    drop(owner);

    // A plugin claiming the hash plugin's space, with the hash plugin as the fallback.
    let rogue_first = TestConfig::new()
        .plugin("rogue", reporting(HASH_SPACE, 256))
        .plugin("hash", PluginSpec::hash())
        .image_embed("rogue")
        .hash("hash")
        .database(&db);
    let imbed = open(&rogue_first, &db).await;
    let e = embed(&imbed, 10).await.unwrap();
    assert_eq!(e.provenance.plugin.key, "hash", "the chain moved on");
    let attempt = &e.provenance.attempts[0];
    assert_eq!(attempt.kind, FailureKind::SpaceMismatch);
    assert_eq!(attempt.plugin.as_deref(), Some("rogue"));
    for needle in [
        "\"rogue\"",
        "\"hash\"",
        HASH_SPACE,
        "shares_space_with = \"hash\"",
    ] {
        assert!(
            attempt.message.contains(needle),
            "{needle}: {}",
            attempt.message
        );
    }
    // Text goes the same way (the test plugin embeds text in the space it reports too).
    let t = imbed.embed_text("a query").await.unwrap();
    assert_eq!(t.provenance.plugin.key, "hash");
    assert_eq!(t.provenance.attempts[0].kind, FailureKind::SpaceMismatch);
    drop(imbed);

    // The rogue plugin alone: refused, nothing returned.
    let rogue_alone = TestConfig::new()
        .plugin("rogue", reporting(HASH_SPACE, 256))
        .image_embed("rogue")
        .database(&db);
    let imbed = open(&rogue_alone, &db).await;
    for seed in 20..23 {
        match embed(&imbed, seed).await.unwrap_err() {
            Error::Exhausted { attempts } => {
                assert_eq!(attempts.len(), 1);
                assert_eq!(attempts[0].kind, FailureKind::SpaceMismatch);
            }
            other => panic!("expected exhausted, got {other}"),
        }
    }
    drop(imbed);

    // Nothing of the rogue plugin reached the store, so a search cannot find it.
    let store = Cache::open(&db).unwrap();
    let set = store.load_space(HASH_SPACE).unwrap();
    let expected: Vec<String> = [1, 2, 3, 10].iter().map(|&s| image_sha(s)).collect();
    let mut found = set.images.clone();
    found.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(found, want);
    for seed in 20..23 {
        assert!(store.entries_of(&image_sha(seed)).unwrap().is_empty());
        assert_eq!(
            store.image_vector(&image_sha(seed), HASH_SPACE).unwrap(),
            None
        );
    }
    let stats = store.stats().unwrap();
    let space = stats.spaces.iter().find(|s| s.space == HASH_SPACE).unwrap();
    assert_eq!(space.owner.as_ref().unwrap().key, "hash");
    assert!(
        space.writers.iter().all(|w| w.key == "hash"),
        "{:?}",
        space.writers
    );
    let hits =
        imbed::search::search(&store, HASH_SPACE, &query.vector, 10, Method::Exact, None).unwrap();
    assert_eq!(hits.hits.len(), 4);
    assert!(hits.hits.iter().all(|h| expected.contains(&h.image)));
    drop(store);

    // The same plugin in its own space works, and owns that space.
    let own = TestConfig::new()
        .plugin("rogue", reporting("test/rogue:8", 8))
        .image_embed("rogue")
        .database(&db);
    let imbed = open(&own, &db).await;
    let e = embed(&imbed, 20).await.unwrap();
    assert_eq!(
        (e.provenance.step, e.provenance.space.as_str()),
        (0, "test/rogue:8")
    );
    let owner = imbed.store().unwrap().space_owner("test/rogue:8").unwrap();
    assert_eq!(owner.unwrap().key, "rogue");
}

/// A copy of `component` with a custom section appended: the same plugin, another SHA-256.
fn rebuilt(component: &Path, into: &Path, tag: &str) -> PathBuf {
    let mut bytes = std::fs::read(component).unwrap();
    let name = b"imbed-test-build";
    let mut contents = vec![name.len() as u8];
    contents.extend_from_slice(name);
    contents.extend_from_slice(tag.as_bytes());
    assert!(contents.len() < 128, "one-byte LEB128 length");
    bytes.push(0); // custom section
    bytes.push(contents.len() as u8);
    bytes.extend_from_slice(&contents);
    std::fs::write(into, &bytes).unwrap();
    into.to_path_buf()
}

#[tokio::test]
async fn a_rebuilt_plugin_keeps_its_space_and_every_component_is_listed_and_prunable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("imbed.db");
    let original = imbed_tests::component("misbehave");
    let first = rebuilt(&original, &dir.path().join("emb-1.wasm"), "one");
    let second = rebuilt(&original, &dir.path().join("emb-2.wasm"), "two");
    let (sha1, sha2) = (
        sha_of(&std::fs::read(&first).unwrap()),
        sha_of(&std::fs::read(&second).unwrap()),
    );
    assert_ne!(sha1, sha2);
    let config = |file: &Path| {
        TestConfig::new()
            .plugin(
                "emb",
                PluginSpec::file(file)
                    .setting("mode", "ok")
                    .setting("space", "test/emb:8"),
            )
            .image_embed("emb")
            .database(&db)
    };
    // Indexed from files: `cache prune` keeps only what a path still refers to.
    for (file, seed) in [(&first, 1), (&second, 2)] {
        let folder = dir.path().join(format!("photos-{seed}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("p.png"), png(seed)).unwrap();
        let imbed = open(&config(file), &db).await;
        let (files, _) = imbed::index::find_images(&[folder]);
        let options = imbed::index::IndexOptions::new(1);
        let mut reports = imbed::index::index_files(&imbed, files, &options).unwrap();
        while let Some(r) = reports.next().await {
            assert!(
                !matches!(r.outcome, imbed::index::Outcome::Failed { .. }),
                "{:?}",
                r.outcome
            );
        }
        let e = imbed
            .store()
            .unwrap()
            .entry_embedding(&image_sha(seed), "test/emb:8")
            .unwrap()
            .expect("indexed into the plugin's space");
        assert_eq!(e.provenance.plugin.key, "emb");
    }

    let cfg = config(&second).write(dir.path());
    let stats = imbed_cli(dir.path())
        .arg("--config")
        .arg(&cfg)
        .args(["cache", "stats", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        stats.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let space = v["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["space"] == "test/emb:8")
        .unwrap();
    // The fields from before ownership are still there.
    assert_eq!(space["entries"], 2);
    assert_eq!(space["dims"], 8);
    assert_eq!(space["owner"]["key"], "emb");
    assert_eq!(space["owner"]["name"], "misbehave");
    let components: Vec<&str> = space["writers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["component"].as_str().unwrap())
        .collect();
    assert_eq!(components.len(), 2);
    assert!(components.contains(&sha1.as_str()) && components.contains(&sha2.as_str()));

    // Drop what the second build wrote: only its entry goes; the first build's stays.
    let prune = imbed_cli(dir.path())
        .arg("--config")
        .arg(&cfg)
        .args([
            "cache",
            "prune",
            "--space",
            "test/emb:8",
            "--component",
            &sha2[..12],
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        prune.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&prune.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&prune.stdout).unwrap();
    assert_eq!(report["entries"], 1);
    let store = Cache::open(&db).unwrap();
    assert_eq!(
        store.load_space("test/emb:8").unwrap().images,
        [image_sha(1)]
    );
    assert_eq!(store.space_owner("test/emb:8").unwrap().unwrap().key, "emb");

    // A prefix that names no writer is a usage error that says where to look.
    let bad = imbed_cli(dir.path())
        .arg("--config")
        .arg(&cfg)
        .args([
            "cache",
            "prune",
            "--space",
            "test/emb:8",
            "--component",
            "0123456789",
        ])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("imbed cache stats"));
}

#[tokio::test]
async fn two_keys_declared_as_sharing_both_write_a_space_and_an_undeclared_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("imbed.db");
    let space = "test/shared:8";
    let plugins = |chain_key: &str, declared: bool| {
        let mut b = reporting(space, 8);
        if declared {
            b = b.shares_space_with("a");
        }
        TestConfig::new()
            .plugin("a", reporting(space, 8))
            .plugin("b", b)
            .plugin("hash", PluginSpec::hash())
            .image_embed(chain_key)
            .hash("hash")
            .database(&db)
    };
    let key_of = |e: &Embedding| e.provenance.plugin.key.clone();

    // Undeclared: "a" owns the space, "b" is refused and the hash plugin answers.
    let imbed = open(&plugins("a", false), &db).await;
    assert_eq!(key_of(&embed(&imbed, 1).await.unwrap()), "a");
    drop(imbed);
    let imbed = open(&plugins("b", false), &db).await;
    let e = embed(&imbed, 2).await.unwrap();
    assert_eq!(key_of(&e), "hash");
    assert_eq!(e.provenance.attempts[0].kind, FailureKind::SpaceMismatch);
    assert!(e.provenance.attempts[0]
        .message
        .contains("shares_space_with = \"a\""));
    drop(imbed);

    // Declared ("b" names "a"): both write.
    let imbed = open(&plugins("b", true), &db).await;
    let e = embed(&imbed, 3).await.unwrap();
    assert_eq!(
        (key_of(&e), e.provenance.space.as_str()),
        ("b".to_string(), space)
    );
    drop(imbed);
    let imbed = open(&plugins("a", true), &db).await;
    assert_eq!(key_of(&embed(&imbed, 4).await.unwrap()), "a");
    let store = imbed.store().unwrap();
    assert_eq!(store.load_space(space).unwrap().len(), 3);
    let stats = store.stats().unwrap();
    let s = stats.spaces.iter().find(|s| s.space == space).unwrap();
    assert_eq!(s.owner.as_ref().unwrap().key, "a");
    let mut keys: Vec<&str> = s.writers.iter().map(|w| w.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys, ["a", "b"]);
}
