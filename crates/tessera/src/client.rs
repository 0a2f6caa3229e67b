//! Calls another service by name.
//!
//! The client resolves the service's instances through [`Discovery`], picks one round-robin,
//! and sends the request with the caller's passport and a child `traceparent`: inside a
//! request handler both come from the request being served (a task-local the service
//! middleware sets, the equivalent of seed 004's Feign interceptor), so a call made on behalf
//! of a user acts as that user within the same trace. Outside a request (a background job) the
//! service mints a passport for itself (`service:<name>`, role `system`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::passport::{self, PassportKeys};
use crate::registry::Discovery;
use crate::trace::{self, TraceContext};

tokio::task_local! {
    /// The request being served: set by the service middleware around every handler.
    pub static REQUEST: RequestContext;
}

/// What an outbound call inherits from the request being served.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The verified passport, as received.
    pub passport: Arc<str>,
    /// This hop's span.
    pub trace: TraceContext,
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
    Status { service: String, status: StatusCode, body: String },
    #[error("unexpected answer from {0}: {1}")]
    Decode(String, String),
}

impl CallError {
    /// Whether the same call may succeed if tried again (on another instance, or later).
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::NoInstance(_) | CallError::Timeout(_) | CallError::Connect(..) => true,
            CallError::Status { status, .. } => matches!(status.as_u16(), 502..=504),
            CallError::Decode(..) => false,
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
    next: AtomicUsize,
    timeout: Duration,
    keys: Arc<PassportKeys>,
    /// This service's name, for passports it mints for itself.
    me: String,
}

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
                next: AtomicUsize::new(0),
                timeout,
                keys,
                me: me.to_string(),
            }),
        }
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                discovery: i.discovery.clone(),
                http: i.http.clone(),
                next: AtomicUsize::new(0),
                timeout,
                keys: i.keys.clone(),
                me: i.me.clone(),
            }),
        }
    }

    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// `GET` a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, service: &str, path: &str) -> Result<T, CallError> {
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
        let body = serde_json::to_vec(body).map_err(|e| CallError::Decode(service.into(), e.to_string()))?;
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
        self.send_with(method, service, path, body, &[]).await.map(|(_, b)| b)
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
        let inner = &self.inner;
        let instances = inner
            .discovery
            .instances(service)
            .filter(|list| !list.is_empty())
            .ok_or_else(|| CallError::NoInstance(service.to_string()))?;
        let pick = &instances[inner.next.fetch_add(1, Ordering::Relaxed) % instances.len()];

        let (passport, trace) = match REQUEST.try_with(|r| (r.passport.clone(), r.trace)) {
            Ok((p, t)) => (p, t.child()),
            Err(_) => {
                let trace = TraceContext::new_root();
                let me = format!("service:{}", inner.me);
                let token = inner.keys.mint(&me, &me, &["system".to_string()], None, &trace);
                (Arc::from(token), trace)
            }
        };
        let mut req = inner
            .http
            .request(method, format!("http://{}{path}", pick.address))
            .timeout(inner.timeout)
            .header(passport::HEADER, &*passport)
            .header(trace::TRACEPARENT, trace.header());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.header(http::header::CONTENT_TYPE, "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| classify(service, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(service, e))?;
        if !status.is_success() {
            return Err(CallError::Status {
                service: service.to_string(),
                status,
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
        }
        Ok((status, bytes))
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
