//! The system's configuration as it changes at run time: `tessera config get|set|history|
//! rollback` and the API behind them (`docs/config.md`).
//!
//! A service's settings come from the manifest (its `env`, handed to each process at start)
//! with the changes made here on top. Each change makes a new version of that service's
//! changes — who, when, which key, old and new value, and every change in force after it — so
//! that any version can be restored (a rollback is a change too). A change is checked before
//! it is taken: an instance of the service parses its settings with it (`POST
//! /status/config/check`, through `operate.rs`), and a value it cannot take is refused with
//! its reason, the running values left alone. The services follow by long-polling
//! `GET /v1/config/{service}?after=<version>`, which answers as soon as a newer version is
//! taken (`tessera::live`).
//!
//! The versions are kept in an append-only file of JSON lines in the control plane's
//! directory (a change is rare, small, and must survive a restart; a torn last line is
//! ignored). Secrets — keys the manifest lists in a service's `secrets`, and keys whose name
//! says so (`PASSWORD`, `SECRET`, `TOKEN`, `KEY`, `CREDENTIAL`, as Spring Boot's actuator
//! reads them) — are never shown to anyone but the service itself, nor written in the log.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera::extract::{Path as PathOf, Query};
use tessera::identity::Principal;
use tessera::{ApiError, Json};

use crate::Registry;
use crate::operate::{Call, Operator};
use crate::policy::Caller;

/// What the manifest says of one service's settings.
#[derive(Clone, Debug, Default)]
pub struct Base {
    /// Its `env`: the values every process starts with.
    pub env: BTreeMap<String, String>,
    /// Keys it marks secret (beside those whose name says so).
    pub secrets: Vec<String>,
}

/// One version of a service's changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Version {
    pub service: String,
    pub version: u64,
    /// Unix milliseconds.
    pub at: i64,
    pub who: String,
    /// `set`, `unset` or `rollback`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    /// For a rollback: the version restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// Every change in force from this version on.
    pub values: BTreeMap<String, String>,
}

impl Version {
    /// A change of `service` by `who`, to be numbered and dated when taken.
    fn draft(service: &str, who: &str, action: &str, values: BTreeMap<String, String>) -> Self {
        Version {
            service: service.to_string(),
            version: 0,
            at: 0,
            who: who.to_string(),
            action: action.to_string(),
            key: None,
            old: None,
            new: None,
            to: None,
            values,
        }
    }
}

/// The system's configuration changes.
#[derive(Clone)]
pub struct Config {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where versions are kept: an append-only file in the state directory, or the
    /// registry's etcd (`durable.rs`).
    store: Store,
    versions: Mutex<BTreeMap<String, Vec<Version>>>,
    /// Told at every version taken (the long polls wait on it).
    changed: tokio::sync::watch::Sender<u64>,
    base: BTreeMap<String, Base>,
    registry: Registry,
    operator: Operator,
    /// Per service, one change at a time: made, checked and written in order.
    changing: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

const FILE: &str = "config.jsonl";

enum Store {
    File(Mutex<std::fs::File>),
    /// A key per version, `config/<service>/<version>`.
    Durable(crate::durable::Durable),
}

/// The longest a long poll waits.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The largest value taken.
const MAX_VALUE_BYTES: usize = 4096;

/// What a secret shows as.
const MASK: &str = "******";

impl Config {
    /// Opens the versions kept in `dir`, for the services in `base` (the manifest's).
    pub fn open(
        dir: &Path,
        base: BTreeMap<String, Base>,
        registry: Registry,
        operator: Operator,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut versions: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        if let Ok(mut text) = std::fs::read_to_string(&path) {
            // A line torn by a crash while it was written (the change was not taken) is cut
            // off, so that the next one starts on a line of its own.
            let whole = text.rfind('\n').map_or(0, |at| at + 1);
            if whole < text.len() {
                tracing::warn!(
                    bytes = text.len() - whole,
                    "the configuration's last line was torn: cut off"
                );
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(whole as u64)?;
                text.truncate(whole);
            }
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Version>(line) {
                    Ok(v) => versions.entry(v.service.clone()).or_default().push(v),
                    // A line torn by a crash while it was written: the change was not taken.
                    Err(e) => {
                        tracing::warn!(error = %e, "a configuration line that does not read is ignored")
                    }
                }
            }
        }
        let file = open_append(&path)?;
        Ok(Self::with(
            Store::File(Mutex::new(file)),
            versions,
            base,
            registry,
            operator,
        ))
    }

    /// Opens the versions kept in `durable` when it is on etcd (the distributed profile), else
    /// in `dir`.
    pub async fn open_in(
        durable: crate::durable::Durable,
        dir: &Path,
        base: BTreeMap<String, Base>,
        registry: Registry,
        operator: Operator,
    ) -> anyhow::Result<Self> {
        if !durable.on_etcd() {
            return Self::open(dir, base, registry, operator);
        }
        let mut versions: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        for record in durable.records("config").await? {
            match serde_json::from_slice::<Version>(&record) {
                Ok(v) => versions.entry(v.service.clone()).or_default().push(v),
                Err(e) => {
                    tracing::warn!(error = %e, "a configuration record that does not read is ignored")
                }
            }
        }
        Ok(Self::with(
            Store::Durable(durable),
            versions,
            base,
            registry,
            operator,
        ))
    }

    fn with(
        store: Store,
        versions: BTreeMap<String, Vec<Version>>,
        base: BTreeMap<String, Base>,
        registry: Registry,
        operator: Operator,
    ) -> Self {
        Config {
            inner: Arc::new(Inner {
                store,
                versions: Mutex::new(versions),
                changed: tokio::sync::watch::channel(0).0,
                base,
                registry,
                operator,
                changing: Mutex::default(),
            }),
        }
    }

    /// The version in force for `service` and its changes.
    fn current(&self, service: &str) -> (u64, BTreeMap<String, String>) {
        let versions = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        versions
            .get(service)
            .and_then(|v| v.last())
            .map(|v| (v.version, v.values.clone()))
            .unwrap_or_default()
    }

    fn base_of(&self, service: &str) -> Result<&Base, ApiError> {
        self.inner
            .base
            .get(service)
            .ok_or_else(|| ApiError::not_found(format!("no service {service} in the manifest")))
    }

    fn is_secret(&self, service: &str, key: &str) -> bool {
        let named = tessera::config::secret_by_name(key);
        named
            || self
                .inner
                .base
                .get(service)
                .is_some_and(|b| b.secrets.iter().any(|s| s == key))
    }

    /// A version's old and new values as anyone but its service may see them.
    fn masked(&self, v: &Version) -> (Option<String>, Option<String>) {
        let key = v.key.as_deref().unwrap_or("");
        let mask = |x: &Option<String>| x.as_deref().map(|x| self.shown(&v.service, key, x, false));
        (mask(&v.old), mask(&v.new))
    }

    /// `value` as `caller` may see it.
    fn shown(&self, service: &str, key: &str, value: &str, clear: bool) -> String {
        if clear || !self.is_secret(service, key) {
            value.to_string()
        } else {
            MASK.to_string()
        }
    }

    /// Takes `service`'s next version, as `make` makes it from the version in force and its
    /// history (both read under the service's lock, so that two changes at once cannot undo
    /// each other), once an instance has checked it.
    async fn change(
        &self,
        caller: &Caller,
        service: &str,
        make: impl FnOnce(&Current<'_>) -> Result<Version, ApiError>,
    ) -> Result<Version, ApiError> {
        let lock = self.lock_of(service);
        let _one = lock.lock().await;
        let (number, values) = self.current(service);
        let mut version = {
            let versions = self
                .inner
                .versions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let history = versions.get(service).map(Vec::as_slice).unwrap_or_default();
            make(&Current {
                version: number,
                values: &values,
                history,
            })?
        };
        let changed: Vec<&String> = values
            .keys()
            .chain(version.values.keys())
            .filter(|k| values.get(*k) != version.values.get(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        self.check(caller, service, &version.values, &changed)
            .await?;
        version.version = number + 1;
        version.at = tessera::trace::unix_now_ms();
        let mut line = serde_json::to_vec(&version).map_err(ApiError::internal)?;
        line.push(b'\n');
        let kept: anyhow::Result<()> = match &self.inner.store {
            Store::File(_) => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || match &inner.store {
                    Store::File(file) => append(file, &line),
                    Store::Durable(_) => Ok(()),
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|written| Ok(written?))
            }
            Store::Durable(durable) => {
                let key = format!("{service}/{:020}", version.version);
                durable.append("config", &key, line).await
            }
        };
        kept.map_err(|e| {
            tracing::error!(error = %e, "cannot write a configuration change");
            ApiError::unavailable("the change could not be kept; nothing changed")
        })?;
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_string())
            .or_default()
            .push(version.clone());
        self.inner.changed.send_modify(|n| *n += 1);
        let (old, new) = self.masked(&version);
        // A change to a running system: audited in the log, secrets masked.
        tracing::info!(
            target: "audit",
            who = %caller.principal,
            service,
            version = version.version,
            action = %version.action,
            key = version.key.as_deref().unwrap_or("-"),
            old = old.as_deref().unwrap_or("-"),
            new = new.as_deref().unwrap_or("-"),
            to = version.to.unwrap_or(0),
            "config change"
        );
        Ok(version)
    }

    /// The lock under which `service`'s versions are made: one per service, so that an
    /// instance slow to answer a check holds up its own service's changes only.
    fn lock_of(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .changing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    /// Asks a running instance of `service` whether it takes `values`, of which `changed`
    /// are new.
    async fn check(
        &self,
        caller: &Caller,
        service: &str,
        values: &BTreeMap<String, String>,
        changed: &[&String],
    ) -> Result<(), ApiError> {
        let instance = self
            .inner
            .registry
            .catalog()
            .services
            .remove(service)
            .and_then(|instances| instances.into_iter().next())
            .ok_or_else(|| {
                ApiError::conflict(
                    "not_running",
                    format!("no instance of {service} is running to check the change against: start it first"),
                )
            })?;
        let body = json!({ "values": values, "changed": changed });
        let call = Call::new(reqwest::Method::POST, "/status/config/check").with_body(&body);
        let (status, answer) = self.inner.operator.call(caller, &instance, call).await?;
        match status {
            StatusCode::OK => Ok(()),
            StatusCode::BAD_REQUEST => {
                let why = answer["message"]
                    .as_str()
                    .unwrap_or("the service does not take it");
                Err(ApiError::bad_request(
                    "invalid_value",
                    self.redacted(service, why, values),
                ))
            }
            other => {
                tracing::warn!(status = %other, answer = %answer, instance = %instance.id, "a service could not check a configuration change");
                Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "check_failed",
                    format!("{} could not check the change ({other})", instance.id),
                ))
            }
        }
    }

    /// `message` with every secret value among `values` masked: a service's reason may quote
    /// the value it could not read.
    fn redacted(&self, service: &str, message: &str, values: &BTreeMap<String, String>) -> String {
        let mut out = message.to_string();
        for (k, v) in values {
            if !v.is_empty() && self.is_secret(service, k) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }

    /// `service`'s configuration as `caller` may see it.
    fn view(&self, service: &str, caller: &Caller) -> Result<Value, ApiError> {
        let base = self.base_of(service)?;
        let clear = caller.principal.service() == Some(service);
        let (version, values) = self.current(service);
        let show = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.clone(), self.shown(service, k, v, clear)))
                .collect()
        };
        Ok(json!({
            "service": service,
            "version": version,
            "changes": show(&values),
            "manifest": show(&base.env),
        }))
    }

    fn history(&self, service: &str) -> Vec<Value> {
        let versions = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        versions
            .get(service)
            .map(|vs| {
                vs.iter()
                    .rev()
                    .map(|v| {
                        let (old, new) = self.masked(v);
                        json!({
                            "version": v.version,
                            "at": v.at,
                            "who": v.who,
                            "action": v.action,
                            "key": v.key,
                            "old": old,
                            "new": new,
                            "to": v.to,
                            "keys": v.values.keys().collect::<Vec<_>>(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Appends `line` and syncs it; on a failure, cuts the file back to where it was (no torn line
/// for the next one to follow).
fn append(file: &Mutex<std::fs::File>, line: &[u8]) -> std::io::Result<()> {
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    let before = file.metadata()?.len();
    let written = file.write_all(line).and_then(|()| file.sync_data());
    if written.is_err() {
        let _ = file.set_len(before);
    }
    written
}

/// The version in force when a change is made.
struct Current<'a> {
    version: u64,
    values: &'a BTreeMap<String, String>,
    history: &'a [Version],
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Secrets are in it.
        options.mode(0o600);
    }
    options.open(path)
}

/// The configuration's routes (behind the credential check).
pub fn routes(config: Config) -> Router {
    Router::new()
        .route("/v1/config", get(services))
        .route("/v1/config/{service}", get(read))
        .route("/v1/config/{service}/history", get(history))
        .route("/v1/config/{service}/rollback", post(rollback))
        .route("/v1/config/{service}/{key}", put(set).delete(unset))
        .with_state(config)
}

/// Who may read a service's configuration: the service itself (in clear), or an operator.
fn may_read(caller: &Caller, service: &str) -> Result<(), ApiError> {
    if caller.principal.service() == Some(service) || caller.principal.is_operator() {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} may not read {service}'s configuration",
        caller.principal
    )))
}

fn may_change(caller: &Caller) -> Result<(), ApiError> {
    if caller.principal == Principal::Admin {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} may not change the configuration: that is for admins",
        caller.principal
    )))
}

/// `GET /v1/config`: every service's version in force.
async fn services(State(config): State<Config>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.may_inspect()?;
    let services: Vec<Value> = config
        .inner
        .base
        .keys()
        .map(|s| {
            let (version, values) = config.current(s);
            json!({ "service": s, "version": version, "changed": values.len() })
        })
        .collect();
    Ok(Json(json!({ "services": services })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Watch {
    /// Answer once a version newer than this is taken (or `wait` passes).
    after: Option<u64>,
    /// Seconds to wait at most (30).
    wait: Option<u64>,
}

/// `GET /v1/config/{service}[?after=N&wait=S]`: its changes in force and its manifest's values.
async fn read(
    State(config): State<Config>,
    caller: Caller,
    PathOf(service): PathOf<String>,
    Query(watch): Query<Watch>,
) -> Result<Json<Value>, ApiError> {
    may_read(&caller, &service)?;
    config.base_of(&service)?;
    if let Some(after) = watch.after {
        let wait = Duration::from_secs(watch.wait.unwrap_or(MAX_WAIT.as_secs())).min(MAX_WAIT);
        let mut changed = config.inner.changed.subscribe();
        let newer = async {
            while config.current(&service).0 <= after {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(wait, newer).await;
    }
    Ok(Json(config.view(&service, &caller)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewValue {
    value: String,
}

/// `PUT /v1/config/{service}/{key}` `{"value": "…"}`: changes one setting, once an instance
/// has checked it.
async fn set(
    State(config): State<Config>,
    caller: Caller,
    PathOf((service, key)): PathOf<(String, String)>,
    Json(new): Json<NewValue>,
) -> Result<Response, ApiError> {
    may_change(&caller)?;
    let base = config.base_of(&service)?.clone();
    valid_key(&key)?;
    if new.value.len() > MAX_VALUE_BYTES || new.value.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("a value is at most {MAX_VALUE_BYTES} bytes, without NUL"),
        ));
    }
    let who = caller.principal.to_string();
    let taken = config
        .change(&caller, &service, |now| {
            let mut values = now.values.clone();
            let old = values.get(&key).or_else(|| base.env.get(&key)).cloned();
            values.insert(key.clone(), new.value.clone());
            Ok(Version {
                key: Some(key.clone()),
                old,
                new: Some(new.value.clone()),
                ..Version::draft(&service, &who, "set", values)
            })
        })
        .await?;
    Ok(answer(&config, &taken))
}

/// `DELETE /v1/config/{service}/{key}`: the manifest's value again.
async fn unset(
    State(config): State<Config>,
    caller: Caller,
    PathOf((service, key)): PathOf<(String, String)>,
) -> Result<Response, ApiError> {
    may_change(&caller)?;
    let base = config.base_of(&service)?.clone();
    valid_key(&key)?;
    let who = caller.principal.to_string();
    let taken = config
        .change(&caller, &service, |now| {
            let mut values = now.values.clone();
            let Some(old) = values.remove(&key) else {
                return Err(ApiError::not_found(format!(
                    "{key} of {service} was not changed"
                )));
            };
            Ok(Version {
                key: Some(key.clone()),
                old: Some(old),
                new: base.env.get(&key).cloned(),
                ..Version::draft(&service, &who, "unset", values)
            })
        })
        .await?;
    Ok(answer(&config, &taken))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    /// The version to restore; the one before the latest when absent.
    version: Option<u64>,
}

/// `POST /v1/config/{service}/rollback` `{"version": N}`: the changes in force at version N
/// (0: none), as a new version.
async fn rollback(
    State(config): State<Config>,
    caller: Caller,
    PathOf(service): PathOf<String>,
    Json(to): Json<Rollback>,
) -> Result<Response, ApiError> {
    may_change(&caller)?;
    config.base_of(&service)?;
    let who = caller.principal.to_string();
    let taken = config
        .change(&caller, &service, |now| {
            let current = now.version;
            if current == 0 {
                return Err(ApiError::conflict(
                    "nothing_to_roll_back",
                    format!("{service}'s configuration was never changed"),
                ));
            }
            let target = to.version.unwrap_or(current - 1);
            if target >= current {
                return Err(ApiError::bad_request(
                    "invalid_version",
                    format!("version {target} is not older than the one in force ({current})"),
                ));
            }
            let values = if target == 0 {
                BTreeMap::new()
            } else {
                now.history
                    .iter()
                    .find(|v| v.version == target)
                    .map(|v| v.values.clone())
                    .ok_or_else(|| {
                        ApiError::not_found(format!("no version {target} of {service}"))
                    })?
            };
            Ok(Version {
                to: Some(target),
                ..Version::draft(&service, &who, "rollback", values)
            })
        })
        .await?;
    Ok(answer(&config, &taken))
}

/// `GET /v1/config/{service}/history`: its versions, newest first (secrets masked).
async fn history(
    State(config): State<Config>,
    caller: Caller,
    PathOf(service): PathOf<String>,
) -> Result<Json<Value>, ApiError> {
    caller.may_inspect()?;
    config.base_of(&service)?;
    Ok(Json(
        json!({ "service": service, "versions": config.history(&service) }),
    ))
}

fn answer(config: &Config, v: &Version) -> Response {
    let (old, new) = config.masked(v);
    (
        StatusCode::OK,
        axum::Json(json!({
            "service": v.service,
            "version": v.version,
            "action": v.action,
            "key": v.key,
            "old": old,
            "new": new,
            "to": v.to,
        })),
    )
        .into_response()
}

/// A setting's name: upper-case letters, digits and `_`, as environment variables are; the
/// platform's own (`TESSERA_*`) are the runner's, not changed at run time.
fn valid_key(key: &str) -> Result<(), ApiError> {
    let form = !key.is_empty()
        && key.len() <= 128
        && key.as_bytes()[0].is_ascii_uppercase()
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !form {
        return Err(ApiError::bad_request(
            "invalid_key",
            "a setting's name is upper-case letters, digits and _ (at most 128), starting with a letter",
        ));
    }
    if key.starts_with("TESSERA_") {
        return Err(ApiError::bad_request(
            "invalid_key",
            "TESSERA_* settings are the platform's, set by the runner at start",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_are_read_back_after_a_restart_and_a_torn_line_is_ignored() {
        let dir = std::env::temp_dir().join(format!("tessera-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = |version: u64, value: &str| {
            serde_json::to_string(&Version {
                service: "pay".into(),
                version,
                at: 1,
                who: "admin".into(),
                action: "set".into(),
                key: Some("LIMIT".into()),
                old: None,
                new: Some(value.into()),
                to: None,
                values: BTreeMap::from([("LIMIT".to_string(), value.to_string())]),
            })
            .unwrap()
        };
        let text = format!(
            "{}\n{}\n{{\"service\":\"pay\",\"vers",
            line(1, "5"),
            line(2, "7")
        );
        std::fs::write(dir.join(FILE), text).unwrap();
        let base = BTreeMap::from([("pay".to_string(), Base::default())]);
        let open =
            || Config::open(&dir, base.clone(), Registry::default(), Operator::new(None)).unwrap();
        let config = open();
        let (version, values) = config.current("pay");
        assert_eq!((version, values["LIMIT"].as_str()), (2, "7"));
        assert_eq!(config.history("pay").len(), 2);
        assert_eq!(config.current("other"), (0, BTreeMap::new()));
        // The torn tail is cut: the next version starts on a line of its own and reads back.
        let Store::File(file) = &config.inner.store else {
            unreachable!("opened in a directory")
        };
        append(file, format!("{}\n", line(3, "9")).as_bytes()).unwrap();
        drop(config);
        let again = open();
        assert_eq!(again.current("pay").0, 3);
        assert_eq!(again.history("pay").len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_are_masked_by_name_or_by_the_manifest() {
        let base = BTreeMap::from([(
            "pay".to_string(),
            Base {
                env: BTreeMap::new(),
                secrets: vec!["SMTP_LOGIN".into()],
            },
        )]);
        let dir = std::env::temp_dir().join(format!("tessera-config-{}", uuid::Uuid::new_v4()));
        let config = Config::open(&dir, base, Registry::default(), Operator::new(None)).unwrap();
        assert_eq!(config.shown("pay", "DB_PASSWORD", "x", false), MASK);
        assert_eq!(config.shown("pay", "SMTP_LOGIN", "x", false), MASK);
        assert_eq!(config.shown("pay", "SMTP_LOGIN", "x", true), "x");
        assert_eq!(config.shown("pay", "LIMIT", "x", false), "x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_plain_non_platform_keys_are_taken() {
        assert!(valid_key("PROVIDER_DECLINE_OVER").is_ok());
        assert!(valid_key("A1").is_ok());
        for bad in [
            "",
            "lower",
            "1ABC",
            "A-B",
            "A B",
            "TESSERA_LISTEN",
            &"A".repeat(129),
        ] {
            assert!(valid_key(bad).is_err(), "{bad:?}");
        }
    }
}
