//! PostgreSQL: the test server itself (tests/src/postgres.rs).

use imbed_tests::postgres::{self, database, database_without_vector};

#[test]
fn the_test_server_has_pgvector_and_gives_each_test_its_own_database() {
    let a = database();
    let b = database();
    assert_ne!(a.name(), b.name());
    a.psql("CREATE TABLE only_in_a (v vector(3)); INSERT INTO only_in_a VALUES ('[1,2,3]')");
    assert_eq!(a.psql("SELECT v <-> '[1,2,4]' FROM only_in_a").trim(), "1");
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'")
            .trim(),
        "0"
    );
    assert_eq!(
        a.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            .trim(),
        "0.8.6"
    );
    let bare = database_without_vector();
    assert_eq!(
        bare.psql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
            .trim(),
        "0"
    );
}

#[test]
fn a_dropped_test_database_is_gone() {
    let name = {
        let db = database();
        db.name().to_string()
    };
    let left = postgres::server().psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    );
    assert_eq!(left.trim(), "0");
}

#[test]
fn the_server_is_not_run_as_root() {
    let server = postgres::server();
    let db = database();
    let uid = db.psql("SELECT current_setting('data_directory')");
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(uid.trim()).expect("the data folder exists"),
    );
    assert_ne!(
        owner,
        0,
        "the data folder of {:?} is owned by root",
        server.dir()
    );
}

#[test]
fn servers_left_by_killed_test_processes_are_removed() {
    postgres::server();
    // A folder as a test process that is gone would leave it (no PID reaches 999999999).
    let stale = postgres::servers_dir().join("stale-by-test");
    std::fs::create_dir_all(stale.join("data")).unwrap();
    std::fs::write(stale.join("owner.pid"), "999999999").unwrap();
    postgres::clean_stale_servers();
    assert!(!stale.exists());
    // This process's own server is left alone.
    assert!(postgres::server().dir().exists());
    assert_eq!(database().psql("SELECT 1").trim(), "1");
}
