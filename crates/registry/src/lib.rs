//! The registry protocol, and the two clients every process uses: self-registration with
//! heartbeats, and discovery (a live, cached view of every service's instances).
//!
//! The control plane's registry speaks plain JSON over HTTP (`docs/registry.md`):
//!
//! | call | meaning |
//! |---|---|
//! | `PUT /v1/instances/{id}` [`Registration`] | register, or refresh a registration |
//! | `PUT /v1/instances/{id}/heartbeat` | keep alive; 404 means "unknown, register again" |
//! | `DELETE /v1/instances/{id}` | leave now |
//! | `GET /v1/services?index=N&wait=MS` | the whole [`Catalog`]; blocks until it changes past N |
//!
//! Discovery holds one long-poll open, so a new or dead instance is seen as soon as the
//! registry sees it. If the control plane is unreachable the last view is kept (a registry
//! outage must not take routing down with it) and polling resumes when it is back.
//!
//! Every call carries the process's credential (`Authorization: Bearer …`,
//! [`tessera_identity`]): the registry answers nobody else, and lets a service register, keep
//! alive and remove only instances of its own name (`docs/security.md`).
//!
//! The control plane's server side reads the same types. This crate knows nothing of how
//! calls are made or guarded: it only says who is there.
//!
//! Beyond one machine the registry is etcd (`etcd.rs`, `TESSERA_REGISTRY_URL=etcd://…`): the
//! same [`Discovery`] and [`Registrar`], fed by a watch on etcd instead of the long-poll, and
//! the control plane's API above in front of the same keys for processes that are not Rust.

pub mod etcd;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_identity::Credential;
use tokio::sync::watch;

/// One running instance of a service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub service: String,
    /// `host:port` it serves HTTP on.
    pub address: String,
    pub version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// During a rollout, the share of traffic of this instance's version (0 to 100), from the
    /// control plane's traffic table (`GET /v1/traffic`); none: every instance alike. Set by
    /// [`Discovery`], never sent.
    #[serde(skip)]
    pub weight: Option<u32>,
}

/// The body of a registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    #[serde(flatten)]
    pub instance: Instance,
    /// Dropped this long after the last heartbeat.
    pub ttl_ms: u64,
}

/// Every service's live instances, and the index of this view.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub index: u64,
    pub services: BTreeMap<String, Vec<Instance>>,
    /// The registry started recently and instances may still be registering again: a reader
    /// that already has a view should keep it rather than take this one.
    #[serde(default)]
    pub settling: bool,
}

/// An HTTP client that calls the control plane as `credential` (its `Authorization`), over
/// mutual TLS when the system has it (this process's certificate shown, the control plane's
/// identity checked whatever address the URL names): what every process's calls to the
/// control plane go through (the registry, the exporter of spans and logs).
pub fn control_http(credential: &Credential) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut authorization = reqwest::header::HeaderValue::from_str(&credential.authorization())
        .expect("a credential is a valid header value");
    authorization.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, authorization);
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .default_headers(headers);
    if let Some(tls) = tessera_tls::internal::get() {
        match tls.client_config_for(&tls.identity_of("control")) {
            Ok(config) => http = http.use_preconfigured_tls(config),
            Err(e) => {
                tracing::error!(error = %e, "mutual TLS: no client config for the control plane")
            }
        }
    }
    http.build().expect("reqwest client builds")
}

/// The control plane's base URL as this process reaches it (`https://` under mutual TLS).
pub fn control_base(base: &str) -> String {
    tessera_tls::internal::system_url(base.trim_end_matches('/')).into_owned()
}

/// A thin client of the control plane's registry API.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

impl RegistryClient {
    /// A client of the registry at `base` that calls as `credential`.
    pub fn new(base: &str, credential: &Credential) -> Self {
        Self {
            base: control_base(base),
            http: control_http(credential),
        }
    }

    pub async fn register(&self, reg: &Registration) -> Result<(), reqwest::Error> {
        self.http
            .put(format!("{}/v1/instances/{}", self.base, reg.instance.id))
            .timeout(Duration::from_secs(2))
            .json(reg)
            .send()
            .await?
            .error_for_status()
            .map(drop)
    }

    /// `Ok(false)` when the registry does not know the instance (it expired or the control
    /// plane restarted): register again.
    pub async fn heartbeat(&self, id: &str) -> Result<bool, reqwest::Error> {
        let resp = self
            .http
            .put(format!("{}/v1/instances/{id}/heartbeat", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        resp.error_for_status().map(|_| true)
    }

    pub async fn deregister(&self, id: &str) -> Result<(), reqwest::Error> {
        self.http
            .delete(format!("{}/v1/instances/{id}", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()
            .map(drop)
    }

    /// The catalog; with `index`, waits up to `wait` for one newer than it.
    pub async fn catalog(
        &self,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<Catalog, reqwest::Error> {
        let mut req = self.http.get(format!("{}/v1/services", self.base));
        if let Some(index) = index {
            req = req
                .query(&[("index", index), ("wait", wait.as_millis() as u64)])
                .timeout(wait + Duration::from_secs(5));
        } else {
            req = req.timeout(Duration::from_secs(5));
        }
        req.send().await?.error_for_status()?.json().await
    }
}

/// Keeps `reg` registered until the returned sender is dropped or sent `true`, then
/// deregisters (the task ends when that is done). Heartbeats every `every`; re-registers when
/// the registry forgot it.
pub fn keep_registered(
    client: RegistryClient,
    reg: Registration,
    every: Duration,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop_tx, mut stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut healthy = true;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let result = match client.heartbeat(&reg.instance.id).await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    tracing::info!(instance = %reg.instance.id, "registry forgot this instance; registering again");
                    client.register(&reg).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) if !healthy => {
                    tracing::info!("registry reachable again");
                    healthy = true;
                }
                Err(e) if healthy => {
                    tracing::warn!(error = %e, "registry heartbeat failed; will keep trying");
                    healthy = false;
                }
                _ => {}
            }
        }
        if let Err(e) = client.deregister(&reg.instance.id).await {
            tracing::warn!(error = %e, "deregistration failed; the registry will expire this instance");
        }
    });
    (stop_tx, task)
}

/// How this process puts itself in the registry: through the control plane's API, or
/// straight into etcd with a lease of its own.
pub enum Registrar {
    Control(RegistryClient),
    Etcd(etcd::EtcdSettings),
}

/// A registration held until [`Registered::leave`].
pub struct Registered {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Registered {
    /// Deregisters, waiting at most `within` for it.
    pub async fn leave(self, within: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(within, self.task).await;
    }
}

impl Registrar {
    /// The registrar for `registry_url` (etcd) or else the control plane at `control_url`.
    pub fn new(
        registry_url: Option<&str>,
        control_url: &str,
        credential: &Credential,
    ) -> Result<Self, String> {
        match registry_url {
            Some(url) => Ok(Self::Etcd(etcd::EtcdSettings::parse(url)?)),
            None => Ok(Self::Control(RegistryClient::new(control_url, credential))),
        }
    }

    /// Registers `reg`, retrying until the registry takes it (it may be starting alongside
    /// this process), and keeps it registered, every `every`, until [`Registered::leave`].
    pub async fn register(self, reg: Registration, every: Duration) -> Registered {
        match self {
            Self::Control(client) => {
                let mut attempt = 0u32;
                while let Err(e) = client.register(&reg).await {
                    attempt += 1;
                    if attempt == 1 || attempt.is_multiple_of(20) {
                        tracing::warn!(error = %e, "cannot register yet; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let (stop, task) = keep_registered(client, reg, every);
                Registered { stop, task }
            }
            Self::Etcd(settings) => {
                let (stop, stopped) = watch::channel(false);
                let (registered, first) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(etcd::keep_registered(
                    settings, reg, every, stopped, registered,
                ));
                let _ = first.await;
                Registered { stop, task }
            }
        }
    }
}

type Snapshot = HashMap<String, Arc<[Instance]>>;

/// The answer of `GET /v1/traffic`.
#[derive(Deserialize)]
struct TrafficAnswer {
    index: u64,
    services: Traffic,
}

/// Follows the control plane's traffic table into `views`, by long poll, for as long as
/// `views` has another holder; the last table is kept while the control plane is away.
fn follow_traffic(client: &RegistryClient, views: &Arc<Views>) {
    let (http, base) = (client.http.clone(), client.base.clone());
    let views = Arc::downgrade(views);
    tokio::spawn(async move {
        let mut index: Option<u64> = None;
        loop {
            let url = match index {
                Some(i) => format!("{base}/v1/traffic?after={i}&wait=25"),
                None => format!("{base}/v1/traffic"),
            };
            let answer = http.get(&url).timeout(Duration::from_secs(35)).send().await;
            let table = match answer {
                Ok(resp) if resp.status().is_success() => resp.json::<TrafficAnswer>().await.ok(),
                _ => None,
            };
            let Some(views) = views.upgrade() else { return };
            match table {
                Some(table) => {
                    index = Some(table.index);
                    views.set_traffic(table.services);
                }
                None => {
                    // A control plane restarting (its index starts again), or one that does
                    // not publish traffic: later.
                    index = None;
                    drop(views);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// Adds to `into` the instances of `old` it lacks.
fn merge_missing(into: &mut Snapshot, old: &Snapshot) {
    for (service, known) in old {
        let current = into
            .entry(service.clone())
            .or_insert_with(|| Arc::from(Vec::new()));
        let missing: Vec<Instance> = known
            .iter()
            .filter(|k| !current.iter().any(|c| c.id == k.id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let mut all = current.to_vec();
            all.extend(missing);
            *current = Arc::from(all);
        }
    }
}

/// Per service, each version's weight: what a rollout publishes (`GET /v1/traffic`).
pub type Traffic = HashMap<String, BTreeMap<String, u32>>;

/// The registry's view and the traffic table, and what discovery hands out: the view with
/// each weighted service's instances carrying their version's weight.
#[derive(Default)]
struct Views {
    /// Held across reading the inputs and writing the view: two publishes (a registry change,
    /// a traffic change) never leave the older inputs' view in place.
    publishing: std::sync::Mutex<()>,
    raw: RwLock<Arc<Snapshot>>,
    traffic: RwLock<Arc<Traffic>>,
    view: RwLock<Arc<Snapshot>>,
}

impl Views {
    fn raw(&self) -> Arc<Snapshot> {
        self.raw.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_raw(&self, raw: Snapshot) {
        *self.raw.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(raw);
        self.publish();
    }

    fn set_traffic(&self, traffic: Traffic) {
        *self.traffic.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(traffic);
        self.publish();
    }

    fn publish(&self) {
        let _one = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let raw = self.raw();
        let traffic = self
            .traffic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let view = if traffic.is_empty() {
            raw
        } else {
            Arc::new(weighed(&raw, &traffic))
        };
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

/// `raw` with each instance of a service in `traffic` given its version's weight (0 for a
/// version the table does not name).
fn weighed(raw: &Snapshot, traffic: &Traffic) -> Snapshot {
    raw.iter()
        .map(|(service, list)| {
            let list = match traffic.get(service) {
                Some(weights) => list
                    .iter()
                    .map(|i| Instance {
                        weight: Some(weights.get(&i.version).copied().unwrap_or(0)),
                        ..i.clone()
                    })
                    .collect::<Vec<_>>()
                    .into(),
                None => list.clone(),
            };
            (service.clone(), list)
        })
        .collect()
}

/// A live view of the registry, refreshed by one long-poll, and of the traffic table, by
/// another.
#[derive(Clone)]
pub struct Discovery {
    views: Arc<Views>,
    changed: watch::Receiver<u64>,
}

impl Discovery {
    /// Starts watching the registry at `control_url`, reading it as `credential`.
    pub fn start(control_url: &str, credential: &Credential) -> Self {
        let client = RegistryClient::new(control_url, credential);
        let views: Arc<Views> = Arc::default();
        let (tx, changed) = watch::channel(0u64);
        let writer = views.clone();
        follow_traffic(&client, &views);
        tokio::spawn(async move {
            let mut index = None;
            let mut failing = false;
            let mut wait = Duration::from_secs(30);
            loop {
                match client.catalog(index, wait).await {
                    Ok(catalog) => {
                        if failing {
                            tracing::info!("registry reachable again");
                            failing = false;
                        }
                        index = Some(catalog.index);
                        let mut snapshot: Snapshot = catalog
                            .services
                            .into_iter()
                            .map(|(name, list)| (name, Arc::from(list)))
                            .collect();
                        if catalog.settling {
                            // A restarted registry refills within a heartbeat: until then, add
                            // what it has to what we knew, but drop nothing. Look again soon.
                            merge_missing(&mut snapshot, &writer.raw());
                            wait = Duration::from_millis(250);
                        } else {
                            wait = Duration::from_secs(30);
                        }
                        writer.set_raw(snapshot);
                        if tx.send(catalog.index).is_err() {
                            return; // every Discovery handle is gone
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "registry unreachable; keeping the last view");
                            failing = true;
                        }
                        // A restarted control plane starts its index again from 1.
                        index = None;
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
        Self { views, changed }
    }

    /// Starts watching the registry: on etcd when `registry_url` names it, else the control
    /// plane's at `control_url`; the traffic table at the control plane's in either case.
    pub fn for_system(
        registry_url: Option<&str>,
        control_url: &str,
        credential: &Credential,
    ) -> Result<Self, String> {
        match registry_url {
            Some(url) => {
                let discovery = Self::start_etcd(etcd::EtcdSettings::parse(url)?);
                follow_traffic(
                    &RegistryClient::new(control_url, credential),
                    &discovery.views,
                );
                Ok(discovery)
            }
            None => Ok(Self::start(control_url, credential)),
        }
    }

    /// Starts following the registry's keys on etcd.
    pub fn start_etcd(settings: etcd::EtcdSettings) -> Self {
        let views: Arc<Views> = Arc::default();
        let (tx, changed) = watch::channel(0u64);
        let writer = views.clone();
        tokio::spawn(etcd::follow(settings, move |entries, revision| {
            let mut grouped: HashMap<String, Vec<Instance>> = HashMap::new();
            for entry in entries.values() {
                grouped
                    .entry(entry.instance.service.clone())
                    .or_default()
                    .push(entry.instance.clone());
            }
            let snapshot = grouped
                .into_iter()
                .map(|(name, list)| (name, Arc::from(list)))
                .collect();
            writer.set_raw(snapshot);
            // Revision 0 never comes from etcd; keep "loaded" distinct from "not yet".
            tx.send(revision.max(1) as u64).is_ok()
        }));
        Self { views, changed }
    }

    /// A view that never changes (tests, or a process without a registry).
    pub fn fixed(services: impl IntoIterator<Item = Instance>) -> Self {
        let mut snapshot: HashMap<String, Vec<Instance>> = HashMap::new();
        for i in services {
            snapshot.entry(i.service.clone()).or_default().push(i);
        }
        let snapshot = snapshot
            .into_iter()
            .map(|(k, v)| (k, Arc::from(v)))
            .collect();
        let (_tx, changed) = watch::channel(1);
        let views: Arc<Views> = Arc::default();
        views.set_raw(snapshot);
        Self { views, changed }
    }

    /// The same view, with `traffic` applied (tests).
    pub fn with_traffic(self, traffic: Traffic) -> Self {
        self.views.set_traffic(traffic);
        self
    }

    /// The live instances of `service` (empty when none).
    pub fn instances(&self, service: &str) -> Option<Arc<[Instance]>> {
        self.views
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }

    /// The whole current view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.views
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the view has been loaded at least once, or `timeout` passes.
    pub async fn wait_loaded(&self, timeout: Duration) -> bool {
        let mut rx = self.changed.clone();
        tokio::time::timeout(timeout, rx.wait_for(|i| *i > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1:1".into(),
            version: "1".into(),
            metadata: BTreeMap::new(),
            weight: None,
        }
    }

    #[test]
    fn settling_views_add_but_never_drop() {
        let old: Snapshot = HashMap::from([
            (
                "a".to_string(),
                Arc::from(vec![inst("a-1", "a"), inst("a-2", "a")]),
            ),
            ("b".to_string(), Arc::from(vec![inst("b-1", "b")])),
        ]);
        let mut new: Snapshot = HashMap::from([
            ("a".to_string(), Arc::from(vec![inst("a-2", "a")])),
            ("c".to_string(), Arc::from(vec![inst("c-1", "c")])),
        ]);
        merge_missing(&mut new, &old);
        let ids = |s: &str| {
            let mut v: Vec<String> = new[s].iter().map(|i| i.id.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(ids("a"), ["a-1", "a-2"]);
        assert_eq!(ids("b"), ["b-1"]);
        assert_eq!(ids("c"), ["c-1"]);
    }
}
