//! etcd for the tests, always a real `etcd` (Debian's `etcd-server` package): one of a test's
//! own on free loopback ports, its data in a temporary directory; or the one the test command
//! started for a whole run of the suite in the distributed profile ([`PROFILE_ENV`]), on which
//! every [`crate::System`] keeps its registry under a key prefix (and etcd users) of its own.

use std::ffi::OsString;

use crate::engine::Engine;

/// The environment variable naming the etcd of the profile (`etcd://root:<password>@host:port`,
/// the root user's: each system's control plane provisions its own users with it); unset: the
/// control plane's registry.
pub const PROFILE_ENV: &str = "TESSERA_TEST_ETCD";

/// The etcd of the distributed profile, if this run is in it.
pub fn profile() -> Option<String> {
    std::env::var(PROFILE_ENV).ok().filter(|u| !u.is_empty())
}

/// The arguments of an etcd member `name` (data in `data_dir`, serving clients on `client`
/// and its peers on `peer`, both URLs) of the cluster `initial_cluster` (`name=peer,…`), at
/// bcrypt's least cost (every password a test uses is a secret of its own or a throwaway).
pub fn member_args(
    name: &str,
    data_dir: &str,
    client: &str,
    peer: &str,
    initial_cluster: &str,
) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        data_dir,
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        initial_cluster,
        "--bcrypt-cost",
        "4",
    ]
    .map(String::from)
    .to_vec()
}

/// An `etcd` of one test's own.
pub struct Server {
    engine: Engine,
    /// `etcd://127.0.0.1:<port>`.
    pub url: String,
}

impl Server {
    /// Starts a one-member cluster on free loopback ports, authentication off.
    pub fn start() -> Self {
        let dir = Engine::dir("etcd");
        let port = crate::free_port();
        let peer = std::iter::repeat_with(crate::free_port)
            .find(|p| *p != port)
            .expect("ports");
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let args = member_args("t", "data", &client, &peer, &format!("t={peer}"))
            .iter()
            .map(OsString::from)
            .collect();
        Self {
            url: format!("etcd://127.0.0.1:{port}"),
            engine: Engine::start("etcd", args, dir, port),
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
