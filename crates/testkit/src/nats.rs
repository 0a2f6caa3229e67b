//! NATS for the tests, always a real `nats-server` with JetStream (Debian's `nats-server`
//! package): one of a test's own on a free loopback port, its store in a temporary directory,
//! stopped (by its PID) and removed with it; or the server the test command started for a
//! whole run of the suite in the NATS profile ([`PROFILE_ENV`]), on which every
//! [`crate::System`] puts its events under a subject prefix of its own.

use std::ffi::OsString;

use crate::engine::Engine;

/// The environment variable naming the NATS server of the profile (`nats://host:port`);
/// unset: events on the control plane's embedded log.
pub const PROFILE_ENV: &str = "TESSERA_TEST_NATS";

/// The server of the NATS profile, if this run is in it.
pub fn profile() -> Option<String> {
    std::env::var(PROFILE_ENV).ok().filter(|u| !u.is_empty())
}

/// A `nats-server` of one test's own.
pub struct Server {
    engine: Engine,
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
        let dir = Engine::dir("nats");
        let port = crate::free_port();
        let store = dir.join("store");
        let args: Vec<OsString> = match users {
            Some(users) => {
                let path = dir.join("nats.conf");
                let config = tessera::events::nats::server_config(
                    &format!("127.0.0.1:{port}"),
                    &store.to_string_lossy(),
                    users,
                    None,
                );
                std::fs::write(&path, config.to_string())
                    .expect("write the server's configuration");
                vec!["-c".into(), path.into()]
            }
            None => vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string().into(),
                "-js".into(),
                "-sd".into(),
                store.into(),
            ],
        };
        Server {
            url: format!("nats://127.0.0.1:{port}"),
            engine: Engine::start("nats-server", args, dir, port),
        }
    }
}

/// `kill`, `restart`, `log`: the engine's own.
impl std::ops::Deref for Server {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}
