//! An engine process `tessera up` starts for a profile (nats-server, etcd, redis-server): run
//! under the state directory, waited for until it listens, and stopped by its PID (SIGTERM, so
//! that it flushes its files; SIGKILL after 5 s) when the system stops, however `up` ends.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::bail;

pub struct LocalEngine {
    child: tokio::process::Child,
    /// Its directory (files, configuration, `log`).
    pub dir: PathBuf,
}

impl LocalEngine {
    /// Runs `command` (its program one of the engines) with its log in `dir/log`, and waits up
    /// to 15 s until it listens on loopback `port`; says what to install when it is not there.
    pub fn start(
        mut command: tokio::process::Command,
        program: &str,
        package: &str,
        dir: PathBuf,
        port: u16,
    ) -> anyhow::Result<Self> {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            bail!("port {port} is taken: another {program}? (a --*-port option picks another)");
        }
        let log = std::fs::File::create(dir.join("log"))?;
        command.stdout(Stdio::null()).stderr(log);
        crate::supervisor::die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot start {program} ({e}): install it (Debian/Ubuntu: `apt-get install \
                 {package}`), or give the system's URL for it instead (docs/scale-out.md)"
            )
        })?;
        let mut engine = Self { child, dir };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = engine.child.try_wait() {
                let log = std::fs::read_to_string(engine.dir.join("log")).unwrap_or_default();
                bail!("{program} stopped ({status}): {}", log.trim());
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("{program} did not listen on 127.0.0.1:{port} within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(engine)
    }
}

impl Drop for LocalEngine {
    fn drop(&mut self) {
        crate::supervisor::signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }
}
