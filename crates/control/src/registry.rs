//! The service registry: instances register, heartbeat, and expire when their TTL lapses.
//!
//! All state is in memory and rebuilt by the instances themselves: a heartbeat that gets 404
//! registers again, so a restarted control plane is whole again within one heartbeat. Every
//! change bumps a global index; readers long-poll with `?index=N&wait=MS` and are woken the
//! moment the index passes N (Consul's blocking queries), which is how the gateway and the
//! service clients notice a new or dead instance within milliseconds of the registry.

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
}

struct State_ {
    entries: HashMap<String, Entry>,
    index: u64,
}

struct Entry {
    instance: Instance,
    ttl: Duration,
    expires: Instant,
}

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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, state: &mut State_) {
        state.index += 1;
        self.index.send_replace(state.index);
    }

    pub fn register(&self, reg: Registration) {
        let ttl = Duration::from_millis(reg.ttl_ms).clamp(MIN_TTL, MAX_TTL);
        let mut state = self.lock();
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
            },
        );
        if changed {
            self.bump(&mut state);
        }
    }

    /// `false` if the instance is unknown.
    pub fn heartbeat(&self, id: &str) -> bool {
        let mut state = self.lock();
        match state.entries.get_mut(id) {
            Some(e) => {
                e.expires = Instant::now() + e.ttl;
                true
            }
            None => false,
        }
    }

    pub fn deregister(&self, id: &str) -> bool {
        let mut state = self.lock();
        let removed = state.entries.remove(id).is_some();
        if removed {
            tracing::info!(instance = %id, "deregistered");
            self.bump(&mut state);
        }
        removed
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

    pub fn spawn_sweeper(&self, every: Duration) {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                registry.sweep(Instant::now());
            }
        });
    }

    pub fn catalog(&self) -> Catalog {
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
    registry.register(reg);
    StatusCode::OK.into_response()
}

async fn heartbeat(State(registry): State<Registry>, Path(id): Path<String>) -> Response {
    if registry.heartbeat(&id) {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "unknown instance; register again")
    }
}

async fn deregister(State(registry): State<Registry>, Path(id): Path<String>) -> Response {
    if registry.deregister(&id) {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "unknown instance")
    }
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
            },
            ttl_ms: 1000,
        }
    }

    #[tokio::test]
    async fn expires_without_heartbeat() {
        let r = Registry::default();
        r.register(reg("a-1", "a"));
        r.register(reg("a-2", "a"));
        assert_eq!(r.catalog().services["a"].len(), 2);
        let later = Instant::now() + Duration::from_millis(1500);
        assert!(r.heartbeat("a-1"));
        r.sweep(later);
        // Both registered 1 s TTL; a heartbeat now does not survive 1.5 s either.
        assert!(!r.catalog().services.contains_key("a"));
        assert!(!r.heartbeat("a-1"));
    }

    #[tokio::test]
    async fn heartbeats_keep_alive_and_deregister_is_immediate() {
        let r = Registry::default();
        r.register(reg("a-1", "a"));
        let i0 = r.catalog().index;
        r.sweep(Instant::now() + Duration::from_millis(500));
        assert_eq!(r.catalog().services["a"].len(), 1);
        assert_eq!(r.catalog().index, i0, "nothing changed");
        assert!(r.deregister("a-1"));
        assert!(r.catalog().index > i0);
        assert!(r.catalog().services.is_empty());
    }

    #[tokio::test]
    async fn refusals_are_json_named_by_their_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, routes(Registry::default())).await });
        let response = reqwest::Client::new()
            .put(format!("{url}/v1/instances/nobody/heartbeat"))
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
        r.register(reg("b-1", "b"));
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    }
}
