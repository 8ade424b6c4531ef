//! The cache's behaviour, the same on both backends: each test runs on an SQLite file and on a
//! PostgreSQL database of the test server (tests/src/postgres.rs). Then what only PostgreSQL
//! has: its errors, pgvector search and its index, and `cache migrate`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use imbed::search::Method;
use imbed::store::{
    Cache, CachedDescription, ImageMeta, Ownership, PgOptions, PruneOptions, SpaceClaim,
    SpaceOwner, StoreError, Writer, WriterFilter,
};
use imbed_tests::postgres::{self, TestDb};

/// A cache of one backend, and what keeps it alive.
struct Backend {
    name: &'static str,
    cache: Cache,
    _dir: tempfile::TempDir,
    db: Option<TestDb>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache.db")).unwrap();
    Backend {
        name: "sqlite",
        cache,
        _dir: dir,
        db: None,
    }
}

fn pg_with(options: PgOptions) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let db = postgres::database();
    let mut options = options;
    options.local_dir = dir.path().join("local");
    let cache = Cache::open_postgres(db.url(), options).unwrap();
    Backend {
        name: "postgres",
        cache,
        _dir: dir,
        db: Some(db),
    }
}

fn pg() -> Backend {
    pg_with(PgOptions::default())
}

/// Run `test` on both backends.
fn on_both(test: impl Fn(&Backend)) {
    for backend in [sqlite(), pg()] {
        test(&backend);
    }
}

fn embedding(vector: Vec<f32>, space: &str, degraded: bool) -> imbed::Embedding {
    let e = serde_json::json!({
        "vector": vector,
        "provenance": {
            "step": 0, "step_kind": "image-embed",
            "plugin": {"key": "t", "name": "t", "version": "0"},
            "model": "m", "space": space, "dimensions": 0,
            "degraded": degraded, "attempts": []
        }
    });
    serde_json::from_value(e).unwrap()
}

/// The test plugin `t` (the plugin `embedding` names), holding a claim on `space` of `c`.
#[track_caller]
fn t_in(c: &Cache, space: &str) -> Writer {
    let writer = Writer {
        key: "t".into(),
        name: "t".into(),
        component: "0".repeat(64),
    };
    let claim = SpaceClaim {
        writer: writer.clone(),
        shares_with: Vec::new(),
    };
    let granted = c.claim_space(space, &claim).unwrap();
    assert!(matches!(granted, Ownership::Granted { .. }), "{granted:?}");
    writer
}

fn meta(i: usize) -> ImageMeta {
    ImageMeta {
        sha256: format!("{i:064x}"),
        mime: "image/png".into(),
        width: 3,
        height: 2,
        bytes: 100 + i as u64,
    }
}

/// Deterministic vectors around `clusters` centres, unit length.
fn clustered(n: usize, dims: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.wrapping_mul(6364136223846793005) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let unit = |v: Vec<f32>| {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| unit((0..dims).map(|_| next()).collect()))
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % clusters];
            unit(c.iter().map(|x| x + 0.08 * next()).collect())
        })
        .collect()
}

#[test]
fn descriptions_and_vectors_round_trip_keyed_by_content() {
    on_both(|b| {
        let c = &b.cache;
        let d = CachedDescription {
            text: "a red door".into(),
            plugin: "ollama".into(),
            model: "llava".into(),
            structured: Some("{\"tags\":[\"door\"]}".into()),
        };
        assert_eq!(
            c.description("img", "desc-a", "").unwrap(),
            None,
            "{}",
            b.name
        );
        c.put_description("img", "desc-a", "", &d).unwrap();
        assert_eq!(c.description("img", "desc-a", "").unwrap(), Some(d.clone()));
        assert_eq!(c.description("img", "desc-b", "").unwrap(), None);
        assert_eq!(
            c.description("img", "desc-a", "other prompt").unwrap(),
            None
        );
        let again = CachedDescription {
            text: "a blue door".into(),
            ..d
        };
        c.put_description("img", "desc-a", "", &again).unwrap();
        assert_eq!(c.description("img", "desc-a", "").unwrap(), Some(again));

        let v = vec![0.25f32, -0.5, 1.0e-7, 3.0];
        c.put_text_vector("t1", "s", "m", &v, &t_in(c, "s"))
            .unwrap();
        assert_eq!(
            c.text_vector("t1", "s").unwrap(),
            Some(v.clone()),
            "{}",
            b.name
        );
        assert_eq!(c.text_vector("t1", "other").unwrap(), None);
        c.put_image_vector("i1", "s", "m", &v[..2], &t_in(c, "s"))
            .unwrap();
        assert_eq!(c.image_vector("i1", "s").unwrap(), Some(v[..2].to_vec()));
        assert_eq!(c.image_vector("t1", "s").unwrap(), None);
    });
}

#[test]
fn entries_keep_their_id_for_the_same_answer_and_get_a_new_one_when_replaced() {
    on_both(|b| {
        let c = &b.cache;
        c.put_entry(
            &meta(1),
            &embedding(vec![1.0, 0.0], "s", true),
            &t_in(c, "s"),
        )
        .unwrap();
        let first = c.entries_of(&meta(1).sha256).unwrap();
        assert_eq!(first.len(), 1, "{}", b.name);
        assert!(first[0].degraded);
        c.put_entry(
            &meta(1),
            &embedding(vec![1.0, 0.0], "s", true),
            &t_in(c, "s"),
        )
        .unwrap();
        assert_eq!(c.entries_of(&meta(1).sha256).unwrap()[0].id, first[0].id);
        c.put_entry(
            &meta(1),
            &embedding(vec![0.0, 1.0], "s", false),
            &t_in(c, "s"),
        )
        .unwrap();
        let replaced = c.entries_of(&meta(1).sha256).unwrap();
        assert_eq!(replaced.len(), 1);
        assert!(replaced[0].id > first[0].id, "{}", b.name);
        assert!(!replaced[0].degraded);
        let e = c.entry_embedding(&meta(1).sha256, "s").unwrap().unwrap();
        assert_eq!(e.vector, vec![0.0, 1.0]);
        assert_eq!(e.provenance.space.as_str(), "s");
        assert!(c.space_changed_below("s", 1, first[0].id).unwrap());

        c.put_entry(
            &meta(1),
            &embedding(vec![0.5, 0.5, 0.5], "wide", true),
            &t_in(c, "wide"),
        )
        .unwrap();
        c.put_entry(
            &meta(2),
            &embedding(vec![0.0, -1.0], "s", false),
            &t_in(c, "s"),
        )
        .unwrap();
        let spaces = c.spaces().unwrap();
        assert_eq!(spaces.len(), 2);
        assert_eq!(
            (spaces[0].space.as_str(), spaces[0].entries, spaces[0].dims),
            ("s", 2, 2)
        );
        assert_eq!((spaces[1].entries, spaces[1].degraded), (1, 1));
        let all = c.load_space("s").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.dims, 2);
        let since = c.space_since("s", all.ids[0]).unwrap();
        assert_eq!(since.ids, vec![all.ids[1]]);
        assert_eq!(since.vector(0), &[0.0, -1.0]);
        assert!(c.integrity_problems().unwrap().is_empty(), "{}", b.name);
    });
}

#[test]
fn files_roots_and_degraded_files_are_remembered() {
    on_both(|b| {
        let c = &b.cache;
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        let z = dir.path().join("sub/z.png");
        c.put_file(&a, &meta(1), 10, 111).unwrap();
        c.put_file(&z, &meta(1), 10, 222).unwrap();
        c.put_file(&dir.path().join("b.png"), &meta(2), 5, 333)
            .unwrap();
        let rec = c.file(&a).unwrap().unwrap();
        assert_eq!(
            (rec.sha256.as_str(), rec.size, rec.mtime_ns),
            (meta(1).sha256.as_str(), 10, 111)
        );
        assert_eq!(c.file(&dir.path().join("nope")).unwrap(), None);
        assert_eq!(
            c.paths_of(&meta(1).sha256).unwrap(),
            vec![a.clone(), z.clone()]
        );

        c.put_root(dir.path()).unwrap();
        c.put_root(dir.path()).unwrap();
        assert_eq!(
            c.roots().unwrap(),
            vec![dir.path().to_path_buf()],
            "{}",
            b.name
        );

        c.put_entry(&meta(1), &embedding(vec![1.0], "s", true), &t_in(c, "s"))
            .unwrap();
        c.put_entry(&meta(2), &embedding(vec![1.0], "s", false), &t_in(c, "s"))
            .unwrap();
        assert_eq!(c.degraded_files(None).unwrap(), vec![a.clone(), z.clone()]);
        assert_eq!(
            c.degraded_files(Some(&dir.path().join("sub"))).unwrap(),
            vec![z.clone()]
        );
    });
}

#[test]
fn prune_forgets_vanished_files_spaces_and_queries() {
    on_both(|b| {
        let c = &b.cache;
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.png");
        std::fs::write(&kept, b"kept").unwrap();
        let (size, mtime) = imbed::store::file_stamp(&kept).unwrap();
        c.put_file(&kept, &meta(1), size, mtime).unwrap();
        c.put_file(&dir.path().join("gone.png"), &meta(2), 1, 1)
            .unwrap();
        for i in [1, 2] {
            c.put_entry(
                &meta(i),
                &embedding(vec![1.0, 0.0], "s", false),
                &t_in(c, "s"),
            )
            .unwrap();
            c.put_description(
                &meta(i).sha256,
                "d",
                "",
                &CachedDescription {
                    text: "x".into(),
                    plugin: "p".into(),
                    model: "m".into(),
                    structured: None,
                },
            )
            .unwrap();
        }
        c.put_text_vector("q", "s", "m", &[1.0], &t_in(c, "s"))
            .unwrap();
        let stats = c.stats().unwrap();
        assert_eq!(
            (
                stats.images,
                stats.files,
                stats.descriptions,
                stats.text_vectors
            ),
            (2, 2, 2, 1),
            "{}",
            b.name
        );

        let report = c.prune(&PruneOptions::default().missing_files()).unwrap();
        assert_eq!(
            (report.files, report.images, report.entries),
            (1, 1, 1),
            "{}",
            b.name
        );
        assert!(c.description(&meta(2).sha256, "d", "").unwrap().is_none());
        assert!(c.description(&meta(1).sha256, "d", "").unwrap().is_some());

        let report = c
            .prune(&PruneOptions::default().space("s").text_vectors().vacuum())
            .unwrap();
        assert_eq!((report.entries, report.text_vectors), (1, 1), "{}", b.name);
        assert!(c.spaces().unwrap().is_empty());
    });
}

/// A search's hits: image and paths.
type Hits = Vec<(String, Vec<PathBuf>)>;

#[test]
fn search_gives_the_same_answers_on_both_backends() {
    let vectors = clustered(600, 32, 12, 3);
    let queries = clustered(20, 32, 12, 4);
    let answers: Vec<Vec<Hits>> = [sqlite(), pg()]
        .iter()
        .map(|b| {
            let c = &b.cache;
            let items: Vec<_> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (meta(i), embedding(v.clone(), "s", false)))
                .collect();
            c.put_entries(&items, &t_in(c, "s")).unwrap();
            c.put_file(Path::new("/photos/one.png"), &meta(7), 1, 1)
                .unwrap();
            queries
                .iter()
                .map(|q| {
                    let r =
                        imbed::search::search(c, "s", q, 8, Method::Exact, Some(&meta(0).sha256))
                            .unwrap();
                    assert_eq!(r.searched, 600);
                    r.hits.into_iter().map(|h| (h.image, h.paths)).collect()
                })
                .collect()
        })
        .collect();
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0]
        .iter()
        .flatten()
        .all(|(image, _)| *image != meta(0).sha256));
}

#[test]
fn empty_spaces_and_wrong_lengths_are_the_same_errors_on_both_backends() {
    on_both(|b| {
        let c = &b.cache;
        let err = imbed::search::search(c, "nothing", &[1.0], 3, Method::Auto, None).unwrap_err();
        assert!(
            matches!(err, imbed::search::SearchError::EmptySpace { .. }),
            "{}: {err}",
            b.name
        );
        c.put_entry(
            &meta(1),
            &embedding(vec![1.0, 0.0], "s", false),
            &t_in(c, "s"),
        )
        .unwrap();
        let err =
            imbed::search::search(c, "s", &[1.0, 0.0, 0.0], 3, Method::Auto, None).unwrap_err();
        assert!(
            matches!(err, imbed::search::SearchError::Dimensions { .. }),
            "{}: {err}",
            b.name
        );
    });
}

#[test]
fn the_postgres_schema_is_migrated_once_by_processes_starting_together() {
    let db = postgres::database();
    let opened: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| Cache::open_postgres(db.url(), PgOptions::default())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for cache in opened {
        assert_eq!(
            cache.unwrap().schema_version().unwrap(),
            imbed::store::PG_SCHEMA_VERSION
        );
    }
    assert_eq!(
        db.psql("SELECT count(*) FROM schema_migrations").trim(),
        imbed::store::PG_SCHEMA_VERSION.to_string()
    );
    db.psql("INSERT INTO schema_migrations (version) VALUES (999)");
    let err = Cache::open_postgres(db.url(), PgOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    assert!(err.to_string().contains("upgrade imbed"), "{err}");
}

#[track_caller]
fn open_error(url: &str) -> String {
    match Cache::open_postgres(url, PgOptions::default()) {
        Ok(_) => panic!("{url} opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn postgres_connection_problems_are_errors_that_name_the_fix() {
    let db = postgres::database();
    let err = open_error("postgres://user@host:notaport/db");
    assert!(
        err.contains("postgres://user:password@host:5432/database"),
        "{err}"
    );

    let err = open_error(&db.url_as(postgres::PASSWORD_USER, Some("wrong")));
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(err.contains("check the user and password"), "{err}");
    assert!(!err.contains("wrong"), "the password is never shown: {err}");
    // The right one gets in (the role may not create tables here: that is another error).
    let right = Cache::open_postgres(
        &db.url_as(postgres::PASSWORD_USER, Some(postgres::PASSWORD)),
        PgOptions::default(),
    );
    if let Err(e) = right {
        assert!(!e.to_string().contains("password authentication"), "{e}");
    }

    // Nothing listens on a port just freed: refused at once, never a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = open_error(&format!("postgres://postgres@127.0.0.1:{port}/x"));
    assert!(err.contains("is PostgreSQL running there"), "{err}");

    let missing = format!(
        "postgres://postgres@127.0.0.1:{}/no_such_db",
        postgres::server().port()
    );
    let err = open_error(&missing);
    assert!(err.contains("CREATE DATABASE no_such_db"), "{err}");
}

#[test]
fn a_database_without_pgvector_is_an_error_naming_create_extension() {
    let bare = postgres::database_without_vector();
    let err = open_error(&bare.url_as(postgres::PLAIN_USER, None));
    assert!(err.contains("CREATE EXTENSION vector"), "{err}");
    // A superuser's imbed enables it itself.
    let cache = Cache::open_postgres(bare.url(), PgOptions::default()).unwrap();
    assert_eq!(
        cache.schema_version().unwrap(),
        imbed::store::PG_SCHEMA_VERSION
    );
}

/// recall@10 of approximate search against exact search, over `queries`.
fn recall(cache: &Cache, space: &str, queries: &[Vec<f32>]) -> f64 {
    let mut found = 0;
    for q in queries {
        let exact = imbed::search::search(cache, space, q, 10, Method::Exact, None).unwrap();
        let approx = imbed::search::search(cache, space, q, 10, Method::Approximate, None).unwrap();
        assert_eq!(approx.method, Method::Approximate);
        let want: HashSet<_> = exact.hits.iter().map(|h| h.image.clone()).collect();
        found += approx
            .hits
            .iter()
            .filter(|h| want.contains(&h.image))
            .count();
    }
    found as f64 / (queries.len() * 10) as f64
}

fn load(cache: &Cache, space: &str, vectors: &[Vec<f32>], first: usize) {
    for (n, chunk) in vectors.chunks(2_000).enumerate() {
        let items: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    meta(first + n * 2_000 + i),
                    embedding(v.clone(), space, false),
                )
            })
            .collect();
        cache.put_entries(&items, &t_in(cache, space)).unwrap();
    }
}

#[test]
fn pgvector_hnsw_search_finds_what_exact_search_finds_in_spaces_of_384_and_768() {
    let b = pg();
    let c = &b.cache;
    let (small, wide) = ("test/small:384", "test/wide:768");
    // The last 40 of each set are not stored: queries near the stored clusters.
    let mut small_set = clustered(20_040, 384, 200, 1);
    let mut wide_set = clustered(5_040, 768, 50, 2);
    let small_queries = small_set.split_off(20_000);
    let wide_queries = wide_set.split_off(5_000);
    load(c, small, &small_set, 0);
    load(c, wide, &wide_set, 100_000);
    c.prepare_search(small).unwrap();
    c.prepare_search(wide).unwrap();
    for (space, dims, queries) in [(small, 384, &small_queries), (wide, 768, &wide_queries)] {
        let plan = c.explain_search(space, dims).unwrap().unwrap();
        let name = format!("entries_hnsw_{}", &imbed::store::text_key(space)[..24]);
        assert!(
            plan.contains(&name),
            "{space} does not use its index {name}:\n{plan}"
        );
        let r = recall(c, space, queries);
        assert!(r >= 0.95, "{space}: recall@10 {r}");
    }
    // A row written after the index was built is found through it.
    let extra = clustered(1, 384, 1, 777).remove(0);
    c.put_entry(
        &meta(999_999),
        &embedding(extra.clone(), small, false),
        &t_in(c, small),
    )
    .unwrap();
    let hit = imbed::search::search(c, small, &extra, 1, Method::Approximate, None).unwrap();
    assert_eq!(hit.hits[0].image, meta(999_999).sha256);
    assert!((hit.hits[0].score - 1.0).abs() < 1e-4);
}

#[test]
fn halfvec_indexes_and_exact_rerank_are_used_when_configured() {
    let mut options = PgOptions::default();
    options.halfvec = true;
    options.exact_rerank = true;
    options.ef_search = 100;
    let b = pg_with(options);
    let c = &b.cache;
    let space = "test/half:64";
    let mut set = clustered(3_030, 64, 30, 5);
    let queries = set.split_off(3_000);
    load(c, space, &set, 0);
    let plan = c.explain_search(space, 64).unwrap().unwrap();
    assert!(plan.contains("entries_hnsw_"), "{plan}");
    assert!(
        b.db.as_ref()
            .unwrap()
            .psql("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'entries_hnsw_%'")
            .contains("halfvec(64)"),
        "the index is over halfvec"
    );
    let r = recall(c, space, &queries);
    assert!(r >= 0.95, "recall@10 {r}");
    // Re-ranked scores are the exact cosines.
    let q = &queries[0];
    let exact = imbed::search::search(c, space, q, 3, Method::Exact, None).unwrap();
    let approx = imbed::search::search(c, space, q, 3, Method::Approximate, None).unwrap();
    assert_eq!(exact.hits[0].image, approx.hits[0].image);
    assert_eq!(exact.hits[0].score, approx.hits[0].score);
}

fn writer(key: &str, component: &str) -> Writer {
    Writer {
        key: key.into(),
        name: format!("{key}-name"),
        component: component.into(),
    }
}

fn claim(key: &str, component: &str, shares: &[&str]) -> SpaceClaim {
    SpaceClaim {
        writer: writer(key, component),
        shares_with: shares.iter().map(|s| s.to_string()).collect(),
    }
}

#[track_caller]
fn granted(o: Ownership) -> SpaceOwner {
    match o {
        Ownership::Granted { owner } => owner,
        Ownership::Refused { owner } => panic!("refused, owned by {owner:?}"),
    }
}

#[track_caller]
fn refused(o: Ownership) -> SpaceOwner {
    match o {
        Ownership::Refused { owner } => owner,
        Ownership::Granted { owner } => panic!("granted, owned by {owner:?}"),
    }
}

/// An answer reported by plugin `key`.
fn embedding_by(key: &str, space: &str) -> imbed::Embedding {
    let mut e = embedding(vec![0.6, 0.8], space, false);
    e.provenance.plugin.key = key.into();
    e.provenance.plugin.name = key.into();
    e
}

#[test]
fn the_first_writer_owns_a_space_and_others_are_refused_unless_sharing() {
    on_both(|b| {
        let c = &b.cache;
        assert_eq!(c.space_owner("s").unwrap(), None);
        let owner = granted(c.claim_space("s", &claim("clip", "aaaa", &[])).unwrap());
        assert_eq!(
            (owner.key.as_str(), owner.name.as_str()),
            ("clip", "clip-name")
        );
        assert_eq!(
            c.space_owner("s").unwrap(),
            Some(owner.clone()),
            "{}",
            b.name
        );

        let rogue = writer("rogue", "bbbb");
        assert_eq!(
            refused(c.claim_space("s", &claim("rogue", "bbbb", &[])).unwrap()),
            owner
        );
        // Sharing declared with another key does not help.
        refused(
            c.claim_space("s", &claim("rogue", "bbbb", &["hash"]))
                .unwrap(),
        );
        // A refused claimant writes nothing, even by calling the store directly.
        let err = c
            .put_entry(&meta(1), &embedding_by("rogue", "s"), &rogue)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotClaimed { .. }),
            "{}: {err}",
            b.name
        );
        let err = c
            .put_entries(&[(meta(2), embedding_by("rogue", "s"))], &rogue)
            .unwrap_err();
        assert!(matches!(err, StoreError::NotClaimed { .. }), "{err}");
        assert!(c.put_image_vector("img", "s", "m", &[1.0], &rogue).is_err());
        assert!(c.put_text_vector("txt", "s", "m", &[1.0], &rogue).is_err());
        assert!(c.load_space("s").unwrap().is_empty(), "{}", b.name);
        assert_eq!(c.image_vector("img", "s").unwrap(), None);
        assert_eq!(c.text_vector("txt", "s").unwrap(), None);
        assert!(c.entries_of(&meta(1).sha256).unwrap().is_empty());

        // Declared as sharing with the owner: granted, and recorded as a writer.
        assert_eq!(
            granted(
                c.claim_space("s", &claim("clip-2", "cccc", &["clip"]))
                    .unwrap()
            ),
            owner
        );
        // The owner with a new component (an upgrade) keeps its space.
        granted(c.claim_space("s", &claim("clip", "dddd", &[])).unwrap());
        c.put_entry(
            &meta(1),
            &embedding_by("clip", "s"),
            &writer("clip", "dddd"),
        )
        .unwrap();
        c.put_entry(
            &meta(2),
            &embedding_by("clip-2", "s"),
            &writer("clip-2", "cccc"),
        )
        .unwrap();
        assert_eq!(c.load_space("s").unwrap().len(), 2);

        let spaces = c.spaces().unwrap();
        assert_eq!(spaces[0].owner, Some(owner.clone()), "{}", b.name);
        let writers: Vec<(&str, &str)> = spaces[0]
            .writers
            .iter()
            .map(|w| (w.key.as_str(), w.component.as_str()))
            .collect();
        assert_eq!(writers.len(), 3, "{}: {writers:?}", b.name);
        for w in [("clip", "aaaa"), ("clip-2", "cccc"), ("clip", "dddd")] {
            assert!(writers.contains(&w), "{}: {writers:?}", b.name);
        }
        // A writer claimed elsewhere holds no claim on this space.
        assert!(c
            .put_entry(
                &meta(3),
                &embedding_by("clip", "t"),
                &writer("clip", "dddd")
            )
            .is_err());
        // A space pinned but still empty is listed by stats with its owner.
        granted(c.claim_space("empty", &claim("hash", "eeee", &[])).unwrap());
        let stats = c.stats().unwrap();
        let empty = stats.spaces.iter().find(|s| s.space == "empty").unwrap();
        assert_eq!(empty.entries, 0);
        assert_eq!(empty.owner.as_ref().unwrap().key, "hash", "{}", b.name);
    });
}

#[test]
fn of_many_connections_racing_to_pin_a_space_exactly_one_wins() {
    on_both(|b| {
        // Each thread opens its own store (its own connection, or pool), as separate
        // processes would.
        let open = || match &b.db {
            Some(db) => Cache::open_postgres(db.url(), PgOptions::default()).unwrap(),
            None => Cache::open(b.cache.path()).unwrap(),
        };
        for round in 0..8 {
            let space = format!("space-{round}");
            let barrier = std::sync::Barrier::new(6);
            let results: Vec<(String, Ownership)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..6)
                    .map(|i| {
                        let (space, barrier, open) = (&space, &barrier, &open);
                        s.spawn(move || {
                            let cache = open();
                            let key = format!("p{i}");
                            barrier.wait();
                            let o = cache.claim_space(space, &claim(&key, "ab", &[])).unwrap();
                            // Whoever won can write at once; the others cannot.
                            let wrote = cache
                                .put_entry(
                                    &meta(i),
                                    &embedding_by(&key, space),
                                    &writer(&key, "ab"),
                                )
                                .is_ok();
                            assert_eq!(wrote, matches!(o, Ownership::Granted { .. }));
                            (key, o)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<&String> = results
                .iter()
                .filter(|(_, o)| matches!(o, Ownership::Granted { .. }))
                .map(|(k, _)| k)
                .collect();
            assert_eq!(winners.len(), 1, "{} round {round}: {results:?}", b.name);
            for (_, o) in &results {
                let (Ownership::Granted { owner } | Ownership::Refused { owner }) = o;
                assert_eq!(&owner.key, winners[0], "{}", b.name);
            }
            assert_eq!(
                b.cache.space_owner(&space).unwrap().unwrap().key,
                *winners[0]
            );
            let stored = b.cache.load_space(&space).unwrap();
            assert_eq!(stored.len(), 1, "{} round {round}", b.name);
            let spaces = b.cache.spaces().unwrap();
            let stats = spaces.iter().find(|s| s.space == space).unwrap();
            assert_eq!(stats.writers.len(), 1, "{}: {:?}", b.name, stats.writers);
        }
    });
}

#[test]
fn pruning_a_component_drops_its_vectors_and_the_pin_goes_with_the_owners_last_writes() {
    on_both(|b| {
        let c = &b.cache;
        let rogue = writer("rogue", "badbad01");
        granted(
            c.claim_space("s", &claim("rogue", "badbad01", &[]))
                .unwrap(),
        );
        granted(
            c.claim_space("s", &claim("rogue", "badbad02", &[]))
                .unwrap(),
        );
        c.put_entry(&meta(1), &embedding_by("rogue", "s"), &rogue)
            .unwrap();
        c.put_text_vector("t", "s", "m", &[1.0], &rogue).unwrap();
        c.put_image_vector("i", "s", "m", &[1.0], &rogue).unwrap();
        let prune =
            |filter: WriterFilter| c.prune(&PruneOptions::default().space("s").writer(filter));
        // Too short, or matching two components: refused, nothing dropped.
        assert!(matches!(
            prune(WriterFilter::Component("bad".into())),
            Err(StoreError::PruneTarget(_))
        ));
        let err = prune(WriterFilter::Component("badbad".into())).unwrap_err();
        assert!(
            err.to_string().contains("more than one"),
            "{}: {err}",
            b.name
        );
        assert_eq!(c.load_space("s").unwrap().len(), 1);

        let report = prune(WriterFilter::Component("BADBAD01".into())).unwrap();
        assert_eq!(
            (report.entries, report.text_vectors, report.image_vectors),
            (1, 1, 1),
            "{}",
            b.name
        );
        // The owner still has a component recorded there: the pin stays.
        assert!(report.unpinned.is_empty());
        assert_eq!(c.space_owner("s").unwrap().unwrap().key, "rogue");
        let report = prune(WriterFilter::Component("badbad02".into())).unwrap();
        assert_eq!(report.unpinned, ["s"], "{}", b.name);
        assert_eq!(c.space_owner("s").unwrap(), None);
        granted(c.claim_space("s", &claim("clip", "c0ffee", &[])).unwrap());
        assert_eq!(c.space_owner("s").unwrap().unwrap().key, "clip");

        // By plugin, in every space; then a whole space, which takes its pin with it.
        let clip = writer("clip", "c0ffee");
        granted(c.claim_space("u", &claim("clip", "c0ffee", &[])).unwrap());
        c.put_entry(&meta(2), &embedding_by("clip", "s"), &clip)
            .unwrap();
        c.put_entry(&meta(3), &embedding_by("clip", "u"), &clip)
            .unwrap();
        let report = c
            .prune(&PruneOptions::default().writer(WriterFilter::Plugin("clip".into())))
            .unwrap();
        assert_eq!(report.entries, 2, "{}", b.name);
        assert_eq!(report.unpinned, ["s", "u"], "{}", b.name);
        granted(c.claim_space("v", &claim("hash", "0a0a0a", &[])).unwrap());
        let report = c.prune(&PruneOptions::default().space("v")).unwrap();
        assert_eq!(report.unpinned, ["v"], "{}", b.name);
        assert_eq!(c.space_owner("v").unwrap(), None);
    });
}

#[test]
fn a_postgres_cache_of_schema_1_pins_each_space_its_entries_agree_on() {
    let db = postgres::database();
    let old = Cache::open_postgres_at_schema(db.url(), 1).unwrap();
    assert_eq!(old.schema_version().unwrap(), 1);
    drop(old);
    let put = |image: usize, key: &str, space: &str| {
        let p = serde_json::to_string(&embedding_by(key, space).provenance).unwrap();
        db.psql(&format!(
            "INSERT INTO entries (image, space, dims, embedding, provenance, degraded, created_at)
             VALUES ('{}', '{space}', 2, '[0.6,0.8]', '{}', false, 100)",
            meta(image).sha256,
            p.replace('\'', "''")
        ));
    };
    put(1, "hash", "one");
    put(2, "hash", "one");
    put(1, "hash", "mixed");
    put(2, "rogue", "mixed");
    let c = Cache::open_postgres(db.url(), PgOptions::default()).unwrap();
    assert_eq!(c.schema_version().unwrap(), imbed::store::PG_SCHEMA_VERSION);
    let spaces = c.spaces().unwrap();
    let one = spaces.iter().find(|s| s.space == "one").unwrap();
    assert_eq!(one.owner.as_ref().map(|o| o.key.as_str()), Some("hash"));
    assert_eq!(one.writers.len(), 1);
    assert_eq!(one.writers[0].component, "");
    let mixed = spaces.iter().find(|s| s.space == "mixed").unwrap();
    assert_eq!(mixed.owner, None);
    assert_eq!(mixed.writers.len(), 2);
    // Unpinned until the next write, which pins it.
    granted(c.claim_space("mixed", &claim("hash", "ee", &[])).unwrap());
    refused(c.claim_space("mixed", &claim("rogue", "ff", &[])).unwrap());
    // Entries from before name their plugin, so a plugin's old rows can be pruned.
    let report = c
        .prune(
            &PruneOptions::default()
                .space("mixed")
                .writer(WriterFilter::Plugin("rogue".into())),
        )
        .unwrap();
    assert_eq!(report.entries, 1);
    assert_eq!(c.load_space("mixed").unwrap().len(), 1);
}

#[test]
fn cache_migrate_copies_owners_and_writers_and_stops_at_a_space_owned_by_another_plugin() {
    let from = sqlite();
    granted(
        from.cache
            .claim_space("s", &claim("clip", "aa", &[]))
            .unwrap(),
    );
    from.cache
        .put_entry(&meta(1), &embedding_by("clip", "s"), &writer("clip", "aa"))
        .unwrap();
    from.cache
        .put_text_vector("q", "s", "m", &[1.0, 0.0], &writer("clip", "aa"))
        .unwrap();

    let taken = pg();
    granted(
        taken
            .cache
            .claim_space("s", &claim("rogue", "bb", &[]))
            .unwrap(),
    );
    let err = from.cache.copy_to(&taken.cache).unwrap_err();
    assert!(matches!(err, StoreError::OwnerConflict { .. }), "{err}");
    assert!(
        err.to_string().contains("imbed cache prune --space"),
        "{err}"
    );
    assert!(taken.cache.load_space("s").unwrap().is_empty());

    let fresh = pg();
    let report = from.cache.copy_to(&fresh.cache).unwrap();
    assert_eq!((report.entries, report.vectors), (1, 1));
    assert_eq!(fresh.cache.spaces().unwrap(), from.cache.spaces().unwrap());
    refused(
        fresh
            .cache
            .claim_space("s", &claim("rogue", "bb", &[]))
            .unwrap(),
    );
    // The copied rows name their writer: pruning it empties the space and unpins it.
    let report = fresh
        .cache
        .prune(
            &PruneOptions::default()
                .space("s")
                .writer(WriterFilter::Plugin("clip".into())),
        )
        .unwrap();
    assert_eq!((report.entries, report.text_vectors), (1, 1));
    assert_eq!(report.unpinned, ["s"]);
}
