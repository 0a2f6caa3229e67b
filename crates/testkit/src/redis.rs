//! Redis for the tests, always a real `redis-server` (Debian's package): one of a test's own on
//! a free loopback port, with a password; or the one the test command started for a whole run
//! of the suite in the distributed profile ([`PROFILE_ENV`]), on which every
//! [`crate::System`] keeps its shared state under a key prefix of its own.

use std::ffi::OsString;

use crate::engine::Engine;

/// The environment variable naming the Redis of the profile (`redis://:<password>@host:port`);
/// unset: each gateway's own memory.
pub const PROFILE_ENV: &str = "TESSERA_TEST_REDIS";

/// The Redis of the distributed profile, if this run is in it.
pub fn profile() -> Option<String> {
    std::env::var(PROFILE_ENV).ok().filter(|u| !u.is_empty())
}

/// A `redis-server` of one test's own.
pub struct Server {
    engine: Engine,
    /// `redis://:<password>@127.0.0.1:<port>`.
    pub url: String,
    pub port: u16,
}

impl Server {
    /// Starts one on a free loopback port, its password `test-redis`, nothing saved to disk.
    pub fn start() -> Self {
        let dir = Engine::dir("redis");
        let port = crate::free_port();
        let args: Vec<OsString> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--requirepass",
            "test-redis",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        Self {
            url: format!("redis://:test-redis@127.0.0.1:{port}"),
            port,
            engine: Engine::start("redis-server", args, dir, port),
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
