//! Calls another service by name.
//!
//! The client resolves the service's instances through [`Discovery`], picks one round-robin,
//! and sends the request with the caller's passport and a child `traceparent`: inside a
//! request handler both come from the request being served (a task-local the service
//! middleware sets, the equivalent of seed 004's Feign interceptor), so a call made on behalf
//! of a user acts as that user within the same trace. Outside a request (a background job) the
//! service mints a passport for itself (`service:<name>`, role `system`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::manifest::{Resilience, RetryConfig};
use crate::passport::{self, PassportKeys};
use crate::registry::Discovery;
use crate::resilience::{Balancer, Breaker, BreakerState, Bulkhead, CallOutcome, RetryBudget};
use crate::trace::{self, TraceContext};

tokio::task_local! {
    /// The request being served: set by the service middleware around every handler.
    pub static REQUEST: RequestContext;
}

/// What an outbound call inherits from the request being served.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The verified passport, as received (sharing the request's bytes).
    pub passport: http::HeaderValue,
    /// This hop's span.
    pub trace: TraceContext,
    /// When the caller stops waiting: calls made now get only what is left.
    pub deadline: Option<tokio::time::Instant>,
}

/// The header that carries the caller's remaining time budget, in milliseconds.
pub const DEADLINE_HEADER: &str = "x-tessera-deadline-ms";

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

/// Why a call to another service failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no live instance of {0}")]
    NoInstance(String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("{service} answered {status}: {body}")]
    Status {
        service: String,
        status: StatusCode,
        body: String,
    },
    #[error("unexpected answer from {0}: {1}")]
    Decode(String, String),
    /// The service's circuit breaker is open: the call was not made.
    #[error("{0} is failing (circuit open); not called")]
    CircuitOpen(String),
    /// Too many calls to the service are in flight already: the call was not made.
    #[error("too many calls to {0} in flight")]
    BulkheadFull(String),
}

impl CallError {
    /// Whether the same call may succeed if tried again (on another instance, or later).
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::NoInstance(_) | CallError::Timeout(_) | CallError::Connect(..) => true,
            CallError::Status { status, .. } => matches!(status.as_u16(), 502..=504),
            CallError::Decode(..) => false,
            // Later, yes; at once, no: the breaker or the bulkhead says the service needs air.
            CallError::CircuitOpen(_) | CallError::BulkheadFull(_) => false,
        }
    }
}

/// A cheap-to-clone client for calling services by name.
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

struct Inner {
    discovery: Discovery,
    http: reqwest::Client,
    timeout: Duration,
    keys: Arc<PassportKeys>,
    /// This service's name, for passports it mints for itself.
    me: String,
    /// Breaker, bulkhead and retry budget per called service.
    guards: Arc<Mutex<HashMap<String, Arc<Guard>>>>,
}

/// How calls to one service are protected.
struct Guard {
    /// Last good answers to GETs, served when a call fails (None: no fallback).
    fallback: Option<Mutex<HashMap<String, Bytes>>>,
    fallback_capacity: usize,
    balancer: Balancer,
    breaker: Breaker,
    bulkhead: Bulkhead,
    budget: RetryBudget,
    retry: RetryConfig,
    config: Resilience,
}

impl Guard {
    fn new(service: &str, r: &Resilience) -> Self {
        Self {
            fallback: None,
            fallback_capacity: 0,
            balancer: Balancer::new(service, r.balance, r.outlier.clone()),
            breaker: Breaker::new(service, r.breaker.clone()),
            bulkhead: Bulkhead::new(service, r.max_concurrent),
            budget: RetryBudget::new(r.retry.budget.clone()),
            retry: r.retry.clone(),
            config: r.clone(),
        }
    }
}

/// How many instances a call may try when connections are refused.
const CONNECT_ATTEMPTS: usize = 3;

impl ServiceClient {
    pub fn new(discovery: Discovery, keys: Arc<PassportKeys>, me: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client builds");
        Self {
            inner: Arc::new(Inner {
                discovery,
                http,
                timeout,
                keys,
                me: me.to_string(),
                guards: Arc::default(),
            }),
        }
    }

    /// Keeps the last good answer of each GET to `service` (up to `capacity` paths) and serves
    /// it when a later call fails for reasons of the service's health (open breaker, timeout,
    /// unreachable, 5xx): stale data over no data, as seed 004's catalog fallback does.
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
            .map(|(name, g)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "breaker": g.breaker.state().as_str(),
                        "inFlight": g.bulkhead.in_flight(),
                        "maxConcurrent": g.bulkhead.limit(),
                        "instances": g.balancer.status(),
                    }),
                )
            })
            .collect();
        serde_json::json!({ "upstreams": map })
    }

    /// The state of the breaker of calls to `service`.
    pub fn breaker_state(&self, service: &str) -> BreakerState {
        self.guard(service).breaker.state()
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                discovery: i.discovery.clone(),
                http: i.http.clone(),
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
        guard
            .breaker
            .acquire()
            .map_err(|_| CallError::CircuitOpen(service.to_string()))?;
        let _slot = match guard.bulkhead.enter() {
            Ok(slot) => slot,
            Err(_) => {
                guard.breaker.record(CallOutcome::Ignored, Duration::ZERO);
                return Err(CallError::BulkheadFull(service.to_string()));
            }
        };
        guard.budget.deposit();
        let idempotent = crate::resilience::may_repeat(
            &method,
            headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("idempotency-key")),
        );

        let context = REQUEST.try_with(|r| (r.passport.clone(), r.trace, r.deadline));
        let (passport, trace, deadline) = match context {
            Ok((p, t, d)) => (p, t.child(), d),
            Err(_) => {
                let trace = TraceContext::new_root();
                let me = format!("service:{}", inner.me);
                let token = inner
                    .keys
                    .mint_header(&me, &me, &["system".to_string()], None, &trace);
                (token, trace, None)
            }
        };
        let started = std::time::Instant::now();
        let (mut attempt, mut refused) = (0u32, 0usize);
        let mut tried: Vec<usize> = Vec::new();
        let result = loop {
            let Some(pick) = guard.balancer.pick(&instances, &tried) else {
                break Err(CallError::NoInstance(service.to_string()));
            };
            tried.push(pick.index);
            let chosen = &instances[pick.index];
            // Only what is left of the caller's deadline, and say so downstream.
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        guard.balancer.finish(pick, false, &instances);
                        break Err(CallError::Timeout(service.to_string()));
                    }
                    left.min(inner.timeout)
                }
                None => inner.timeout,
            };
            let mut req = inner
                .http
                .request(method.clone(), format!("http://{}{path}", chosen.address))
                .timeout(timeout)
                .header(DEADLINE_HEADER, timeout.as_millis().to_string())
                .header(passport::HEADER, passport.clone())
                .header(trace::TRACEPARENT, trace.header());
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            if let Some(body) = &body {
                req = req
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let outcome = match req.send().await {
                Err(e) if e.is_connect() && refused + 1 < CONNECT_ATTEMPTS.min(instances.len()) => {
                    guard.balancer.finish(pick, true, &instances);
                    refused += 1; // never reached the instance: the next one, at no cost
                    continue;
                }
                Err(e) => Err(classify(service, e)),
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(bytes) if status.is_success() => Ok((status, bytes)),
                        Ok(bytes) => Err(CallError::Status {
                            service: service.to_string(),
                            status,
                            body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                                .into_owned(),
                        }),
                        Err(e) => Err(classify(service, e)),
                    }
                }
            };
            let failed = match &outcome {
                Ok(_) => false,
                Err(CallError::Status { status, .. }) => status.is_server_error(),
                Err(_) => true,
            };
            guard.balancer.finish(pick, failed, &instances);
            let retry = match &outcome {
                Ok(_) => false,
                Err(CallError::Connect(..)) => true, // provably not processed
                Err(e) => idempotent && e.is_retryable(),
            };
            if retry && attempt + 1 < guard.retry.max_attempts && guard.budget.withdraw() {
                attempt += 1;
                metrics::counter!("tessera_retries_total", "upstream" => service.to_string())
                    .increment(1);
                tokio::time::sleep(guard.retry.backoff.delay(attempt)).await;
                continue;
            }
            break outcome;
        };
        let verdict = match &result {
            Ok(_) => CallOutcome::Success,
            Err(CallError::Status { status, .. }) if !status.is_server_error() => {
                CallOutcome::Success
            }
            Err(_) => CallOutcome::Failure,
        };
        guard.breaker.record(verdict, started.elapsed());
        result
    }
}

fn classify(service: &str, e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout(service.to_string())
    } else {
        CallError::Connect(service.to_string(), e.to_string())
    }
}

fn decode<T: DeserializeOwned>(service: &str, body: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|e| CallError::Decode(service.to_string(), e.to_string()))
}
