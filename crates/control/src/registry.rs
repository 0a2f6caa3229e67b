//! The service registry: instances register, heartbeat, and expire when their TTL lapses.
//!
//! All state is in memory and rebuilt by the instances themselves: a heartbeat that gets 404
//! registers again, so a restarted control plane is whole again within one heartbeat. Every
//! change bumps a global index; readers long-poll with `?index=N&wait=MS` and are woken the
//! moment the index passes N (Consul's blocking queries), which is how the gateway and the
//! service clients notice a new or dead instance within milliseconds of the registry.
//!
//! An instance belongs to the service that registered it: only that service (proven by its
//! credential, `policy.rs`) may refresh, keep alive or remove it, and an operator may remove
//! it. So no process can take over another's entry or route its traffic to itself.
//!
//! With the system's registry on etcd (`registry/etcd.rs`) the same API stands in front of
//! etcd's keys, for processes that register over HTTP; Rust processes go to etcd themselves.

mod etcd;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use tessera::ApiError;
use tessera::registry::{Catalog, Instance, Registration};

/// How late the sweeper's tick may be before the registry counts itself stalled.
const STALL: Duration = Duration::from_millis(1000);

use crate::policy::Caller;
use tokio::sync::watch;

/// The longest a reader may wait in one long-poll.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Bounds on a registration's TTL.
const MIN_TTL: Duration = Duration::from_millis(500);
const MAX_TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Registry {
    state: Arc<Mutex<State_>>,
    index: watch::Sender<u64>,
    started: Instant,
    /// How long after start the registry reports itself as settling (instances that were
    /// registered with a previous incarnation come back within one heartbeat).
    settle: Duration,
    /// The registry on etcd, when the system's is there: the state above is then unused.
    etcd: Option<Arc<etcd::EtcdRegistry>>,
}

struct State_ {
    entries: HashMap<String, Entry>,
    index: u64,
}

struct Entry {
    instance: Instance,
    ttl: Duration,
    expires: Instant,
    /// Given a TTL for a stall of the registry's, since its last heartbeat: once only, so that
    /// stall after stall cannot keep a dead instance forever.
    forgiven: bool,
}

/// An instance id already held by a live instance of the named service.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken(pub String);

impl Default for Registry {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl Registry {
    pub fn new(settle: Duration) -> Self {
        let (index, _) = watch::channel(1);
        Self {
            state: Arc::new(Mutex::new(State_ {
                entries: HashMap::new(),
                index: 1,
            })),
            index,
            started: Instant::now(),
            settle,
            etcd: None,
        }
    }

    /// The registry on etcd, at `settings`.
    pub fn on_etcd(settings: tessera::registry::etcd::EtcdSettings) -> Self {
        let mut registry = Self::new(Duration::ZERO);
        registry.etcd = Some(etcd::EtcdRegistry::start(settings, registry.index.clone()));
        registry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, state: &mut State_) {
        state.index += 1;
        self.index.send_replace(state.index);
    }

    /// Registers or refreshes `reg`; refused when its id is held by another service's live
    /// instance.
    pub fn register(&self, reg: Registration) -> Result<(), Taken> {
        let ttl = Duration::from_millis(reg.ttl_ms).clamp(MIN_TTL, MAX_TTL);
        let mut state = self.lock();
        if let Some(e) = state.entries.get(&reg.instance.id)
            && e.instance.service != reg.instance.service
        {
            return Err(Taken(e.instance.service.clone()));
        }
        let changed = state
            .entries
            .get(&reg.instance.id)
            .is_none_or(|e| e.instance != reg.instance);
        if changed {
            tracing::info!(
                instance = %reg.instance.id,
                service = %reg.instance.service,
                address = %reg.instance.address,
                "registered"
            );
        }
        state.entries.insert(
            reg.instance.id.clone(),
            Entry {
                instance: reg.instance,
                ttl,
                expires: Instant::now() + ttl,
                forgiven: false,
            },
        );
        if changed {
            self.bump(&mut state);
        }
        Ok(())
    }

    /// Keeps instance `id` alive if `allowed` lets its owner's instance be touched; `false`
    /// if it is unknown.
    pub fn heartbeat<E>(
        &self,
        id: &str,
        allowed: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut state = self.lock();
        let Some(e) = state.entries.get_mut(id) else {
            return Ok(false);
        };
        allowed(&e.instance.service)?;
        e.expires = Instant::now() + e.ttl;
        e.forgiven = false;
        Ok(true)
    }

    /// Removes instance `id` if `allowed` lets its owner's instance be removed; `false` if it
    /// is unknown.
    pub fn deregister<E>(
        &self,
        id: &str,
        allowed: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut state = self.lock();
        let Some(e) = state.entries.get(id) else {
            return Ok(false);
        };
        allowed(&e.instance.service)?;
        state.entries.remove(id);
        tracing::info!(instance = %id, "deregistered");
        self.bump(&mut state);
        Ok(true)
    }

    /// Drops every instance whose TTL has lapsed.
    pub fn sweep(&self, now: Instant) {
        let mut state = self.lock();
        let before = state.entries.len();
        state.entries.retain(|id, e| {
            let live = e.expires > now;
            if !live {
                tracing::warn!(instance = %id, service = %e.instance.service, "expired: no heartbeat within its TTL");
            }
            live
        });
        if state.entries.len() != before {
            self.bump(&mut state);
        }
    }

    /// Gives every instance a full TTL from `now`, as if it had just sent a heartbeat: the
    /// registry itself was stalled (its process starved of CPU, or stopped), and the heartbeats
    /// sent meanwhile are still waiting to be read. Expiring their instances for its own stall
    /// would empty the catalog of a healthy system at once (Eureka's self-preservation answers
    /// the same thing). An instance is forgiven once between two of its heartbeats: a dead
    /// one gains one TTL, whatever the stalls that follow.
    pub fn forgive(&self, now: Instant) {
        let mut state = self.lock();
        for e in state.entries.values_mut().filter(|e| !e.forgiven) {
            e.expires = e.expires.max(now + e.ttl);
            e.forgiven = true;
        }
    }

    pub fn spawn_sweeper(&self, every: Duration) {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            loop {
                tick.tick().await;
                let now = Instant::now();
                let late = now.duration_since(last).saturating_sub(every);
                last = now;
                if late > STALL {
                    tracing::warn!(
                        stalled_ms = late.as_millis() as u64,
                        "the registry was stalled: every instance gets a TTL from now to send its heartbeat"
                    );
                    registry.forgive(now);
                }
                registry.sweep(now);
            }
        });
    }

    pub fn catalog(&self) -> Catalog {
        if let Some(etcd) = &self.etcd {
            return etcd.catalog(*self.index.borrow());
        }
        let state = self.lock();
        let mut catalog = Catalog {
            index: state.index,
            services: Default::default(),
            settling: self.started.elapsed() < self.settle,
        };
        for e in state.entries.values() {
            catalog
                .services
                .entry(e.instance.service.clone())
                .or_default()
                .push(e.instance.clone());
        }
        for list in catalog.services.values_mut() {
            list.sort_by(|a, b| a.id.cmp(&b.id));
        }
        catalog
    }

    /// Waits until the index passes `after`, or `wait` elapses.
    pub async fn wait_past(&self, after: u64, wait: Duration) {
        let mut rx = self.index.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > after)).await;
    }
}

pub fn routes(registry: Registry) -> Router {
    Router::new()
        .route("/v1/services", get(list))
        .route("/v1/instances/{id}", put(register).delete(deregister))
        .route("/v1/instances/{id}/heartbeat", put(heartbeat))
        .with_state(registry)
}

#[derive(Deserialize)]
struct Blocking {
    index: Option<u64>,
    wait: Option<u64>,
}

async fn list(
    State(registry): State<Registry>,
    _caller: Caller,
    query: Result<Query<Blocking>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "index and wait must be whole numbers",
        );
    };
    if let Some(after) = q.index {
        let wait = Duration::from_millis(q.wait.unwrap_or(30_000)).min(MAX_WAIT);
        registry.wait_past(after, wait).await;
    }
    Json(registry.catalog()).into_response()
}

async fn register(
    State(registry): State<Registry>,
    caller: Caller,
    Path(id): Path<String>,
    tessera::Json(reg): tessera::Json<Registration>,
) -> Response {
    if reg.instance.id != id {
        return error(
            StatusCode::BAD_REQUEST,
            "the body's id differs from the path's",
        );
    }
    if reg.instance.service.is_empty()
        || reg
            .instance
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "service must be set and address must be host:port",
        );
    }
    if let Err(e) = caller.may_register(&reg.instance.service) {
        return e.into_response();
    }
    if let Some(etcd) = &registry.etcd {
        if reg.instance.id.contains('/') {
            return error(StatusCode::BAD_REQUEST, "an instance id must not hold '/'");
        }
        if etcd
            .taken(&reg.instance.id, &reg.instance.service)
            .is_some()
        {
            return error(
                StatusCode::CONFLICT,
                "this instance id is held by another service's instance",
            );
        }
        return match etcd.register(&reg).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => unavailable(e),
        };
    }
    match registry.register(reg) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(Taken(_)) => error(
            StatusCode::CONFLICT,
            "this instance id is held by another service's instance",
        ),
    }
}

async fn heartbeat(
    State(registry): State<Registry>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let outcome = match &registry.etcd {
        Some(etcd) => match etcd
            .heartbeat(&id, |owner| caller.may_register(owner))
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => return unavailable(e),
        },
        None => registry.heartbeat(&id, |owner| caller.may_register(owner)),
    };
    match outcome {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "unknown instance; register again"),
        Err(refused) => refused.into_response(),
    }
}

async fn deregister(
    State(registry): State<Registry>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let outcome = match &registry.etcd {
        Some(etcd) => match etcd.deregister(&id, |owner| caller.may_remove(owner)).await {
            Ok(outcome) => outcome,
            Err(e) => return unavailable(e),
        },
        None => registry.deregister(&id, |owner| caller.may_remove(owner)),
    };
    match outcome {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "unknown instance"),
        Err(refused) => refused.into_response(),
    }
}

/// etcd did not answer: logged with its reason, told as a 503 without it.
fn unavailable(e: etcd::Unavailable) -> Response {
    tracing::warn!(error = %e.0, "the registry's etcd is unreachable");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the registry's store is unreachable; retry",
    )
}

/// The registry's errors are named by their status's reason ("Bad Request", "Not Found").
fn error(status: StatusCode, message: &str) -> Response {
    ApiError::new(
        status,
        status.canonical_reason().unwrap_or_default(),
        message,
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn reg(id: &str, service: &str) -> Registration {
        Registration {
            instance: Instance {
                id: id.into(),
                service: service.into(),
                address: "127.0.0.1:1".into(),
                version: "1".into(),
                metadata: BTreeMap::new(),
                weight: None,
            },
            ttl_ms: 1000,
        }
    }

    fn anyone(_: &str) -> Result<(), ()> {
        Ok(())
    }

    #[tokio::test]
    async fn expires_without_heartbeat() {
        let r = Registry::default();
        r.register(reg("a-1", "a")).unwrap();
        r.register(reg("a-2", "a")).unwrap();
        assert_eq!(r.catalog().services["a"].len(), 2);
        let later = Instant::now() + Duration::from_millis(1500);
        assert_eq!(r.heartbeat("a-1", anyone), Ok(true));
        r.sweep(later);
        // Both registered 1 s TTL; a heartbeat now does not survive 1.5 s either.
        assert!(!r.catalog().services.contains_key("a"));
        assert_eq!(r.heartbeat("a-1", anyone), Ok(false));
    }

    #[tokio::test]
    async fn a_stall_of_the_registry_itself_expires_nobody() {
        let r = Registry::default();
        r.register(reg("a-1", "a")).unwrap();
        // The registry could not run for 5 s (its heartbeats wait unread): forgiven, once.
        let thawed = Instant::now() + Duration::from_secs(5);
        r.forgive(thawed);
        r.sweep(thawed + Duration::from_millis(900));
        assert_eq!(r.catalog().services["a"].len(), 1);
        // Stalled again before its next heartbeat: not forgiven twice.
        r.forgive(thawed + Duration::from_millis(900));
        r.sweep(thawed + Duration::from_millis(1100));
        assert!(
            !r.catalog().services.contains_key("a"),
            "a dead instance gains one TTL"
        );
    }

    #[tokio::test]
    async fn heartbeats_keep_alive_and_deregister_is_immediate() {
        let r = Registry::default();
        r.register(reg("a-1", "a")).unwrap();
        let i0 = r.catalog().index;
        r.sweep(Instant::now() + Duration::from_millis(500));
        assert_eq!(r.catalog().services["a"].len(), 1);
        assert_eq!(r.catalog().index, i0, "nothing changed");
        assert_eq!(r.deregister("a-1", anyone), Ok(true));
        assert!(r.catalog().index > i0);
        assert!(r.catalog().services.is_empty());
    }

    #[tokio::test]
    async fn refusals_are_json_named_by_their_status() {
        let served = crate::testing::serve(routes(Registry::default()), Default::default()).await;
        let response = reqwest::Client::new()
            .put(format!("{}/v1/instances/nobody/heartbeat", served.url))
            .header(
                "authorization",
                served.credential("service:a").authorization(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"code":"Not Found","message":"unknown instance; register again"}"#
        );
    }

    #[tokio::test]
    async fn instances_are_their_services_alone() {
        let served = crate::testing::serve(routes(Registry::default()), Default::default()).await;
        let http = reqwest::Client::new();
        let call = async |method: reqwest::Method,
                          path: &str,
                          who: Option<&str>,
                          body: Option<Registration>| {
            let mut req = http.request(method, format!("{}{path}", served.url));
            if let Some(who) = who {
                req = req.header("authorization", served.credential(who).authorization());
            }
            if let Some(body) = body {
                req = req.json(&body);
            }
            req.send().await.unwrap().status().as_u16()
        };
        use reqwest::Method;
        // Nobody without a credential, or with a forged one.
        assert_eq!(call(Method::GET, "/v1/services", None, None).await, 401);
        let forged = http
            .get(format!("{}/v1/services", served.url))
            .header(
                "authorization",
                "Bearer service:auth.c1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status().as_u16(), 401);
        assert_eq!(
            call(
                Method::PUT,
                "/v1/instances/auth-1",
                None,
                Some(reg("auth-1", "auth"))
            )
            .await,
            401
        );
        // A service registers under its own name only.
        let auth = Some("service:auth");
        let catalog = Some("service:catalog");
        assert_eq!(
            call(
                Method::PUT,
                "/v1/instances/auth-9",
                catalog,
                Some(reg("auth-9", "auth"))
            )
            .await,
            403
        );
        assert_eq!(
            call(
                Method::PUT,
                "/v1/instances/auth-1",
                auth,
                Some(reg("auth-1", "auth"))
            )
            .await,
            200
        );
        // Nobody else's instance can be taken over, kept alive or removed.
        assert_eq!(
            call(
                Method::PUT,
                "/v1/instances/auth-1",
                catalog,
                Some(reg("auth-1", "catalog"))
            )
            .await,
            409
        );
        assert_eq!(
            call(Method::PUT, "/v1/instances/auth-1/heartbeat", catalog, None).await,
            403
        );
        assert_eq!(
            call(Method::DELETE, "/v1/instances/auth-1", catalog, None).await,
            403
        );
        assert_eq!(
            call(
                Method::DELETE,
                "/v1/instances/auth-1",
                Some("gateway"),
                None
            )
            .await,
            403
        );
        assert_eq!(
            call(Method::PUT, "/v1/instances/auth-1/heartbeat", auth, None).await,
            200
        );
        // Anyone with a credential reads; the supervisor removes.
        assert_eq!(
            call(Method::GET, "/v1/services", Some("gateway"), None).await,
            200
        );
        assert_eq!(
            call(
                Method::DELETE,
                "/v1/instances/auth-1",
                Some("supervisor"),
                None
            )
            .await,
            200
        );
    }

    #[tokio::test]
    async fn long_poll_wakes_on_change() {
        let r = Registry::default();
        let index = r.catalog().index;
        let r2 = r.clone();
        let waiter = tokio::spawn(async move {
            let start = Instant::now();
            r2.wait_past(index, Duration::from_secs(10)).await;
            start.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.register(reg("b-1", "b")).unwrap();
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    }
}
