//! Typed configuration, read once at start-up.
//!
//! The runner (`tessera up`) hands every process its configuration as environment variables
//! (`TESSERA_*` for the platform, anything else the manifest's `env` table sets). Everything is
//! parsed and validated here, before the service does anything, and a bad value stops the
//! process with a message that names the key. Tests build a [`Settings`] from a map instead of
//! touching the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tessera_events::{PRODUCERS_ENV, Producers};
use tessera_identity::{CREDENTIAL_ENV, Credential};

/// A configuration key that is missing or does not parse.
#[derive(Debug, thiserror::Error)]
#[error("config key {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Whether a setting is a secret by its name (it holds `PASSWORD`, `SECRET`, `TOKEN`, `KEY`
/// or `CREDENTIAL`, as Spring Boot's actuator reads them): its value is never shown.
pub fn secret_by_name(key: &str) -> bool {
    ["PASSWORD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"]
        .iter()
        .any(|word| key.contains(word))
}

/// A flat map of configuration values with typed, key-naming accessors. It remembers which
/// keys were asked for (`tessera config` refuses to change, while the service runs, a key it
/// read only at start).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    vars: HashMap<String, String>,
    read: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Settings {
    /// The process environment.
    pub fn from_env() -> Self {
        Self {
            vars: std::env::vars().collect(),
            read: Default::default(),
        }
    }

    pub fn from_map<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            read: Default::default(),
        }
    }

    /// Every value.
    pub fn vars(&self) -> &HashMap<String, String> {
        &self.vars
    }

    /// The keys asked for so far, through this value or its clones.
    pub fn keys_read(&self) -> std::collections::BTreeSet<String> {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn raw(&self, key: &str) -> Option<&str> {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A value that must be present.
    pub fn require<T: FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(key) {
            None => Err(ConfigError::new(key, "is required but not set")),
            Some(v) => parse(key, v),
        }
    }

    /// A value with a default when absent; a present but malformed value is still an error.
    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => parse(key, v),
        }
    }

    /// A duration given in milliseconds.
    pub fn millis_or(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: u64 = self.get_or(key, default.as_millis() as u64)?;
        Ok(Duration::from_millis(ms))
    }
}

fn parse<T: FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| ConfigError::new(key, format!("cannot parse {value:?}: {e}")))
}

/// What every Tessera service is told by its runner.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// `TESSERA_SERVICE`: the name it registers under (and routes point at).
    pub service: String,
    /// `TESSERA_INSTANCE`: unique per process; defaults to `<service>-<random>`.
    pub instance: String,
    /// `TESSERA_VERSION`: reported to the registry.
    pub version: String,
    /// `TESSERA_LISTEN`: where to listen; port 0 picks a free port, which is what is registered.
    pub listen: SocketAddr,
    /// `TESSERA_ADMIN_LISTEN`: where `/metrics` and `/status/*` are served; a free loopback port
    /// by default, registered as the instance's `admin` metadata.
    pub admin_listen: SocketAddr,
    /// `TESSERA_CONTROL_URL`: the control plane. Unset runs without a registry (tests, one-offs).
    pub control_url: Option<String>,
    /// `TESSERA_BUS_URL`: the event log; defaults to the control plane's embedded log. A
    /// `nats://` URL puts events on NATS JetStream (`docs/scale-out.md`).
    pub bus_url: Option<String>,
    /// `TESSERA_REGISTRY_URL`: the registry on etcd (`etcd://…`, `docs/scale-out.md`); unset,
    /// the control plane's.
    pub registry_url: Option<String>,
    /// `TESSERA_SHARED_URL`: the Redis the system's processes share (`redis://…`): where
    /// [`crate::Context::cache`] keeps a cache every replica shares.
    pub shared_url: Option<String>,
    /// `TESSERA_SYSTEM`: the system's name, which is also the passport audience.
    pub system: String,
    /// `TESSERA_DATA_DIR`: where embedded databases live.
    pub data_dir: PathBuf,
    /// `TESSERA_DATABASE_URL`: overrides the embedded default `sqlite://<data_dir>/<service>.db`.
    pub database_url: Option<String>,
    /// `TESSERA_DATABASE_REPLICAS`: read replicas of that database (PostgreSQL URLs, separated
    /// by commas), which serve the reads sent through `db.read()` (`docs/databases.md`).
    pub database_replicas: Vec<String>,
    /// `TESSERA_PASSPORT_KEYS`: `kid:base64secret[,kid:base64secret...]`, the first one signs.
    pub passport_keys: String,
    /// `TESSERA_HEARTBEAT_MS`: how often to heartbeat the registry.
    pub heartbeat: Duration,
    /// `TESSERA_TTL_MS`: how long the registry keeps an instance without a heartbeat.
    pub ttl: Duration,
    /// `TESSERA_CALL_TIMEOUT_MS`: default timeout of a call to another service.
    pub call_timeout: Duration,
    /// `TESSERA_SHUTDOWN_GRACE_MS`: how long in-flight requests may take after SIGTERM.
    pub shutdown_grace: Duration,
    /// `TESSERA_MAX_BODY_BYTES`: the largest request body a handler accepts.
    pub max_body_bytes: usize,
    /// `TESSERA_FAULT_RATE`: the share of requests (0 to 1) answered `503 fault_injected`
    /// instead of handled: chaos for a test or a rehearsal (a rollout's failing version,
    /// `docs/rollouts.md`); 0 by default.
    pub fault_rate: f64,
    /// `TESSERA_CREDENTIAL`: what proves to the control plane that this process is this
    /// service (`docs/security.md`); required with a control plane or a bus.
    pub credential: Option<Credential>,
    /// `TESSERA_PRODUCERS`: which service publishes to which topic, as the manifest declares
    /// it; consumers refuse events from anyone else. Unset: the log's check alone.
    pub producers: Producers,
}

impl ServiceConfig {
    pub fn from_settings(s: &Settings, default_service: &str) -> Result<Self, ConfigError> {
        let service: String = s.get_or("TESSERA_SERVICE", default_service.to_string())?;
        if service.is_empty()
            || !service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                "TESSERA_SERVICE",
                "must be letters, digits, '-' or '_'",
            ));
        }
        let instance = s.get_or(
            "TESSERA_INSTANCE",
            format!(
                "{service}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        )?;
        let heartbeat = s.millis_or("TESSERA_HEARTBEAT_MS", Duration::from_millis(1000))?;
        let ttl = s.millis_or("TESSERA_TTL_MS", Duration::from_millis(3000))?;
        if ttl <= heartbeat {
            return Err(ConfigError::new(
                "TESSERA_TTL_MS",
                "must be longer than TESSERA_HEARTBEAT_MS",
            ));
        }
        let credential = match s.raw(CREDENTIAL_ENV) {
            None => None,
            Some(v) => Some(
                Credential::parse(v.trim())
                    .map_err(|e| ConfigError::new(CREDENTIAL_ENV, e.to_string()))?,
            ),
        };
        let control_url = s
            .raw("TESSERA_CONTROL_URL")
            .map(|u| u.trim_end_matches('/').to_string());
        let bus_url = s
            .raw("TESSERA_BUS_URL")
            .or(s.raw("TESSERA_CONTROL_URL"))
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(url) = bus_url
            .as_deref()
            .filter(|u| crate::events::NatsBus::handles(u))
        {
            crate::events::NatsSettings::parse(url)
                .map_err(|e| ConfigError::new("TESSERA_BUS_URL", e))?;
        }
        let shared_url = s.raw("TESSERA_SHARED_URL").map(str::to_string);
        if let Some(url) = &shared_url {
            tessera_shared::RedisSettings::parse(url)
                .map_err(|e| ConfigError::new("TESSERA_SHARED_URL", e))?;
        }
        let registry_url = s.raw("TESSERA_REGISTRY_URL").map(str::to_string);
        if let Some(url) = &registry_url {
            tessera_registry::etcd::EtcdSettings::parse(url)
                .map_err(|e| ConfigError::new("TESSERA_REGISTRY_URL", e))?;
            if control_url.is_none() {
                return Err(ConfigError::new(
                    "TESSERA_REGISTRY_URL",
                    "needs TESSERA_CONTROL_URL too (the control plane still checks credentials)",
                ));
            }
        }
        match &credential {
            None if control_url.is_some() || bus_url.is_some() => {
                return Err(ConfigError::new(
                    CREDENTIAL_ENV,
                    "is required with a control plane (tessera up sets it; `tessera credential service:<name>` prints one)",
                ));
            }
            Some(c) if c.principal().service() != Some(service.as_str()) => {
                return Err(ConfigError::new(
                    CREDENTIAL_ENV,
                    format!("is {}'s, not service:{service}'s", c.principal()),
                ));
            }
            _ => {}
        }
        let producers = match s.raw(PRODUCERS_ENV) {
            None => Producers::unchecked(),
            Some(spec) => Producers::parse(spec).map_err(|e| ConfigError::new(PRODUCERS_ENV, e))?,
        };
        Ok(Self {
            instance,
            version: s.get_or("TESSERA_VERSION", env!("CARGO_PKG_VERSION").to_string())?,
            listen: s.get_or("TESSERA_LISTEN", SocketAddr::from(([127, 0, 0, 1], 0)))?,
            admin_listen: s.get_or(
                "TESSERA_ADMIN_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 0)),
            )?,
            control_url,
            bus_url,
            registry_url,
            shared_url,
            system: s.get_or("TESSERA_SYSTEM", "tessera".to_string())?,
            data_dir: s.get_or("TESSERA_DATA_DIR", PathBuf::from(".tessera/data"))?,
            database_url: s.raw("TESSERA_DATABASE_URL").map(str::to_string),
            database_replicas: s
                .raw("TESSERA_DATABASE_REPLICAS")
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            passport_keys: s.require("TESSERA_PASSPORT_KEYS")?,
            heartbeat,
            ttl,
            call_timeout: s.millis_or("TESSERA_CALL_TIMEOUT_MS", Duration::from_secs(10))?,
            shutdown_grace: s.millis_or("TESSERA_SHUTDOWN_GRACE_MS", Duration::from_secs(10))?,
            max_body_bytes: s.get_or("TESSERA_MAX_BODY_BYTES", 1024 * 1024)?,
            fault_rate: {
                let rate: f64 = s.get_or("TESSERA_FAULT_RATE", 0.0)?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(ConfigError::new(
                        "TESSERA_FAULT_RATE",
                        "a share from 0 to 1",
                    ));
                }
                rate
            },
            credential,
            producers,
            service,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_key() {
        let s = Settings::from_map([
            ("TESSERA_PASSPORT_KEYS", "k:AAAA"),
            ("TESSERA_LISTEN", "nope"),
        ]);
        let err = ServiceConfig::from_settings(&s, "svc").unwrap_err();
        assert_eq!(err.key, "TESSERA_LISTEN");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn missing_keys_are_required() {
        let err = ServiceConfig::from_settings(&Settings::default(), "svc").unwrap_err();
        assert_eq!(err.key, "TESSERA_PASSPORT_KEYS");
    }

    #[test]
    fn defaults_fill_the_rest() {
        let s = Settings::from_map([("TESSERA_PASSPORT_KEYS", "k:AAAA")]);
        let c = ServiceConfig::from_settings(&s, "catalog").unwrap();
        assert_eq!(c.service, "catalog");
        assert!(c.instance.starts_with("catalog-"));
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:0");
        assert!(c.control_url.is_none());
    }

    #[test]
    fn ttl_must_outlast_heartbeat() {
        let s = Settings::from_map([
            ("TESSERA_PASSPORT_KEYS", "k:AAAA"),
            ("TESSERA_HEARTBEAT_MS", "2000"),
            ("TESSERA_TTL_MS", "1000"),
        ]);
        assert_eq!(
            ServiceConfig::from_settings(&s, "x").unwrap_err().key,
            "TESSERA_TTL_MS"
        );
    }
}
