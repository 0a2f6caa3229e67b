//! State that the processes of a system share beyond one machine, on Redis
//! (`docs/scale-out.md`): the gateways' rate limits (`limit.rs`), the access-token revocations
//! every gateway must know at once (`revocations.rs`), and a cache several replicas of a
//! service read through (`cache.rs`).
//!
//! Redis is an accelerator here, never a dependency of a request: every call is bounded by a
//! short timeout, and after a failure Redis is left alone for a moment ([`Shared::available`])
//! so that an outage costs each request nothing. What each caller does meanwhile is its own
//! choice: the gateway limits with its local buckets, a cache reads through to the database.
//! Outages and recoveries are logged once each.

mod cache;
mod limit;
mod revocations;
mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tessera_identity::engine::EngineUrl;

pub use cache::Cache;
pub use limit::SharedLimit;
pub use revocations::Revocation;
pub use users::keep_provisioned;

/// How long one Redis call may take before its caller goes on without it (a connection being
/// made counts against it too).
const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long Redis is left alone after a failure.
const BACK_OFF: Duration = Duration::from_secs(1);
/// How often connections may be made anew after lost ones (`Shared::renew`).
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long connecting or one call may take where getting through matters more than speed.
const PATIENCE: Duration = Duration::from_secs(2);

/// Where the shared state lives: `redis://[user:password@]host:port[?prefix=…]`, or
/// `rediss://…` over TLS.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    url: EngineUrl,
    /// `rediss://`: over TLS, the server checked against the system CA (with the system's
    /// mutual TLS on; the process's identity shown too) or else the host's roots.
    tls: bool,
    /// The first part of every key and channel (default `tessera`): several systems share one
    /// Redis.
    pub prefix: String,
}

impl RedisSettings {
    pub fn handles(url: &str) -> bool {
        url.starts_with("redis://") || url.starts_with("rediss://")
    }

    pub fn parse(url: &str) -> Result<Self, String> {
        let tls = url.starts_with("rediss://");
        let url = EngineUrl::parse(url, if tls { "rediss" } else { "redis" }, 6379)?;
        if url.hosts.len() != 1 {
            return Err("a redis URL names one host:port".into());
        }
        let prefix = url.prefix()?;
        Ok(Self { url, tls, prefix })
    }

    /// The URL without its password.
    pub fn redacted(&self) -> String {
        self.url.redacted()
    }

    /// The URL, password included: for a process's environment only.
    pub fn to_url(&self) -> String {
        self.url.to_url()
    }

    /// Whether these settings connect as Redis's `default` user (no user named: the
    /// server's own password), who may make the others.
    pub fn is_default_user(&self) -> bool {
        self.url
            .user
            .as_ref()
            .is_none_or(|(user, _)| user.is_empty() || user == "default")
    }

    /// The Redis user of the process named `name` (a service, `gateway`) in this system.
    pub fn user_of(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// These settings as `user` with `password` (what the runner gives a process).
    pub fn as_user(&self, user: &str, password: &str) -> Self {
        Self {
            url: self.url.as_user(user, password),
            ..self.clone()
        }
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        let (host, port) = self.url.hosts[0]
            .rsplit_once(':')
            .expect("EngineUrl checked host:port");
        let mut redis = redis::RedisConnectionInfo::default();
        if let Some((user, password)) = &self.url.user {
            if !user.is_empty() && user != "default" {
                redis = redis.set_username(user.clone());
            }
            redis = redis.set_password(password.clone());
        }
        use redis::IntoConnectionInfo;
        let (host, port) = (
            host.trim_matches(['[', ']']).to_string(),
            port.parse().expect("EngineUrl checked the port"),
        );
        if !self.tls {
            let info = redis::ConnectionAddr::Tcp(host, port)
                .into_connection_info()?
                .set_redis_settings(redis);
            return redis::Client::open(info);
        }
        let info = redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
        .into_connection_info()?
        .set_redis_settings(redis);
        redis::Client::build_with_tls(info, tls_files()?)
    }
}

/// With the system's mutual TLS on, this process's identity (its files as they are now: they
/// are issued again every day, and read again with every new client) and the system CA as the
/// only root; else no client certificate, and the host's roots.
fn tls_files() -> redis::RedisResult<redis::TlsCertificates> {
    use tessera_tls::internal::{CA_ENV, CERT_ENV, KEY_ENV};
    let Ok(cert) = std::env::var(CERT_ENV) else {
        return Ok(redis::TlsCertificates {
            client_tls: None,
            root_cert: None,
        });
    };
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(
                e.kind(),
                format!("cannot read {path}: {e}"),
            ))
        })
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    Ok(redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: read(&cert)?,
            client_key: read(&var(KEY_ENV))?,
        }),
        root_cert: Some(read(&var(CA_ENV))?),
    })
}

/// A system's shared state on one Redis.
pub struct Shared {
    settings: RedisSettings,
    /// The connections, made again after a failure they do not recover from by themselves
    /// (a refused password: a Redis restarted before its users are made again).
    conns: std::sync::RwLock<Arc<Conns>>,
    /// Milliseconds since `epoch` of the last [`Shared::renew`].
    renewed: AtomicU64,
    /// Milliseconds since `epoch` until which Redis is left alone (0: not failing).
    down_until: AtomicU64,
    failing: AtomicBool,
    epoch: Instant,
}

struct Conns {
    /// For the hot path: 100 ms at most.
    fast: ConnectionManager,
    /// For what must get through rather than be quick (revocations): longer timeouts, and
    /// not paused by the hot path's back-off.
    patient: ConnectionManager,
}

impl Conns {
    /// Connections made at first use.
    fn lazy(client: &redis::Client) -> redis::RedisResult<Arc<Self>> {
        let config = |timeout: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(CALL_TIMEOUT * 5)))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(0)
        };
        Ok(Arc::new(Self {
            fast: ConnectionManager::new_lazy_with_config(client.clone(), config(CALL_TIMEOUT))?,
            patient: ConnectionManager::new_lazy_with_config(client.clone(), config(PATIENCE))?,
        }))
    }
}

impl Shared {
    /// Shared state on the Redis `settings` name; connects at first use, and again after
    /// every failure.
    pub fn new(settings: RedisSettings) -> Result<Arc<Self>, String> {
        let client = settings.client().map_err(|e| e.to_string())?;
        let conns = Conns::lazy(&client).map_err(|e| e.to_string())?;
        Ok(Arc::new(Self {
            settings,
            conns: std::sync::RwLock::new(conns),
            renewed: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            epoch: Instant::now(),
        }))
    }

    fn conns(&self) -> Arc<Conns> {
        self.conns.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a failure `e`: new connections, made at next use, from a new client. A lost
    /// connection is mended by the connection manager itself; what it does not mend is a
    /// refused password (a Redis restarted before its users were made again) or a TLS
    /// identity that has since been issued again: so a failure that is not the connection's
    /// loss renews at once, and any failure does once [`RENEW_EVERY`] has passed (the TLS
    /// files read again); never more than once a second, however many calls fail at once.
    fn renew(&self, e: &redis::RedisError) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.renewed.load(Ordering::Relaxed);
        let due = if e.is_io_error() {
            RENEW_EVERY
        } else {
            Duration::from_secs(1)
        };
        if now.saturating_sub(last) < due.as_millis() as u64
            || self
                .renewed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(client) = self.settings.client() else {
            return;
        };
        if let Ok(conns) = Conns::lazy(&client) {
            *self.conns.write().unwrap_or_else(|e| e.into_inner()) = conns;
        }
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// `<prefix>:<name>`.
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.prefix)
    }

    /// Whether Redis may be asked now: it is not failing; or its pause after a failure is
    /// over and this caller is the one that tries it again (the others go on without it until
    /// that one has an answer, so that a Redis that drops packets holds up one request per
    /// pause, not all those in flight).
    pub fn available(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        now >= until
            && self
                .down_until
                .compare_exchange(
                    until,
                    now + BACK_OFF.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Runs one call on a connection, bounded by the call timeout; on failure, notes the
    /// outage. `None` when Redis is paused or the call failed.
    async fn call<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Option<T> {
        if !self.available() {
            return None;
        }
        let mut conn = self.conns().fast.clone();
        match tokio::time::timeout(CALL_TIMEOUT, f(&mut conn)).await {
            Ok(Ok(value)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.settings.redacted(), "redis reachable again");
                }
                self.down_until.store(0, Ordering::Relaxed);
                Some(value)
            }
            Ok(Err(e)) => {
                self.renew(&e);
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(what, "timed out");
                None
            }
        }
    }

    fn failed(&self, what: &str, error: &str) {
        metrics::counter!("tessera_redis_failures_total", "call" => what.to_string()).increment(1);
        let until = self.epoch.elapsed() + BACK_OFF;
        self.down_until
            .store(until.as_millis().max(1) as u64, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(redis = %self.settings.redacted(), call = what, error, "redis unavailable; going on without it");
        }
    }
}
