//! Settings that change while the service runs (`tessera config set`, `docs/config.md`).
//!
//! A service declares its settings as today, a typed struct parsed from [`Settings`] by a
//! function of its own, but asks for them through [`crate::Context::live`]: it gets a
//! [`Live`] handle whose [`Live::get`] is the current snapshot (an atomically swapped
//! `Arc`: a read is a load, never a lock), and may register a hook to act on a change.
//!
//! The values come from the manifest (the process's environment) with the control plane's
//! changes on top. A watcher ([`Watcher`]) long-polls the control plane for this service's
//! next version; when one comes, every declared settings struct is parsed again from the new
//! values, all of them first, and only if every one parses are they swapped in (and their
//! hooks run): a value that does not parse leaves every running value as it was, and says
//! which key. The control plane asks a running instance the same question before it takes a
//! change ([`Declared::check`], `POST /status/config/check`), so a bad value is refused to
//! the person who typed it rather than found by the instances. A key the service reads only at
//! start (from `ctx.settings`) and in no live struct is refused too: changing it would take
//! effect at the next start, where a bad value would stop it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, Settings};

/// A settings struct that follows the system's configuration.
pub struct Live<T> {
    current: Arc<ArcSwap<T>>,
    hooks: Arc<Mutex<Vec<Hook<T>>>>,
}

type Hook<T> = Arc<dyn Fn(&T, &T) + Send + Sync>;

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
            .push(Arc::new(hook));
    }

    /// Swaps `new` in; the hooks to run then, with the old and new values.
    fn swap(&self, new: T) -> Staged {
        let old = self.current.swap(Arc::new(new));
        let new = self.current.load_full();
        let hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::new(move || {
            for hook in hooks {
                // A hook that panics is the service's bug: said, and the next change still
                // applies (the values are already in force).
                let run = std::panic::AssertUnwindSafe(|| hook(&old, &new));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("a configuration hook panicked");
                }
            }
        })
    }
}

/// Work left to do: a parsed change to swap in (which leaves its hooks to run), or hooks.
type Staged = Box<dyn FnOnce() + Send>;

/// A parsed change: swapping it in gives the hooks to run.
type Swap = Box<dyn FnOnce() -> Staged + Send>;

/// Parses settings into a change to apply, or says which key is wrong.
type Parser = Box<dyn Fn(&Settings) -> Result<Swap, ConfigError> + Send + Sync>;

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
    /// The keys the live structs read, and those the service read at start (`ctx.settings`).
    live_keys: std::collections::BTreeSet<String>,
    start_settings: Option<Settings>,
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

    /// The values in force: the base with the overrides on top. What the service reads of
    /// them at start is remembered (a key read there only cannot change while it runs).
    pub fn settings(&self) -> Settings {
        let mut inner = self.lock();
        let settings = merged(&inner.base, &inner.overrides);
        inner.start_settings = Some(settings.clone());
        settings
    }

    /// Declares a settings struct: parsed now (an error stops the service's start, naming the
    /// key), and again at every change.
    pub fn declare<T: Send + Sync + 'static>(
        &self,
        parse: impl Fn(&Settings) -> Result<T, ConfigError> + Send + Sync + 'static,
    ) -> Result<Live<T>, ConfigError> {
        let settings = {
            let inner = self.lock();
            merged(&inner.base, &inner.overrides)
        };
        let live = Live::fixed(parse(&settings)?);
        let target = live.clone();
        let parser: Parser = Box::new(move |settings| {
            let value = parse(settings)?;
            let target = target.clone();
            Ok(Box::new(move || target.swap(value)))
        });
        let mut inner = self.lock();
        inner.live_keys.extend(settings.keys_read());
        inner.parsers.push(parser);
        Ok(live)
    }

    /// Whether `overrides` would be taken, of which `changed` are new: every declared struct
    /// parses from them, and none of `changed` is read only at start.
    pub fn check(
        &self,
        overrides: &BTreeMap<String, String>,
        changed: &[String],
    ) -> Result<(), ConfigError> {
        let inner = self.lock();
        let at_start = inner
            .start_settings
            .as_ref()
            .map(Settings::keys_read)
            .unwrap_or_default();
        if let Some(key) = changed
            .iter()
            .find(|k| at_start.contains(*k) && !inner.live_keys.contains(*k))
        {
            return Err(ConfigError::new(
                key,
                "is read only when the service starts: it cannot change while it runs",
            ));
        }
        let settings = merged(&inner.base, overrides);
        for parse in &inner.parsers {
            drop(parse(&settings).map_err(redacted)?);
        }
        Ok(())
    }

    /// Applies `overrides` at `version`: all or nothing. A version not newer than the one in
    /// force is ignored (the watcher may see one twice), unless `reset` (the control plane's
    /// versions started again).
    pub fn apply(
        &self,
        overrides: BTreeMap<String, String>,
        version: u64,
    ) -> Result<bool, ConfigError> {
        self.apply_as(overrides, version, false)
    }

    fn apply_as(
        &self,
        overrides: BTreeMap<String, String>,
        version: u64,
        reset: bool,
    ) -> Result<bool, ConfigError> {
        let mut inner = self.lock();
        if version <= inner.version && !reset {
            return Ok(false);
        }
        let settings = merged(&inner.base, &overrides);
        let swaps = inner
            .parsers
            .iter()
            .map(|parse| parse(&settings))
            .collect::<Result<Vec<_>, _>>()
            .map_err(redacted)?;
        inner.overrides = overrides;
        inner.version = version;
        inner.seen = if reset {
            version
        } else {
            inner.seen.max(version)
        };
        // Every struct swapped under the lock (no change seen half-applied), their hooks after.
        let hooks: Vec<Staged> = swaps.into_iter().map(|swap| swap()).collect();
        drop(inner);
        for run in hooks {
            run();
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
                Ok(answer) if answer.version < after => {
                    // The control plane's versions started again (its file lost or replaced):
                    // what it holds now is what is in force.
                    failing = false;
                    tracing::warn!(
                        version = answer.version,
                        seen = after,
                        "the control plane's configuration went back to an older version; taking it"
                    );
                    if let Err(e) = declared.apply_as(answer.changes, answer.version, true) {
                        tracing::error!(version = answer.version, key = %e.key, error = %e.message, "a configuration change does not apply here; the running values stay");
                        declared.skip(answer.version, &e);
                    }
                }
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

/// `e` without the value when its key is a secret (a parser's reason may quote the value).
fn redacted(e: ConfigError) -> ConfigError {
    if crate::config::secret_by_name(&e.key) {
        ConfigError::new(&e.key, "cannot be read (a secret: its value is not shown)")
    } else {
        e
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
        let err = declared
            .check(&map(&[("DECLINE_OVER", "-1")]), &["DECLINE_OVER".into()])
            .unwrap_err();
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

        // The control plane's versions started again: taken.
        assert!(
            declared
                .apply_as(map(&[("DECLINE_OVER", "9")]), 1, true)
                .unwrap()
        );
        assert_eq!((live.get().decline_over, declared.seen()), (9, 1));
    }

    #[test]
    fn a_key_read_only_at_start_is_refused_and_a_secret_is_never_quoted() {
        let base = Settings::from_map([("PORT_LIMIT", "3")]);
        let declared = Declared::new(&base, BTreeMap::new(), 0);
        let at_start = declared.settings();
        assert_eq!(at_start.get_or::<u32>("PORT_LIMIT", 1).unwrap(), 3);
        let _live = declared
            .declare(|s| s.get_or::<u32>("API_TOKEN_LEN", 8))
            .unwrap();
        let err = declared
            .check(&map(&[("PORT_LIMIT", "4")]), &["PORT_LIMIT".into()])
            .unwrap_err();
        assert_eq!(err.key, "PORT_LIMIT");
        assert!(
            err.message.contains("only when the service starts"),
            "{err}"
        );
        // A key nobody reads may change (nothing parses it); a live one is parsed.
        declared
            .check(&map(&[("UNUSED", "x")]), &["UNUSED".into()])
            .unwrap();
        let err = declared
            .check(
                &map(&[("API_TOKEN_LEN", "hunter2")]),
                &["API_TOKEN_LEN".into()],
            )
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_hook_that_panics_leaves_the_change_applied_and_the_next_one_too() {
        let declared = Declared::new(&Settings::default(), BTreeMap::new(), 0);
        let live = declared.declare(limits).unwrap();
        live.on_change(|_, new| assert!(new.decline_over != 5, "a buggy hook"));
        assert!(declared.apply(map(&[("DECLINE_OVER", "5")]), 1).unwrap());
        assert_eq!(live.get().decline_over, 5);
        assert!(declared.apply(map(&[("DECLINE_OVER", "6")]), 2).unwrap());
        assert_eq!(live.get().decline_over, 6);
    }
}
