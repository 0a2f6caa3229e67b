//! Calls another service by name.
//!
//! The client resolves the service's instances through [`Discovery`], picks one (power of
//! two choices on requests in flight, by default), guards the call as the gateway does
//! (`tessera_resilience::call`: breaker, bulkhead, budgeted retries, outlier ejection),
//! and sends the request with the caller's passport and a child `traceparent`: inside a
//! request handler both come from the request being served (a task-local the service
//! middleware sets, as a Feign request interceptor does in Spring Cloud), so a call made on behalf
//! of a user acts as that user within the same trace. Outside a request (a background job) the
//! service mints a passport for itself (`service:<name>`, role `system`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http1::fields::Fields;
use crate::http1::pool::{Incoming, Outgoing, Pool, SendError};
use crate::passport::{self, PassportKeys};
use crate::registry::Discovery;
use crate::resilience::Resilience;
use crate::resilience::{self, BreakerState, Limits, Rejected, Retryable};
use crate::trace::{Kind, Span, TraceContext};

mod error;
mod target;

use target::request_target;

pub use error::CallError;
pub use tessera_http1::DEADLINE_HEADER;
pub use tessera_trace::{REQUEST, RequestContext};

/// The deadline a request's header gives, from now.
pub fn deadline_of(headers: &http::HeaderMap) -> Option<tokio::time::Instant> {
    let ms: u64 = headers
        .get(DEADLINE_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(tokio::time::Instant::now() + Duration::from_millis(ms.min(24 * 3600 * 1000)))
}

/// A cheap-to-clone client for calling services by name.
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

struct Inner {
    discovery: Discovery,
    /// Shared with the clients `with_timeout` makes.
    transport: Arc<Transport>,
    timeout: Duration,
    keys: Arc<PassportKeys>,
    /// This service's name, for passports it mints for itself.
    me: String,
    /// Breaker, bulkhead and retry budget per called service.
    guards: Arc<Mutex<HashMap<String, Arc<Guard>>>>,
}

/// Keep-alive connections to every instance called, through the lean HTTP/1.1 client.
struct Transport {
    pool: Pool,
    /// When idle connections were last checked for closed ones (ms since `created`).
    swept: AtomicU64,
    created: std::time::Instant,
}

/// How calls to one service are protected: the guarded-call loop the gateway uses too, and
/// an optional cache of last good answers.
struct Guard {
    /// Last good answers to GETs, served when a call fails (None: no fallback).
    fallback: Option<Mutex<HashMap<String, Bytes>>>,
    fallback_capacity: usize,
    guard: resilience::Guard,
    config: Resilience,
    /// Who its instances must prove to be, when mutual TLS is on.
    identity: Option<tessera_tls::Identity>,
}

impl Guard {
    fn new(service: &str, r: &Resilience) -> Self {
        Self {
            fallback: None,
            fallback_capacity: 0,
            guard: resilience::Guard::new(service, r),
            config: r.clone(),
            identity: tessera_tls::internal::get()
                .map(|tls| tessera_tls::Identity::service(&tls.system, service)),
        }
    }
}

/// Idle keep-alive connections kept per instance.
const IDLE_PER_INSTANCE: usize = 64;
/// The largest answer read.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// How often idle connections whose instance closed them (or went away) are dropped.
const SWEEP_EVERY_MS: u64 = 10_000;

impl ServiceClient {
    pub fn new(discovery: Discovery, keys: Arc<PassportKeys>, me: &str, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                discovery,
                transport: Arc::new(Transport {
                    pool: Pool::new(IDLE_PER_INSTANCE, Duration::from_secs(1)),
                    swept: AtomicU64::new(0),
                    created: std::time::Instant::now(),
                }),
                timeout,
                keys,
                me: me.to_string(),
                guards: Arc::default(),
            }),
        }
    }

    /// Keeps the last good answer of each GET to `service` (up to `capacity` paths) and serves
    /// it when a later call fails for reasons of the service's health (open breaker, timeout,
    /// unreachable, 5xx): stale data over no data (a cache fallback, as Resilience4j users write around a call).
    pub fn with_fallback_cache(self, service: &str, capacity: usize) -> Self {
        {
            let mut guards = self.inner.guards.lock().unwrap_or_else(|e| e.into_inner());
            let current = guards.get(service).cloned();
            let mut guard = match current {
                Some(g) => Guard::new(service, &g.config),
                None => Guard::new(service, &Resilience::default()),
            };
            guard.fallback = Some(Mutex::new(HashMap::new()));
            guard.fallback_capacity = capacity.max(1);
            guards.insert(service.to_string(), Arc::new(guard));
        }
        self
    }

    /// Protects calls to `service` with `resilience` instead of the defaults.
    pub fn with_resilience(self, service: &str, resilience: &Resilience) -> Self {
        self.inner
            .guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                service.to_string(),
                Arc::new(Guard::new(service, resilience)),
            );
        self
    }

    fn guard(&self, service: &str) -> Arc<Guard> {
        let mut guards = self.inner.guards.lock().unwrap_or_else(|e| e.into_inner());
        guards
            .entry(service.to_string())
            .or_insert_with(|| Arc::new(Guard::new(service, &Resilience::default())))
            .clone()
    }

    /// Per called service: breaker state, calls in flight, and each instance's balancing state.
    pub fn status(&self) -> serde_json::Value {
        let guards = self.inner.guards.lock().unwrap_or_else(|e| e.into_inner());
        let map: serde_json::Map<String, serde_json::Value> = guards
            .iter()
            .map(|(name, g)| (name.clone(), g.guard.status()))
            .collect();
        serde_json::json!({ "upstreams": map })
    }

    /// The state of the breaker of calls to `service`.
    pub fn breaker_state(&self, service: &str) -> BreakerState {
        self.guard(service).guard.breaker.state()
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                discovery: i.discovery.clone(),
                transport: i.transport.clone(),
                timeout,
                keys: i.keys.clone(),
                me: i.me.clone(),
                guards: i.guards.clone(),
            }),
        }
    }

    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// `GET` a JSON resource.
    pub async fn get<T: DeserializeOwned>(
        &self,
        service: &str,
        path: &str,
    ) -> Result<T, CallError> {
        let body = self.send(Method::GET, service, path, None).await?;
        decode(service, &body)
    }

    /// `POST` a JSON body, decode a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        service: &str,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CallError::Decode(service.into(), e.to_string()))?;
        let answer = self.send(Method::POST, service, path, Some(body)).await?;
        decode(service, &answer)
    }

    /// Sends one request; a non-2xx answer is [`CallError::Status`].
    pub async fn send(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, CallError> {
        self.send_with(method, service, path, body, &[])
            .await
            .map(|(_, b)| b)
    }

    /// Sends one request with extra headers; returns the status (2xx) and body.
    pub async fn send_with(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), CallError> {
        let guard = self.guard(service);
        let cacheable = method == Method::GET && guard.fallback.is_some();
        let result = self
            .send_guarded(method, service, path, body, headers, &guard)
            .await;
        let Some(cache) = guard.fallback.as_ref().filter(|_| cacheable) else {
            return result;
        };
        match result {
            Ok((status, bytes)) => {
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= guard.fallback_capacity
                    && !cache.contains_key(path)
                    && let Some(victim) = cache.keys().next().cloned()
                {
                    cache.remove(&victim);
                }
                cache.insert(path.to_string(), bytes.clone());
                Ok((status, bytes))
            }
            Err(e) => {
                let health = match &e {
                    CallError::Status { status, .. } => status.is_server_error(),
                    CallError::Decode(..) => false,
                    _ => true,
                };
                let cached = cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(path)
                    .cloned();
                match cached {
                    Some(bytes) if health => {
                        tracing::warn!(service, path, error = %e, "call failed; serving the last good answer");
                        metrics::counter!("tessera_fallbacks_total", "upstream" => service.to_string()).increment(1);
                        Ok((StatusCode::OK, bytes))
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn send_guarded(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        guard: &Guard,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let inner = &self.inner;
        let instances = inner
            .discovery
            .instances(service)
            .filter(|list| !list.is_empty())
            .ok_or_else(|| CallError::NoInstance(service.to_string()))?;
        let idempotent = crate::resilience::may_repeat(
            &method,
            headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("idempotency-key")),
        );

        let context = REQUEST.try_with(|r| (r.passport.clone(), r.trace, r.deadline));
        let mut root = Span::NONE;
        let (passport, trace, deadline) = match context {
            // The attempts' spans are children of the request's span.
            Ok((p, t, d)) => (p, t, d),
            Err(_) => {
                // Outside a request (a background job): the call is a trace of its own, its
                // root an internal span around the attempts.
                let trace = TraceContext::new_root();
                root = Span::open(&trace, None, "call", Kind::Internal);
                if root.is_recording() {
                    root.rename(format!("{} calls {service}", inner.me));
                }
                let me = format!("service:{}", inner.me);
                let token = inner
                    .keys
                    .mint_header(&me, &me, &["system".to_string()], None, &trace);
                (token, trace, None)
            }
        };
        // Only what is left of the caller's deadline, and each attempt says so downstream.
        let limits = Limits {
            deadline,
            within: None,
            per_try: guard.guard.per_try(inner.timeout),
        };
        let (method, body, passport, trace) = (&method, &body, &passport, &trace);
        let identity = guard.identity.as_ref();
        let result = guard
            .guard
            .call(
                &instances,
                idempotent,
                limits,
                |chosen, try_for| async move {
                    // Each attempt is a client span of its own, the parent of what the
                    // instance does: retries show as siblings.
                    let (mut span, attempt) = Span::child_of(trace, "call", Kind::Client);
                    if span.is_recording() {
                        span.name_pair(method.as_str(), service);
                        span.set("http.request.method", method);
                        span.set("peer.service", service);
                        span.set("tessera.instance", &chosen.id);
                        span.set("url.path", path);
                        // Dropped before it completes (its time ran out): failed, saying so.
                        span.fail("timed out or cancelled");
                    }
                    let answer = self
                        .exchange(
                            &chosen.address,
                            method,
                            path,
                            body,
                            headers,
                            passport,
                            &attempt,
                            try_for,
                            idempotent,
                            identity,
                        )
                        .await;
                    span.clear_failure();
                    match &answer {
                        Ok(a) => {
                            span.set("http.response.status_code", a.status.as_u16());
                            if a.status.is_server_error() {
                                span.fail("the instance answered with a server error");
                            }
                        }
                        Err(SendError::Connect) => span.fail("cannot connect"),
                        Err(SendError::Failed) => span.fail("the exchange failed"),
                        Err(SendError::TooLarge) => span.fail("the answer is too large"),
                    }
                    match answer {
                        Err(SendError::Connect) => Err(CallError::Connect(
                            service.to_string(),
                            format!("cannot connect to {}", chosen.address),
                        )),
                        Err(SendError::Failed) => Err(CallError::Broken(
                            service.to_string(),
                            format!("the exchange with {} failed", chosen.address),
                        )),
                        Err(SendError::TooLarge) => Err(CallError::Decode(
                            service.to_string(),
                            format!("an answer over {MAX_ANSWER} bytes"),
                        )),
                        Ok(answer) if answer.status.is_success() => Ok(Answer(answer)),
                        Ok(answer) => Err(CallError::Status {
                            service: service.to_string(),
                            status: answer.status,
                            body: String::from_utf8_lossy(
                                &answer.body[..answer.body.len().min(512)],
                            )
                            .into_owned(),
                        }),
                    }
                },
            )
            .await;
        let result = match result {
            Ok(Ok(Answer(answer))) => Ok((answer.status, answer.body)),
            Ok(Err(e)) => Err(e),
            Err(Rejected::Open) => Err(CallError::CircuitOpen(service.to_string())),
            Err(Rejected::Full) => Err(CallError::BulkheadFull(service.to_string())),
            Err(Rejected::NoInstance) => Err(CallError::NoInstance(service.to_string())),
            Err(Rejected::Timeout) => Err(CallError::Timeout(service.to_string())),
        };
        if let Err(e) = &result {
            root.fail(e.to_string());
        }
        result
    }
}

/// A 2xx answer: final.
struct Answer(Incoming);

impl Retryable for Answer {
    fn is_failure(&self) -> bool {
        false
    }

    fn is_retryable(&self) -> bool {
        false
    }
}

impl ServiceClient {
    /// One request to `address`, with the platform's headers; `timeout` is what it has (the
    /// guard's loop enforces it), sent on as the deadline.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        address: &str,
        method: &Method,
        path: &str,
        body: &Option<Vec<u8>>,
        headers: &[(&str, &str)],
        passport: &http::HeaderValue,
        trace: &TraceContext,
        timeout: Duration,
        idempotent: bool,
        identity: Option<&tessera_tls::Identity>,
    ) -> Result<Incoming, SendError> {
        let t = &*self.inner.transport;
        let pool = &t.pool;
        let now = t.created.elapsed().as_millis() as u64;
        let swept = t.swept.load(Ordering::Relaxed);
        if now.saturating_sub(swept) >= SWEEP_EVERY_MS
            && t.swept
                .compare_exchange(swept, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            pool.sweep();
        }
        let mut traceparent = [0u8; 55];
        trace.write_header(&mut traceparent);
        let mut extra: Vec<(&str, &[u8])> = Vec::with_capacity(headers.len() + 2);
        extra.push((passport::HEADER, passport.as_bytes()));
        if body.is_some() {
            extra.push(("content-type", b"application/json"));
        }
        extra.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        let target = request_target(path);
        let req = Outgoing {
            method,
            path_and_query: &target,
            headers: Fields::empty(),
            skip: |_| false,
            extra: &extra,
            deadline_ms: Some(timeout.as_millis() as u64),
            traceparent: Some(&traceparent),
            body: body.as_deref().unwrap_or_default(),
            // A connection found closed under the request is retried once on a fresh one only
            // when nothing of it can have been acted on twice (the retry policy's rule).
            replayable: idempotent,
            upgrade: false,
            identity,
        };
        pool.send(address, &req, MAX_ANSWER).await
    }
}

/// An answer's body read as `T`.
fn decode<T: DeserializeOwned>(service: &str, body: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|e| CallError::Decode(service.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Instance;
    use tokio::io::AsyncReadExt;

    /// An instance that reads each request's head, counts it, and hangs up without answering.
    async fn hangs_up() -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    // Dropped: the connection closes with no answer.
                });
            }
        });
        (address, seen)
    }

    fn client_for(address: &str) -> ServiceClient {
        let discovery = Discovery::fixed([Instance {
            id: "flaky-1".into(),
            service: "flaky".into(),
            address: address.into(),
            version: "test".into(),
            metadata: Default::default(),
            weight: None,
        }]);
        let keys =
            Arc::new(PassportKeys::from_spec(&PassportKeys::generate_spec(), "test").unwrap());
        ServiceClient::new(discovery, keys, "caller", Duration::from_secs(2))
    }

    #[tokio::test]
    async fn a_call_that_may_have_been_acted_on_is_not_repeated_unless_it_may_be() {
        let (address, seen) = hangs_up().await;
        let client = client_for(&address);
        // A POST without an idempotency key went out: it may have been acted on, so it is
        // reported as such and sent once only.
        let e = client
            .send(Method::POST, "flaky", "/v1/things", Some(b"{}".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Broken(..)), "{e}");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // With a key (or a GET), the retry policy may send it again.
        seen.store(0, Ordering::SeqCst);
        let e = client
            .send_with(
                Method::POST,
                "flaky",
                "/v1/things",
                Some(b"{}".to_vec()),
                &[("idempotency-key", "k1")],
            )
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Broken(..)), "{e}");
        assert!(seen.load(Ordering::SeqCst) > 1, "retried");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = client_for(&format!("127.0.0.1:{port}"))
            .send(Method::POST, "flaky", "/v1/things", None)
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Connect(..)), "{e}");
    }
}
