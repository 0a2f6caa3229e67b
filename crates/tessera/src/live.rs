//! Settings that change while the service runs (`tessera config set`, `docs/config.md`).
//!
//! A service declares its settings as today, a typed struct parsed from [`Settings`] by a
//! function of its own, but asks for them through [`crate::Context::live`]: it gets a
//! [`Live`] handle whose [`Live::get`] is the current snapshot (an atomically swapped
//! `Arc`: a read is a load, never a lock), and may register a hook to act on a change.
//!
//! The values come from the manifest (the process's environment) with the control plane's
//! changes on top. A watcher (`watch.rs`) long-polls the control plane for this service's
//! next version; when one comes, every declared settings struct is parsed again from the new
//! values, all of them first, and only if every one parses are they swapped in (and their
//! hooks run): a value that does not parse leaves every running value as it was, and says
//! which key. The control plane asks a running instance the same question before it takes a
//! change ([`Declared::check`], `POST /status/config/check`), so a bad value is refused to
//! the person who typed it rather than found by the instances.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, Settings};

/// A settings struct that follows the system's configuration.
pub struct Live<T> {
    current: Arc<ArcSwap<T>>,
    hooks: Arc<Mutex<Vec<Hook<T>>>>,
}

type Hook<T> = Box<dyn Fn(&T, &T) + Send + Sync>;

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live {
            current: self.current.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Live<T> {
    /// A value that never changes (tests, tools).
    pub fn fixed(value: T) -> Self {
        Live {
            current: Arc::new(ArcSwap::from_pointee(value)),
            hooks: Arc::default(),
        }
    }

    /// The current settings.
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Runs `hook(old, new)` after each change is applied (on the watcher's task: keep it short,
    /// spawn what takes long).
    pub fn on_change(&self, hook: impl Fn(&T, &T) + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    fn swap(&self, new: T) {
        let old = self.current.swap(Arc::new(new));
        let new = self.current.load();
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(&old, &new);
        }
    }
}

/// A change parsed and waiting to be applied.
type Staged = Box<dyn FnOnce() + Send>;

/// Parses settings into a change to apply, or says which key is wrong.
type Parser = Box<dyn Fn(&Settings) -> Result<Staged, ConfigError> + Send + Sync>;

/// Every settings struct this process declared, and the values they were last parsed from.
#[derive(Clone, Default)]
pub struct Declared {
    inner: Arc<Mutex<DeclaredInner>>,
}

#[derive(Default)]
struct DeclaredInner {
    parsers: Vec<Parser>,
    /// The process's own values (the manifest's, through the environment).
    base: BTreeMap<String, String>,
    /// The control plane's changes on top, and their version (0: none yet).
    overrides: BTreeMap<String, String>,
    version: u64,
    /// The last version that did not apply here, and why.
    refused: Option<(u64, String)>,
    /// The newest version seen, applied or not.
    seen: u64,
}

/// What `/status/config` says of the running values.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Applied {
    /// The version whose changes are in force.
    pub version: u64,
    /// The keys they change.
    pub keys: Vec<String>,
    /// A newer version that did not apply here, and why.
    pub refused: Option<(u64, String)>,
}

impl Declared {
    /// Starts from `base` (the process environment) with `overrides` at `version`.
    pub fn new(base: &Settings, overrides: BTreeMap<String, String>, version: u64) -> Self {
        let declared = Declared::default();
        {
            let mut inner = declared.lock();
            inner.base = base.vars().clone().into_iter().collect();
            inner.overrides = overrides;
            inner.version = version;
            inner.seen = version;
        }
        declared
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeclaredInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The values in force: the base with the overrides on top.
    pub fn settings(&self) -> Settings {
        let inner = self.lock();
        merged(&inner.base, &inner.overrides)
    }

    /// Declares a settings struct: parsed now (an error stops the service's start, naming the
    /// key), and again at every change.
    pub fn declare<T: Send + Sync + 'static>(
        &self,
        parse: impl Fn(&Settings) -> Result<T, ConfigError> + Send + Sync + 'static,
    ) -> Result<Live<T>, ConfigError> {
        let live = Live::fixed(parse(&self.settings())?);
        let target = live.clone();
        let parser: Parser = Box::new(move |settings| {
            let value = parse(settings)?;
            let target = target.clone();
            Ok(Box::new(move || target.swap(value)))
        });
        self.lock().parsers.push(parser);
        Ok(live)
    }

    /// Whether `overrides` would be taken: every declared struct parses from them.
    pub fn check(&self, overrides: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let inner = self.lock();
        let settings = merged(&inner.base, overrides);
        for parse in &inner.parsers {
            drop(parse(&settings)?);
        }
        Ok(())
    }

    /// Applies `overrides` at `version`: all or nothing. A version not newer than the one in
    /// force is ignored (the watcher may see one twice).
    pub fn apply(
        &self,
        overrides: BTreeMap<String, String>,
        version: u64,
    ) -> Result<bool, ConfigError> {
        let mut inner = self.lock();
        if version <= inner.version {
            return Ok(false);
        }
        let settings = merged(&inner.base, &overrides);
        let staged = inner
            .parsers
            .iter()
            .map(|parse| parse(&settings))
            .collect::<Result<Vec<_>, _>>()?;
        inner.overrides = overrides;
        inner.version = version;
        inner.seen = inner.seen.max(version);
        drop(inner);
        for apply in staged {
            apply();
        }
        Ok(true)
    }

    /// Marks `version` seen without applying it (it did not parse here).
    fn skip(&self, version: u64, why: &ConfigError) {
        let mut inner = self.lock();
        inner.refused = Some((version, why.to_string()));
        inner.seen = inner.seen.max(version);
    }

    /// The newest version seen.
    fn seen(&self) -> u64 {
        self.lock().seen
    }

    /// The version in force and the keys the control plane changed.
    pub fn applied(&self) -> Applied {
        let inner = self.lock();
        Applied {
            version: inner.version,
            keys: inner.overrides.keys().cloned().collect(),
            refused: inner.refused.clone().filter(|(v, _)| *v > inner.version),
        }
    }
}

/// What the control plane answers about a service's configuration (`GET /v1/config/{service}`).
#[derive(serde::Deserialize)]
struct Answer {
    version: u64,
    changes: BTreeMap<String, String>,
}

/// Follows the control plane's changes of `service`'s configuration.
pub(crate) struct Watcher {
    http: reqwest::Client,
    url: String,
}

impl Watcher {
    pub(crate) fn new(
        control_url: &str,
        credential: &tessera_identity::Credential,
        service: &str,
    ) -> Self {
        Watcher {
            http: tessera_registry::control_http(credential),
            url: format!(
                "{}/v1/config/{service}",
                tessera_registry::control_base(control_url)
            ),
        }
    }

    async fn get(&self, after: Option<u64>) -> Result<Answer, String> {
        let mut request = self.http.get(&self.url).timeout(match after {
            Some(_) => std::time::Duration::from_secs(40),
            None => std::time::Duration::from_secs(3),
        });
        if let Some(after) = after {
            request = request.query(&[("after", after), ("wait", 25)]);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the control plane answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// The changes in force now, and their version: none when the control plane does not
    /// answer (the manifest's values then, and [`Watcher::follow`] brings the changes once it
    /// does).
    pub(crate) async fn first(&self) -> (BTreeMap<String, String>, u64) {
        match self.get(None).await {
            Ok(answer) => (answer.changes, answer.version),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the configuration's changes at start; going on with the manifest's values");
                (BTreeMap::new(), 0)
            }
        }
    }

    /// Applies each new version as it is taken, until the process ends.
    pub(crate) async fn follow(self, declared: Declared) {
        let mut failing = false;
        loop {
            let after = declared.seen();
            match self.get(Some(after)).await {
                Ok(answer) if answer.version > after => {
                    failing = false;
                    match declared.apply(answer.changes, answer.version) {
                        Ok(_) => {
                            metrics::counter!("tessera_config_applied_total").increment(1);
                            tracing::info!(version = answer.version, "configuration changed");
                        }
                        Err(e) => {
                            // Checked by an instance before it was taken, so a build that
                            // reads it otherwise: the running values stay, and the next
                            // version is awaited.
                            metrics::counter!("tessera_config_refused_total").increment(1);
                            tracing::error!(version = answer.version, key = %e.key, error = %e.message, "a configuration change does not apply here; the running values stay");
                            declared.skip(answer.version, &e);
                        }
                    }
                }
                Ok(_) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot follow the configuration; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}

fn merged(base: &BTreeMap<String, String>, overrides: &BTreeMap<String, String>) -> Settings {
    Settings::from_map(
        base.iter()
            .chain(overrides.iter())
            .map(|(k, v)| (k.clone(), v.clone())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Limits {
        decline_over: i64,
        latency_ms: u64,
    }

    fn limits(s: &Settings) -> Result<Limits, ConfigError> {
        let limits = Limits {
            decline_over: s.get_or("DECLINE_OVER", 1000)?,
            latency_ms: s.get_or("LATENCY_MS", 5)?,
        };
        if limits.decline_over < 0 {
            return Err(ConfigError::new("DECLINE_OVER", "must not be negative"));
        }
        Ok(limits)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_change_is_applied_whole_or_not_at_all_and_hooks_see_both_values() {
        let base = Settings::from_map([("LATENCY_MS", "7")]);
        let declared = Declared::new(&base, BTreeMap::new(), 0);
        let live = declared.declare(limits).unwrap();
        let other = declared
            .declare(|s| s.get_or::<bool>("HANG", false))
            .unwrap();
        assert_eq!(
            *live.get(),
            Limits {
                decline_over: 1000,
                latency_ms: 7
            }
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        live.on_change(move |old, new| {
            log.lock()
                .unwrap()
                .push((old.decline_over, new.decline_over))
        });

        assert!(declared.apply(map(&[("DECLINE_OVER", "500")]), 1).unwrap());
        assert_eq!(
            *live.get(),
            Limits {
                decline_over: 500,
                latency_ms: 7
            }
        );
        assert_eq!(*seen.lock().unwrap(), [(1000, 500)]);

        // One bad value anywhere: nothing changes, and the key is named.
        let err = declared
            .apply(map(&[("DECLINE_OVER", "100"), ("HANG", "maybe")]), 2)
            .unwrap_err();
        assert_eq!(err.key, "HANG");
        assert_eq!(live.get().decline_over, 500);
        assert!(!*other.get());
        assert_eq!(declared.applied().version, 1);
        let err = declared.check(&map(&[("DECLINE_OVER", "-1")])).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.message.as_str()),
            ("DECLINE_OVER", "must not be negative")
        );

        // An old or repeated version is ignored; removing an override restores the base.
        assert!(!declared.apply(map(&[("DECLINE_OVER", "1")]), 1).unwrap());
        assert!(declared.apply(BTreeMap::new(), 3).unwrap());
        assert_eq!(
            *live.get(),
            Limits {
                decline_over: 1000,
                latency_ms: 7
            }
        );
        assert_eq!(declared.applied().version, 3);
    }
}
