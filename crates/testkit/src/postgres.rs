//! PostgreSQL for the tests, always a real server: a cluster of a test's own ([`Cluster`]: a
//! primary and, if asked, a streaming replica, stopped and removed with it), or the server the
//! test command started for a whole run of the suite in the PostgreSQL profile
//! ([`PROFILE_ENV`]), in which every [`crate::System`] gets fresh databases of its own.
//!
//! Both are started by `tessera postgres start`, the command a user tries the profile with.

use std::path::PathBuf;
use std::process::Command;

/// The environment variable naming the PostgreSQL server of the profile (a URL of its
/// `postgres` database, with the password); unset: the embedded profile.
pub const PROFILE_ENV: &str = "TESSERA_TEST_POSTGRES";

/// The environment variable naming a streaming replica of that server, if it has one.
pub const PROFILE_REPLICA_ENV: &str = "TESSERA_TEST_POSTGRES_REPLICA";

/// The replica of the profile's server, if it has one.
pub fn profile_replica() -> Option<String> {
    std::env::var(PROFILE_REPLICA_ENV)
        .ok()
        .filter(|u| !u.is_empty())
}

/// The server of the PostgreSQL profile, if this run is in it.
pub fn profile() -> Option<String> {
    std::env::var(PROFILE_ENV).ok().filter(|u| !u.is_empty())
}

/// Two free ports in a row (a primary's and its replica's): the first. From a range of their
/// own, below [`crate::free_port`]'s: a server binds its ports only a second or two later,
/// after `initdb`, and meanwhile another test's `free_port` could hand the same port to a
/// gateway.
pub fn free_ports() -> u16 {
    loop {
        let port = 15_000 + (uuid::Uuid::new_v4().as_u128() % 2_400) as u16 * 2;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
}

/// A cluster of one test's own.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    replica_too: bool,
    /// The primary's URL, database `postgres`.
    pub primary: String,
    /// The replica's, when one was asked for.
    pub replica: Option<String>,
}

impl Cluster {
    /// Starts a primary (and with `replica` a streaming replica) on free loopback ports.
    pub fn start(replica: bool) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tessera-pg-{}", uuid::Uuid::new_v4().simple()));
        let port = free_ports();
        let out = Command::new(crate::bin_dir().join("tessera"))
            .args(["postgres", "start", "--port", &port.to_string(), "--dir"])
            .arg(&dir)
            .args(replica.then_some("--replica"))
            .output()
            .expect("run tessera postgres start");
        assert!(
            out.status.success(),
            "tessera postgres start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let urls = String::from_utf8(out.stdout).expect("URLs");
        let mut urls = urls.lines().map(str::to_string);
        Cluster {
            dir,
            port,
            replica_too: replica,
            primary: urls.next().expect("the primary's URL"),
            replica: urls.next(),
        }
    }

    /// Starts it again after [`Cluster::stop`], on the same ports, with its data.
    pub fn restart(&self) {
        let out = Command::new(crate::bin_dir().join("tessera"))
            .args([
                "postgres",
                "start",
                "--port",
                &self.port.to_string(),
                "--dir",
            ])
            .arg(&self.dir)
            .args(self.replica_too.then_some("--replica"))
            .output()
            .expect("run tessera postgres start");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where its files are (`primary/`, `replica/`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A new database on the primary; its URL.
    pub fn database(&self, name: &str) -> String {
        create_database(&self.primary, name)
    }

    /// Stops the primary and the replica (fast shutdown), as an outage would.
    pub fn stop(&self) {
        let out = Command::new(crate::bin_dir().join("tessera"))
            .args(["postgres", "stop", "--dir"])
            .arg(&self.dir)
            .output()
            .expect("run tessera postgres stop");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(crate::bin_dir().join("tessera"))
            .args(["postgres", "stop", "--dir"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates database `name` on the server `admin` names; the URL of the new database.
pub fn create_database(admin: &str, name: &str) -> String {
    // FILE_COPY: a few WAL records instead of the whole template database in the log (a
    // replica then trails by what the services write, not by megabytes of copies).
    psql(
        admin,
        &format!("CREATE DATABASE \"{name}\" STRATEGY = FILE_COPY"),
    );
    with_database(admin, name)
}

/// Drops database `name` (closing its connections), if it exists. Never panics (it runs in
/// teardown, maybe while a test is failing): a failure is printed.
pub fn drop_database(admin: &str, name: &str) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", admin, "-c"])
        .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "cannot drop {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("cannot drop {name}: {e}"),
    }
}

/// Runs one statement with psql; panics with its message if it fails.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("run psql (PostgreSQL's client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}
