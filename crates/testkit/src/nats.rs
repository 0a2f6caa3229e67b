//! NATS for the tests, always a real `nats-server` with JetStream (Debian's `nats-server`
//! package): one of a test's own on a free loopback port, its store in a temporary directory,
//! stopped (by its PID) and removed with it; or the server the test command started for a
//! whole run of the suite in the NATS profile ([`PROFILE_ENV`]), on which every
//! [`crate::System`] puts its events under a subject prefix of its own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the NATS server of the profile (`nats://host:port`);
/// unset: events on the control plane's embedded log.
pub const PROFILE_ENV: &str = "TESSERA_TEST_NATS";

/// The server of the NATS profile, if this run is in it.
pub fn profile() -> Option<String> {
    std::env::var(PROFILE_ENV).ok().filter(|u| !u.is_empty())
}

/// A `nats-server` of one test's own.
pub struct Server {
    dir: PathBuf,
    port: u16,
    /// Its configuration file, when it has users.
    config: Option<PathBuf>,
    child: Option<Child>,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl Server {
    /// Starts a server with JetStream on a free loopback port; panics, saying what to install,
    /// when `nats-server` is not there.
    pub fn start() -> Self {
        Self::start_with_users(None)
    }

    /// Starts a server whose clients must be one of `users` (`(name, password,
    /// permissions)`, as `tessera::events::nats::server_config` takes them); `None`: anyone.
    pub fn start_with_users(users: Option<&[tessera::events::nats::User]>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tessera-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("make the server's directory");
        let port = crate::free_port();
        let config = users.map(|users| {
            let path = dir.join("nats.conf");
            let config = tessera::events::nats::server_config(
                &format!("127.0.0.1:{port}"),
                &dir.join("store").to_string_lossy(),
                users,
                None,
            );
            std::fs::write(&path, config.to_string()).expect("write the server's configuration");
            path
        });
        let mut server = Server {
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            port,
            config,
            child: None,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let mut command = Command::new("nats-server");
        match &self.config {
            Some(config) => command.arg("-c").arg(config),
            None => command
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(self.dir.join("store")),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.join("log")).expect("the server's log"),
            ))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): apt-get install -y nats-server")
            });
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not listen within 10 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with its store.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// What the server has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
