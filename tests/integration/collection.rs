//! The persistent cache, folder indexing, search and backfill: real SQLite files, real
//! components, the Ollama stand-in over 127.0.0.1, and the `imbed` binary for the kill test.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use imbed::index::{IndexOptions, Summary};
use imbed::search::{Method, SearchError};
use imbed::store::{Cache, PruneOptions, StoreError};
use imbed::{ImageRequest, ImageSource, Imbed, ImbedOptions};
use imbed_tests::ollama::{ModelSpec, OllamaStandIn, Route};
use imbed_tests::{images, PluginSpec, TestConfig};
use sha2::{Digest, Sha256};

use crate::cli::imbed as imbed_cli;

fn ollama_plugin(ollama: &OllamaStandIn, embed_model: &str) -> PluginSpec {
    PluginSpec::file(imbed_tests::component("ollama"))
        .grant_http(&ollama.base_url())
        .setting("base_url", &ollama.base_url())
        .setting("vision_model", "llava")
        .setting("embed_model", embed_model)
        .instances(4)
        .timeout_ms(20_000)
}

/// Ollama describes, `embedder` embeds the description, the hash plugin is the last resort.
fn ollama_chain(ollama: &OllamaStandIn, embed_model: &str, db: &Path) -> TestConfig {
    TestConfig::new()
        .plugin("ollama", ollama_plugin(ollama, embed_model))
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "ollama")
        .hash("hash")
        .database(db)
}

/// The hash plugin alone (its image space).
fn hash_chain(db: &Path) -> TestConfig {
    TestConfig::new()
        .plugin("hash", PluginSpec::hash())
        .hash("hash")
        .database(db)
}

async fn open(config: &TestConfig, db: &Path) -> Imbed {
    let store = Cache::open(db).expect("cache opens");
    Imbed::with_options(config.build(), ImbedOptions::default().store(store))
        .await
        .expect("engine starts")
}

async fn index(imbed: &Imbed, folder: &Path, options: IndexOptions) -> Summary {
    let (files, problems) = imbed::index::find_images(&[folder.to_path_buf()]);
    assert!(problems.is_empty(), "{problems:?}");
    let mut summary = Summary::default();
    let mut stream = imbed::index::index_files(imbed, files, &options).unwrap();
    while let Some(report) = stream.next().await {
        if let imbed::index::Outcome::Failed { message } = &report.outcome {
            panic!("{}: {message}", report.path.display());
        }
        summary.add(&report);
    }
    summary
}

/// A `w`×`h` PNG mostly of one colour, unique per `seed` (a few pixels differ).
fn coloured_png(rgb: [u8; 3], seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(48, 40, |x, y| {
        if (x * 7 + y * 13 + seed * 31).is_multiple_of(97) {
            image::Rgb([(seed * 53 % 256) as u8, (seed * 17 % 256) as u8, 9])
        } else {
            image::Rgb(rgb)
        }
    });
    images::png_of(&img)
}

/// A picture unique to `seed` (`images::png` has only four patterns).
fn unique_png(seed: u32) -> Vec<u8> {
    let mut img = images::picture(40, 30, seed);
    for k in 0..6 {
        let (x, y) = ((seed * 7 + k * 5) % 40, (seed * 3 + k * 11) % 30);
        img.put_pixel(x, y, image::Rgb([(seed % 251) as u8, (k * 40) as u8, 255]));
    }
    images::png_of(&img)
}

/// `<parent>/photos/p0.png` .. `p<n-1>.png`: `n` distinct images of one colour.
fn photo_folder(parent: &Path, n: u32, rgb: [u8; 3]) -> PathBuf {
    let photos = parent.join("photos");
    for i in 0..n {
        write(&photos, &format!("p{i}.png"), &coloured_png(rgb, i));
    }
    photos
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of every image the stand-in was asked to describe.
fn described(ollama: &OllamaStandIn) -> Vec<String> {
    let mut out = Vec::new();
    for r in ollama.requests_to(Route::Generate) {
        let images = r
            .body
            .as_ref()
            .and_then(|b| b.get("images"))
            .and_then(|i| i.as_array())
            .cloned()
            .unwrap_or_default();
        for i in images {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(i.as_str().unwrap_or_default())
                .unwrap();
            out.push(sha_hex(&bytes));
        }
    }
    out
}

#[tokio::test]
async fn a_folder_is_indexed_once_and_a_rerun_redoes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    for i in 0..10u32 {
        write(
            &photos,
            &format!("sub{}/p{i}.png", i % 3),
            &unique_png(i * 7 + 1),
        );
    }
    let dup = unique_png(1);
    write(&photos, "copy-of-p0.png", &dup);
    write(&photos, "notes.txt", b"not an image");
    write(&photos, ".hidden/secret.png", &unique_png(99));
    let db = dir.path().join("imbed.db");
    let cfg = hash_chain(&db);
    let imbed = open(&cfg, &db).await;

    // One at a time, so the duplicate's outcome does not depend on timing.
    let first = index(&imbed, &photos, IndexOptions::new(1)).await;
    assert_eq!(
        first.total, 11,
        "text files and hidden folders are not indexed"
    );
    assert_eq!(first.embedded + first.known_content, 11);
    assert_eq!(
        first.known_content, 1,
        "the copy is recognised by content: {first:?}"
    );

    let again = index(&imbed, &photos, IndexOptions::new(4)).await;
    assert_eq!(again.unchanged, 11, "{again:?}");
    assert_eq!(again.embedded, 0);

    // Changing a file's content re-embeds that file only.
    std::thread::sleep(Duration::from_millis(20));
    write(&photos, "sub0/p0.png", &unique_png(1000));
    let third = index(&imbed, &photos, IndexOptions::new(4)).await;
    assert_eq!((third.embedded, third.unchanged), (1, 10), "{third:?}");

    let stats = imbed.store().unwrap().stats().unwrap();
    assert_eq!(stats.files, 11);
    assert_eq!(stats.images, 11, "10 distinct pictures + the changed one");
    assert_eq!(stats.spaces.len(), 1);
    assert_eq!(stats.spaces[0].space, "imbed-hash/image@v1:256");
    assert_eq!(stats.spaces[0].entries, 11);
}

#[tokio::test]
async fn a_repeated_image_is_answered_by_the_cache_without_calling_the_backend() {
    let ollama = OllamaStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("imbed.db");
    let cfg = ollama_chain(&ollama, "nomic-embed-text", &db);
    let png = coloured_png([200, 30, 30], 1);

    let imbed = open(&cfg, &db).await;
    let first = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(png.clone())))
        .await
        .unwrap();
    assert!(!first.provenance.cached);
    assert!(!first.provenance.degraded);
    drop(imbed);

    // A new process, as the CLI would be: the answer comes from the file.
    let imbed = open(&cfg, &db).await;
    ollama.reset_log();
    let second = imbed
        .embed_image(ImageRequest::new(ImageSource::Bytes(png)))
        .await
        .unwrap();
    assert!(second.provenance.cached, "{:?}", second.provenance);
    assert_eq!(second.vector, first.vector);
    assert_eq!(second.provenance.space, first.provenance.space);
    assert_eq!(
        second.provenance.description.as_ref().map(|d| &d.text),
        first.provenance.description.as_ref().map(|d| &d.text)
    );
    assert_eq!(
        ollama.vision_calls(),
        0,
        "the vision model was not asked again"
    );
    // Only the plugin's one-off probe of the embedding model's dimensions reached Ollama.
    assert!(
        ollama.hits(Route::Embed) <= 1,
        "{}",
        ollama.hits(Route::Embed)
    );

    // A query text is cached too.
    let q1 = imbed.embed_text("a red square").await.unwrap();
    let q2 = imbed.embed_text("a red square").await.unwrap();
    assert!(!q1.provenance.cached && q2.provenance.cached);
    assert_eq!(q1.vector, q2.vector);
}

#[tokio::test]
async fn swapping_the_embedding_model_reuses_every_description() {
    let ollama = OllamaStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(dir.path(), 5, [30, 30, 200]);
    let db = dir.path().join("imbed.db");

    let nomic = open(&ollama_chain(&ollama, "nomic-embed-text", &db), &db).await;
    let s = index(&nomic, &photos, IndexOptions::new(3)).await;
    assert_eq!(s.embedded, 5, "{s:?}");
    assert_eq!(ollama.vision_calls(), 5);
    drop(nomic);

    let minilm = open(&ollama_chain(&ollama, "all-minilm", &db), &db).await;
    let s = index(&minilm, &photos, IndexOptions::new(3)).await;
    assert_eq!(
        s.embedded, 5,
        "answers in the old space are not this chain's: {s:?}"
    );
    assert_eq!(ollama.vision_calls(), 5, "no image was described again");
    let store = minilm.store().unwrap().clone();
    let spaces: Vec<(String, u64)> = store
        .stats()
        .unwrap()
        .spaces
        .into_iter()
        .map(|s| (s.space, s.entries))
        .collect();
    assert_eq!(spaces.len(), 2, "{spaces:?}");
    assert!(spaces.iter().all(|(_, n)| *n == 5), "{spaces:?}");

    // The new vectors are the new model's embeddings of the cached descriptions.
    let img = std::fs::read(photos.join("p3.png")).unwrap();
    let e = minilm
        .embed_image(ImageRequest::new(ImageSource::Bytes(img)))
        .await
        .unwrap();
    let text = &e.provenance.description.as_ref().unwrap().text;
    let expected = ollama.expected_embedding("all-minilm", text).unwrap();
    assert_eq!(e.vector.len(), 384);
    assert!(imbed_tests::cosine(&e.vector, &expected) > 0.9999);
}

#[tokio::test]
async fn pulling_new_weights_under_the_same_name_starts_a_new_space() {
    // `ollama pull nomic-embed-text` can move the tag to other weights; their vectors must not be
    // served from, or searched with, the old ones.
    let ollama = OllamaStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(dir.path(), 3, [200, 30, 30]);
    let db = dir.path().join("imbed.db");
    let cfg = ollama_chain(&ollama, "nomic-embed-text", &db);
    let before = open(&cfg, &db).await;
    assert_eq!(
        index(&before, &photos, IndexOptions::new(3)).await.embedded,
        3
    );
    let old_space = ollama.space("nomic-embed-text").unwrap();
    drop(before);

    ollama.add_model(ModelSpec::embedding("nomic-embed-text", 768).with_revision("v2"));
    let new_space = ollama.space("nomic-embed-text").unwrap();
    assert_ne!(old_space, new_space);
    ollama.reset_log();
    let after = open(&cfg, &db).await;
    let s = index(&after, &photos, IndexOptions::new(3)).await;
    assert_eq!(s.embedded, 3, "the old answers are another space: {s:?}");
    assert_eq!(ollama.vision_calls(), 0, "the descriptions are the same");
    let img = std::fs::read(photos.join("p1.png")).unwrap();
    let e = after
        .embed_image(ImageRequest::new(ImageSource::Bytes(img)))
        .await
        .unwrap();
    assert_eq!(e.provenance.space, new_space);
    let text = &e.provenance.description.as_ref().unwrap().text;
    let fresh = ollama
        .expected_embedding("nomic-embed-text", &format!("search_document: {text}"))
        .unwrap();
    assert!(imbed_tests::cosine(&e.vector, &fresh) > 0.9999);
    let spaces: Vec<String> = after
        .store()
        .unwrap()
        .stats()
        .unwrap()
        .spaces
        .into_iter()
        .map(|s| s.space)
        .collect();
    assert!(
        spaces.contains(&old_space) && spaces.contains(&new_space),
        "{spaces:?}"
    );
}

#[tokio::test]
async fn a_vision_model_pulled_while_imbed_runs_keys_its_descriptions_by_its_digest() {
    // The describer identity is learned once per endpoint. Asked while llava was not pulled, it
    // came without the model's digest and stayed so after `ollama pull llava`: descriptions made
    // then were keyed without the digest, and the next run (which sees it) described them again.
    let ollama = OllamaStandIn::start();
    assert!(ollama.remove_model("llava"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("imbed.db");
    let cfg = ollama_chain(&ollama, "nomic-embed-text", &db);
    let request = || ImageRequest::new(ImageSource::Bytes(coloured_png([10, 120, 200], 1)));
    let running = open(&cfg, &db).await;
    let fallback = running.embed_image(request()).await.unwrap();
    assert_eq!(fallback.provenance.step, 1, "{:?}", fallback.provenance);
    let attempt = &fallback.provenance.attempts[0];
    assert_eq!(
        attempt.kind,
        imbed::FailureKind::ModelNotFound,
        "{attempt:?}"
    );
    assert!(
        attempt.message.contains("run `ollama pull llava`"),
        "{}",
        attempt.message
    );

    ollama.add_model(ModelSpec::vision("llava"));
    let described = running.embed_image(request()).await.unwrap();
    assert_eq!(described.provenance.step, 0, "{:?}", described.provenance);
    assert_eq!(ollama.vision_calls(), 1);
    drop(running);

    let next = open(&cfg, &db).await;
    let again = next.embed_image(request()).await.unwrap();
    assert_eq!(
        ollama.vision_calls(),
        1,
        "the next run finds the description made after the pull"
    );
    assert!(again.provenance.cached, "{:?}", again.provenance);
    assert_eq!(again.vector, described.vector);
}

#[tokio::test]
async fn a_collection_embedded_bare_is_re_embedded_with_task_prefixes_without_vision_calls() {
    // Before contract 0.2.0 every description went to nomic-embed-text bare. The plugin asked
    // to keep texts bare (`task_prefixes = false`) embeds exactly as it did then.
    let ollama = OllamaStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(dir.path(), 3, [30, 200, 30]);
    let db = dir.path().join("imbed.db");
    let bare_cfg = TestConfig::new()
        .plugin(
            "ollama",
            ollama_plugin(&ollama, "nomic-embed-text").setting("task_prefixes", "false"),
        )
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "ollama")
        .hash("hash")
        .database(&db);
    let before = open(&bare_cfg, &db).await;
    assert_eq!(
        index(&before, &photos, IndexOptions::new(3)).await.embedded,
        3
    );
    let old_space = ollama.bare_space("nomic-embed-text").unwrap();
    let described = ollama.vision_calls();
    assert_eq!(described, 3);
    drop(before);

    // Now with the model card's prefixes: the descriptions are embedded again as documents,
    // from the cache, with no vision call.
    ollama.reset_log();
    let after = open(&ollama_chain(&ollama, "nomic-embed-text", &db), &db).await;
    let s = index(&after, &photos, IndexOptions::new(3)).await;
    assert_eq!(s.embedded, 3, "{s:?}");
    assert_eq!(
        ollama.vision_calls(),
        0,
        "the descriptions come from the cache"
    );
    let documents: Vec<String> = ollama
        .embedded_texts()
        .into_iter()
        .filter(|t| t != "dimension probe")
        .collect();
    assert_eq!(documents.len(), 3, "{documents:?}");
    assert!(
        documents.iter().all(|t| t.starts_with("search_document: ")),
        "{documents:?}"
    );

    // A query searches only the prefixed space: the bare vectors are never compared with it.
    let new_space = ollama.space("nomic-embed-text").unwrap();
    assert_ne!(old_space, new_space);
    let store = after.store().unwrap().clone();
    let q = after.embed_text("green").await.unwrap();
    assert_eq!(q.provenance.space, new_space);
    let r = imbed::search::search(
        &store,
        &q.provenance.space,
        &q.vector,
        10,
        Method::Exact,
        None,
    )
    .unwrap();
    assert_eq!((r.space.as_str(), r.searched), (new_space.as_str(), 3));
    let spaces: Vec<String> = store
        .stats()
        .unwrap()
        .spaces
        .into_iter()
        .map(|s| s.space)
        .collect();
    assert!(
        spaces.contains(&old_space) && spaces.contains(&new_space),
        "{spaces:?}"
    );
}

#[tokio::test]
async fn text_search_ranks_by_description_and_never_mixes_spaces() {
    let ollama = OllamaStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let colours = [
        ("red", [210, 25, 25]),
        ("blue", [25, 25, 210]),
        ("green", [25, 190, 25]),
    ];
    for (name, rgb) in colours {
        for i in 0..3u32 {
            write(&photos, &format!("{name}-{i}.png"), &coloured_png(rgb, i));
        }
    }
    let db = dir.path().join("imbed.db");
    // Descriptions from the stand-in, embedded by the hash plugin's text side: text queries and
    // images share the hash text space.
    let cfg = TestConfig::new()
        .plugin("ollama", ollama_plugin(&ollama, "nomic-embed-text"))
        .plugin("hash", PluginSpec::hash())
        .describe_then_embed("ollama", "hash")
        .database(&db);
    let imbed = open(&cfg, &db).await;
    let s = index(&imbed, &photos, IndexOptions::new(4)).await;
    assert_eq!(s.embedded, 9);
    let store = imbed.store().unwrap().clone();

    for (colour, _) in colours {
        let q = imbed.embed_text(colour).await.unwrap();
        assert_eq!(q.provenance.space, "imbed-hash/text@v1:256");
        let r = imbed::search::search(
            &store,
            &q.provenance.space,
            &q.vector,
            3,
            Method::Exact,
            None,
        )
        .unwrap();
        assert_eq!(r.space, q.provenance.space);
        assert_eq!(r.searched, 9);
        let names: Vec<String> = r
            .hits
            .iter()
            .map(|h| {
                h.paths[0]
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with(colour)),
            "query {colour:?} found {names:?}"
        );
        assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
    }

    // Images indexed by another chain land in another space and are never compared.
    let others = dir.path().join("others");
    for i in 0..4u32 {
        write(&others, &format!("o{i}.png"), &unique_png(i + 50));
    }
    let hash_only = open(&hash_chain(&db), &db).await;
    index(&hash_only, &others, IndexOptions::new(2)).await;
    let q = imbed.embed_text("red").await.unwrap();
    let r = imbed::search::search(
        &store,
        &q.provenance.space,
        &q.vector,
        20,
        Method::Exact,
        None,
    )
    .unwrap();
    assert_eq!(r.searched, 9, "only the query's space is searched");
    assert!(r.hits.iter().all(|h| h.paths[0].starts_with(&photos)));

    // A space with nothing in it says what the cache holds instead.
    let err = imbed::search::search(
        &store,
        "ollama/nomic-embed-text",
        &[0.1; 768],
        3,
        Method::Exact,
        None,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SearchError::EmptySpace { .. }), "{msg}");
    assert!(
        msg.contains("imbed-hash/text@v1:256") && msg.contains("imbed-hash/image@v1:256"),
        "{msg}"
    );
}

#[tokio::test]
async fn similar_finds_the_near_duplicate_and_leaves_out_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let pic = images::picture(160, 120, 1);
    let original = write(&photos, "original.png", &images::png_of(&pic));
    write(&photos, "recompressed.jpg", &images::jpeg_of(&pic, 70));
    for i in 2..8u32 {
        write(&photos, &format!("other{i}.png"), &unique_png(i + 200));
    }
    let db = dir.path().join("imbed.db");
    let imbed = open(&hash_chain(&db), &db).await;
    index(&imbed, &photos, IndexOptions::new(2)).await;

    let image = imbed
        .load_image(&ImageSource::Path(original))
        .await
        .unwrap();
    let e = imbed.embed_valid_image(&image, None).await.unwrap();
    assert!(e.provenance.cached);
    let r = imbed::search::search(
        imbed.store().unwrap(),
        &e.provenance.space,
        &e.vector,
        3,
        Method::Exact,
        Some(&image.sha256),
    )
    .unwrap();
    assert_eq!(r.hits.len(), 3);
    assert!(r.hits.iter().all(|h| h.image != image.sha256));
    assert!(
        r.hits[0].paths[0].ends_with("recompressed.jpg"),
        "{:?}",
        r.hits
    );
}

#[tokio::test]
async fn upgrade_re_embeds_exactly_the_degraded_images_once_ollama_is_back() {
    let ollama = OllamaStandIn::start();
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(dir.path(), 4, [200, 200, 30]);
    let db = dir.path().join("imbed.db");
    let cfg = ollama_chain(&ollama, "nomic-embed-text", &db);

    ollama.set_failure_rate(1.0);
    let down = open(&cfg, &db).await;
    let s = index(&down, &photos, IndexOptions::new(2)).await;
    assert_eq!((s.embedded, s.degraded), (4, 4), "{s:?}");
    drop(down);
    let degraded = Cache::open(&db).unwrap().degraded_files(None).unwrap();
    assert_eq!(degraded.len(), 4);

    ollama.set_failure_rate(0.0);
    ollama.reset_log();
    let up = open(&cfg, &db).await;
    let s = index(&up, &photos, IndexOptions::new(2)).await;
    assert_eq!(
        s.unchanged, 4,
        "a plain re-run keeps degraded answers: {s:?}"
    );
    assert_eq!(ollama.vision_calls(), 0);

    let s = index(&up, &photos, IndexOptions::new(2).upgrade(true)).await;
    assert_eq!(s.upgraded, 4, "{s:?}");
    assert_eq!(
        ollama.vision_calls(),
        4,
        "each degraded image described once"
    );
    assert!(up.store().unwrap().degraded_files(None).unwrap().is_empty());

    let s = index(&up, &photos, IndexOptions::new(2).upgrade(true)).await;
    assert_eq!(s.unchanged, 4, "nothing left to upgrade: {s:?}");
    assert_eq!(ollama.vision_calls(), 4);
}

#[tokio::test]
async fn killing_an_index_run_loses_nothing_finished_and_a_rerun_completes_it() {
    let ollama = OllamaStandIn::start();
    ollama.set_latency(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let mut shas = Vec::new();
    for i in 0..24u32 {
        let png = coloured_png([40, 160, 200], i);
        shas.push(sha_hex(&png));
        write(&photos, &format!("p{i:02}.png"), &png);
    }
    let db = dir.path().join("imbed.db");
    let config = ollama_chain(&ollama, "nomic-embed-text", &db).write(dir.path());

    let mut child = imbed_cli(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["index", "--jobs", "3"])
        .arg(&photos)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("first-run.log")).unwrap())
        .spawn()
        .unwrap();
    // Kill it, without warning, once a few images are done and others are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the index run made no progress");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before it could be killed: {}",
                std::fs::read_to_string(dir.path().join("first-run.log")).unwrap_or_default()
            );
        }
        let done = Cache::open(&db)
            .ok()
            .and_then(|s| s.stats().ok())
            .map(|s| s.spaces.iter().map(|x| x.entries).sum::<u64>())
            .unwrap_or(0);
        if done >= 6 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let store = Cache::open(&db).unwrap();
    assert!(store.integrity_problems().unwrap().is_empty());
    let finished: HashSet<String> = shas
        .iter()
        .filter(|sha| !store.entries_of(sha).unwrap().is_empty())
        .cloned()
        .collect();
    assert!(
        finished.len() >= 6 && finished.len() < 24,
        "{}",
        finished.len()
    );
    drop(store);

    ollama.reset_log();
    let out = imbed_cli(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["index", "--json", "--jobs", "3"])
        .arg(&photos)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    let n = |k: &str| last["summary"][k].as_u64().unwrap();
    assert_eq!(n("total"), 24);
    assert_eq!(n("failed"), 0);
    assert_eq!(
        n("unchanged") + n("known_content"),
        finished.len() as u64,
        "every image finished before the kill is skipped: {last}"
    );
    assert_eq!(n("embedded"), 24 - finished.len() as u64);
    let redone: Vec<String> = described(&ollama)
        .into_iter()
        .filter(|sha| finished.contains(sha))
        .collect();
    assert!(
        redone.is_empty(),
        "described again after the kill: {redone:?}"
    );

    let store = Cache::open(&db).unwrap();
    assert!(store.integrity_problems().unwrap().is_empty());
    let all: u64 = store
        .stats()
        .unwrap()
        .spaces
        .iter()
        .map(|s| s.entries)
        .sum();
    assert_eq!(all, 24);
}

#[tokio::test]
async fn prune_forgets_vanished_files_and_stats_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let mut paths = Vec::new();
    for i in 0..6u32 {
        paths.push(write(&photos, &format!("p{i}.png"), &unique_png(i + 3)));
    }
    let db = dir.path().join("imbed.db");
    let imbed = open(&hash_chain(&db), &db).await;
    index(&imbed, &photos, IndexOptions::new(2)).await;
    let store = imbed.store().unwrap().clone();
    // A query vector in the same database (another table).
    imbed.embed_text("a query").await.unwrap();
    let before = store.stats().unwrap();
    assert_eq!(
        (before.files, before.images, before.text_vectors),
        (6, 6, 1)
    );

    std::fs::remove_file(&paths[0]).unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    let report = store
        .prune(
            &PruneOptions::default()
                .missing_files()
                .text_vectors()
                .vacuum(),
        )
        .unwrap();
    assert_eq!(
        (
            report.files,
            report.images,
            report.entries,
            report.text_vectors
        ),
        (2, 2, 2, 1)
    );
    let after = store.stats().unwrap();
    assert_eq!((after.files, after.images, after.text_vectors), (4, 4, 0));
    assert_eq!(after.spaces[0].entries, 4);
    assert!(after.bytes_on_disk > 0);

    // The CLI reports the same numbers.
    let config = hash_chain(&db).write(dir.path());
    let out = imbed_cli(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["cache", "stats", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"], 4);
    assert_eq!(v["schema_version"], imbed::store::SCHEMA_VERSION);
    assert_eq!(v["spaces"][0]["entries"], 4);
}

#[tokio::test]
async fn old_schemas_are_migrated_and_newer_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    {
        let v1 = Cache::create_with_schema(&db, 1).unwrap();
        assert_eq!(v1.schema_version().unwrap(), 1);
        drop(v1);
        // An entry as an imbed of schema 1 wrote it (this imbed writes only into a cache it
        // has migrated).
        let imbed = Imbed::new(hash_chain(&db).build()).await.unwrap();
        let e = imbed
            .embed_image(ImageRequest::new(ImageSource::Bytes(images::png(
                40, 30, 5,
            ))))
            .await
            .unwrap();
        let blob: Vec<u8> = e.vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO entries (image, space, dims, vector, provenance, degraded, created_at)
             VALUES ('x', ?1, ?2, ?3, ?4, 0, 0)",
            rusqlite::params![
                e.provenance.space.as_str(),
                e.vector.len() as i64,
                blob,
                serde_json::to_string(&e.provenance).unwrap()
            ],
        )
        .unwrap();
    }
    let store = Cache::open(&db).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        imbed::store::SCHEMA_VERSION
    );
    let set = store.load_space("imbed-hash/image@v1:256").unwrap();
    assert_eq!(
        set.len(),
        1,
        "data written under schema 1 survives the migration"
    );
    // Its entries name one plugin: the space is pinned to it (schema 4).
    let owner = store.space_owner(&set.space).unwrap().unwrap();
    assert_eq!(owner.key, "hash");
    // The table schema 2 added works.
    let r = imbed::search::search(
        &store,
        &set.space,
        set.vector(0),
        1,
        Method::Approximate,
        None,
    )
    .unwrap();
    assert!((r.hits[0].score - 1.0).abs() < 1e-4);
    drop(store);

    let newer = dir.path().join("newer.db");
    Cache::create_with_schema(&newer, imbed::store::SCHEMA_VERSION + 5).unwrap();
    let err = Cache::open(&newer).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }));
    assert!(err.to_string().contains("upgrade imbed"), "{err}");

    let not_a_db = dir.path().join("junk.db");
    std::fs::write(&not_a_db, vec![7u8; 4096]).unwrap();
    let err = Cache::open(&not_a_db).unwrap_err();
    assert!(err.to_string().contains("junk.db"), "{err}");
}

/// Random unit vectors, deterministic.
fn random_unit_vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..dims).map(|_| next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn fake_embedding(vector: Vec<f32>, space: &str) -> imbed::Embedding {
    let e = serde_json::json!({
        "vector": vector,
        "provenance": {
            "step": 0, "step_kind": "image-embed",
            "plugin": {"key": "t", "name": "t", "version": "0"},
            "model": "random", "space": space, "dimensions": 0,
            "degraded": false, "attempts": []
        }
    });
    serde_json::from_value(e).unwrap()
}

/// The writer of the fake entries, holding a claim on `space`.
fn test_writer(store: &Cache, space: &str) -> imbed::store::Writer {
    let writer = imbed::store::Writer {
        key: "t".into(),
        name: "t".into(),
        component: "0".repeat(64),
    };
    let claim = imbed::store::SpaceClaim {
        writer: writer.clone(),
        shares_with: Vec::new(),
    };
    let granted = store.claim_space(space, &claim).unwrap();
    assert!(matches!(granted, imbed::store::Ownership::Granted { .. }));
    writer
}

fn meta(i: usize) -> imbed::store::ImageMeta {
    imbed::store::ImageMeta {
        sha256: format!("{i:064x}"),
        mime: "image/png".into(),
        width: 1,
        height: 1,
        bytes: 1,
    }
}

#[test]
fn approximate_search_agrees_with_exact_search_and_stays_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let store = Cache::open(dir.path().join("ann.db")).unwrap();
    let space = "test/random:48";
    let vectors = random_unit_vectors(3000, 48, 7);
    let writer = test_writer(&store, space);
    for (i, v) in vectors.iter().enumerate() {
        store
            .put_entry(&meta(i), &fake_embedding(v.clone(), space), &writer)
            .unwrap();
    }
    let queries = random_unit_vectors(40, 48, 99);
    let recall = |store: &Cache| {
        let mut found = 0;
        for q in &queries {
            let exact = imbed::search::search(store, space, q, 10, Method::Exact, None).unwrap();
            let approx =
                imbed::search::search(store, space, q, 10, Method::Approximate, None).unwrap();
            assert_eq!(approx.method, Method::Approximate);
            let want: HashSet<_> = exact.hits.iter().map(|h| h.image.clone()).collect();
            found += approx
                .hits
                .iter()
                .filter(|h| want.contains(&h.image))
                .count();
        }
        found as f64 / (queries.len() * 10) as f64
    };
    let r = recall(&store);
    assert!(r >= 0.9, "recall@10 {r}");

    // New entries are added to the saved index; a replaced one forces a rebuild. Either way
    // the newest vector is found.
    let extra = random_unit_vectors(1, 48, 12345).remove(0);
    store
        .put_entry(&meta(5000), &fake_embedding(extra.clone(), space), &writer)
        .unwrap();
    let hit = imbed::search::search(&store, space, &extra, 1, Method::Approximate, None).unwrap();
    assert_eq!(hit.hits[0].image, meta(5000).sha256);
    store
        .put_entry(&meta(3), &fake_embedding(extra.clone(), space), &writer)
        .unwrap();
    let hits = imbed::search::search(&store, space, &extra, 2, Method::Approximate, None).unwrap();
    let got: HashSet<_> = hits.hits.iter().map(|h| h.image.clone()).collect();
    assert_eq!(got, HashSet::from([meta(5000).sha256, meta(3).sha256]));
    assert!(recall(&store) >= 0.9);
}

#[test]
fn after_indexing_large_spaces_have_their_approximate_index_ready_and_small_ones_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Cache::open(dir.path().join("prep.db")).unwrap();
    let (large, small) = ("test/large:8", "test/small:8");
    let n = imbed::search::AUTO_APPROXIMATE_FROM;
    for (space, count) in [(large, n), (small, 100)] {
        let writer = test_writer(&store, space);
        let items: Vec<_> = random_unit_vectors(count, 8, 5)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (meta(i), fake_embedding(v, space)))
            .collect();
        store.put_entries(&items, &writer).unwrap();
    }
    assert_eq!(store.ann_record(large).unwrap(), None);
    imbed::search::prepare(&store).unwrap();
    let (file, entries, _) = store
        .ann_record(large)
        .unwrap()
        .expect("an index for the large space");
    assert_eq!(entries, n as u64);
    assert!(store.ann_dir().join(file).is_file());
    assert_eq!(
        store.ann_record(small).unwrap(),
        None,
        "small spaces are scanned"
    );
    // A later run that adds to the space brings its saved index up to date.
    let writer = test_writer(&store, large);
    let extra = random_unit_vectors(1, 8, 6).remove(0);
    store
        .put_entry(&meta(n + 1), &fake_embedding(extra, large), &writer)
        .unwrap();
    imbed::search::prepare(&store).unwrap();
    assert_eq!(store.ann_record(large).unwrap().unwrap().1, n as u64 + 1);
    // Another process (a fresh cache on the file) searches through the saved index.
    let other = Cache::open(dir.path().join("prep.db")).unwrap();
    let q = random_unit_vectors(1, 8, 5).remove(0);
    let found = imbed::search::search(&other, large, &q, 1, Method::Auto, None).unwrap();
    assert_eq!(found.method, Method::Approximate);
    assert_eq!(found.hits[0].image, meta(0).sha256);
}

#[test]
fn a_long_lived_cache_sees_what_another_process_adds_replaces_and_removes() {
    // `imbed serve` keeps a space in memory between searches; `imbed index` (another process,
    // another connection) writes the same file meanwhile. Every search must see the file as
    // it is, exact or approximate.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let serving = Cache::open(&path).unwrap();
    let indexing = Cache::open(&path).unwrap();
    let space = "test/random:32";
    let vectors = random_unit_vectors(600, 32, 3);
    let writer = test_writer(&indexing, space);
    for (i, v) in vectors.iter().enumerate() {
        indexing
            .put_entry(&meta(i), &fake_embedding(v.clone(), space), &writer)
            .unwrap();
    }
    let top = |q: &[f32], method: Method| {
        let found = imbed::search::search(&serving, space, q, 1, method, None).unwrap();
        (found.searched, found.hits[0].image.clone())
    };
    let methods = [Method::Exact, Method::Approximate];
    for method in methods {
        assert_eq!(top(&vectors[7], method), (600, meta(7).sha256));
    }

    let extra = random_unit_vectors(1, 32, 77).remove(0);
    indexing
        .put_entry(&meta(900), &fake_embedding(extra.clone(), space), &writer)
        .unwrap();
    for method in methods {
        assert_eq!(top(&extra, method), (601, meta(900).sha256), "{method:?}");
    }

    // Image 7's answer replaced by another vector: it no longer answers its old one.
    indexing
        .put_entry(
            &meta(7),
            &fake_embedding(vectors[8].clone(), space),
            &writer,
        )
        .unwrap();
    for method in methods {
        let found = imbed::search::search(&serving, space, &vectors[7], 3, method, None).unwrap();
        assert!(
            found.hits.iter().all(|h| h.score < 0.999),
            "{method:?}: the old vector is still found: {:?}",
            found.hits
        );
    }

    // The whole space dropped by `imbed cache prune --space`: nothing left to search.
    let mut options = PruneOptions::default();
    options.spaces = vec![space.to_string()];
    indexing.prune(&options).unwrap();
    for method in methods {
        let err = imbed::search::search(&serving, space, &extra, 1, method, None).unwrap_err();
        assert!(matches!(err, SearchError::EmptySpace { .. }), "{err}");
    }
}

#[test]
fn search_output_on_the_command_line_names_the_space() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let pic = images::picture(96, 72, 2);
    let query = write(&photos, "a.png", &images::png_of(&pic));
    write(&photos, "a-small.jpg", &images::jpeg_of(&pic, 80));
    write(&photos, "b.png", &images::png(96, 72, 3));
    let db = dir.path().join("imbed.db");
    let config = hash_chain(&db).write(dir.path());
    let run = |args: &[&str]| {
        imbed_cli(dir.path())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["index", photos.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 embedded"));
    let out = run(&["similar", query.to_str().unwrap(), "-k", "2"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("space imbed-hash/image@v1:256 (exact search over 3 images)"),
        "{text}"
    );
    assert!(lines[1].ends_with("a-small.jpg"), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    // Text lands in the hash text space, where nothing is indexed: a clear refusal.
    let out = run(&["search", "anything"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("never compared") && err.contains("imbed-hash/image@v1:256"),
        "{err}"
    );
}

#[tokio::test]
async fn a_plugin_without_network_grants_gets_at_most_one_instance_per_core() {
    let ollama = OllamaStandIn::start();
    let cores = std::thread::available_parallelism().unwrap().get();
    let cfg = TestConfig::new()
        .plugin("hash", PluginSpec::hash().instances(cores + 7))
        .plugin(
            "ollama",
            ollama_plugin(&ollama, "nomic-embed-text").instances(cores + 7),
        )
        .describe_then_embed("ollama", "ollama")
        .hash("hash");
    let imbed = Imbed::new(cfg.build()).await.unwrap();
    let instances = |key: &str| {
        imbed
            .plugins()
            .into_iter()
            .find(|p| p.key == key)
            .map(|p| p.instances)
            .unwrap()
    };
    assert_eq!(instances("hash"), cores, "CPU-bound: capped at the cores");
    assert_eq!(
        instances("ollama"),
        cores + 7,
        "waits on the network: as configured"
    );
}

/// Search on the real all-MiniLM-L6-v2 weights: images indexed with their captions (the
/// `description` step), queries worded differently from the captions.
#[tokio::test]
async fn search_on_the_real_minilm_weights_finds_the_right_captions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("imbed.db");
    let minilm = PluginSpec::file(imbed_tests::component("minilm"))
        .grant_model_dir(imbed_tests::models::minilm_dir())
        .memory_mb(1024)
        .timeout_ms(120_000);
    let cfg = TestConfig::new()
        .plugin("minilm", minilm)
        .plugin("hash", PluginSpec::hash())
        .description("minilm")
        .hash("hash")
        .database(&db);
    let imbed = open(&cfg, &db).await;
    let captions = [
        "a cat sleeping on the keyboard of a laptop",
        "a bowl of ramen noodles with a boiled egg",
        "surfers riding a big wave at the beach",
        "a red double-decker bus on a city street",
        "snow-covered mountains under a clear sky",
        "a golden retriever catching a frisbee in the park",
    ];
    for (i, caption) in captions.iter().enumerate() {
        let e = imbed
            .embed_image(
                ImageRequest::new(ImageSource::Bytes(unique_png(i as u32 + 300)))
                    .with_description(*caption),
            )
            .await
            .unwrap();
        assert!(e
            .provenance
            .space
            .starts_with("sentence-transformers/all-MiniLM-L6-v2@"));
    }
    let store = imbed.store().unwrap().clone();
    for (query, want) in [
        ("kitten napping on a computer", 0),
        ("japanese soup for dinner", 1),
        ("ocean surfing", 2),
        ("public transport in london", 3),
        ("alpine winter landscape", 4),
        ("dog playing fetch", 5),
    ] {
        let q = imbed.embed_text(query).await.unwrap();
        let r = imbed::search::search(
            &store,
            &q.provenance.space,
            &q.vector,
            6,
            Method::Exact,
            None,
        )
        .unwrap();
        assert_eq!(r.searched, 6);
        let best = r.hits[0].image.clone();
        let wanted = imbed
            .load_image(&ImageSource::Bytes(unique_png(want as u32 + 300)))
            .await
            .unwrap()
            .sha256;
        assert_eq!(
            best, wanted,
            "query {query:?}: best score {}",
            r.hits[0].score
        );
    }
}

#[test]
fn cache_migrate_copies_an_sqlite_cache_into_postgres_with_the_same_search_results() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let pic = images::picture(96, 72, 2);
    let query = write(&photos, "a.png", &images::png_of(&pic));
    write(&photos, "a-small.jpg", &images::jpeg_of(&pic, 80));
    write(&photos, "b.png", &images::png(96, 72, 3));
    write(&photos, "c.png", &images::png(96, 72, 4));
    let sqlite = dir.path().join("imbed.db");
    let pg = imbed_tests::postgres::database();
    let sqlite_config = hash_chain(&sqlite).write(dir.path());
    let pg_dir = dir.path().join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let pg_config = hash_chain(Path::new(pg.url())).write(&pg_dir);
    let run = |config: &Path, args: &[&str]| {
        let out = imbed_cli(dir.path())
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&sqlite_config, &["index", photos.to_str().unwrap()]);
    let before = run(
        &sqlite_config,
        &["similar", query.to_str().unwrap(), "-k", "3"],
    );

    let copied = run(
        &sqlite_config,
        &["cache", "migrate", "--to", pg.url(), "--json"],
    );
    let copied: serde_json::Value = serde_json::from_str(&copied).unwrap();
    assert_eq!(copied["copied"]["entries"], 4, "{copied}");
    assert_eq!(copied["copied"]["files"], 4, "{copied}");

    let after = run(&pg_config, &["similar", query.to_str().unwrap(), "-k", "3"]);
    assert_eq!(before, after);
    // Nothing was embedded again: the copied entries are the hash plugin's, row for row.
    let sqlite_cache = Cache::open(&sqlite).unwrap();
    let pg_cache = Cache::open_postgres(pg.url(), Default::default()).unwrap();
    let space = &sqlite_cache.spaces().unwrap()[0].space;
    // Owners and writers too: the space stays pinned to the plugin that wrote it.
    assert_eq!(sqlite_cache.spaces().unwrap(), pg_cache.spaces().unwrap());
    let owner = pg_cache
        .space_owner(space)
        .unwrap()
        .expect("the space is pinned");
    assert_eq!(owner, sqlite_cache.space_owner(space).unwrap().unwrap());
    assert_eq!(pg_cache.spaces().unwrap()[0].writers.len(), 1);
    let (a, b) = (
        sqlite_cache.load_space(space).unwrap(),
        pg_cache.load_space(space).unwrap(),
    );
    assert_eq!((a.images, a.data), (b.images, b.data));
    assert_eq!(sqlite_cache.roots().unwrap(), pg_cache.roots().unwrap());
    // Copying again adds nothing.
    run(&sqlite_config, &["cache", "migrate", "--to", pg.url()]);
    assert_eq!(pg_cache.stats().unwrap().spaces[0].entries, 4);
}
