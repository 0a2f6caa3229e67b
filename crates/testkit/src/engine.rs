//! One engine process of a test's own (nats-server, etcd, redis-server from Debian's
//! packages): started on a loopback port in a temporary directory, waited for until it
//! listens, killed or stopped by its PID (never by name: other tests run theirs), restarted on
//! the same port with the same files, and removed with its directory when dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Engine {
    program: &'static str,
    args: Vec<OsString>,
    dir: PathBuf,
    /// Where it listens (the test waits for it).
    pub port: u16,
    child: Option<Child>,
}

impl Engine {
    /// A new directory for an engine named `name`.
    pub fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tessera-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("make the engine's directory");
        dir
    }

    /// Runs `program args` in `dir` and waits until it listens on `port`; panics, saying
    /// which Debian package to install, when it is not there.
    pub fn start(program: &'static str, args: Vec<OsString>, dir: PathBuf, port: u16) -> Self {
        let mut engine = Self {
            program,
            args,
            dir,
            port,
            child: None,
        };
        engine.run();
        engine
    }

    fn run(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.join("log")).expect("the engine's log"),
            ))
            .spawn()
            .unwrap_or_else(|e| {
                let package = match self.program {
                    "etcd" => "etcd-server",
                    other => other,
                };
                panic!(
                    "cannot start {} ({e}): apt-get install -y {package}",
                    self.program
                )
            });
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() || self.exited() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{} did not listen within 15 s: {}",
                self.program,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it has stopped (a port someone else holds, say): then the test cannot go on.
    fn exited(&mut self) -> bool {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = status {
            panic!("{} stopped ({status}): {}", self.program, self.log());
        }
        false
    }

    /// The engine's directory (its files and log).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with its files.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// What it has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
