//! How the control plane calls a service's operator routes (`/status/*`, `tessera::status`):
//! its sagas for the console, a configuration change to check before it is taken.
//!
//! As every caller of a service must, with a passport: minted for the principal who asked
//! (`admin`, roles `admin`; the supervisor and the rest with role `system`, which may read but
//! not act), issued by `tessera-control`, over mutual TLS when the system has it (services
//! accept the control plane as a caller).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tessera::identity::Principal;
use tessera::passport::{self, PassportKeys};
use tessera::registry::Instance;
use tessera::{ApiError, TraceContext};

use crate::policy::Caller;

/// Calls services' operator routes with the system's passport keys.
#[derive(Clone)]
pub struct Operator {
    /// The system's passport keys (`TESSERA_PASSPORT_KEYS`): none, and no service can be
    /// asked (the routes that would say so).
    keys: Option<Arc<PassportKeys>>,
}

/// The most a service's answer may hold.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A call to make.
pub struct Call<'a, Q: serde::Serialize = ()> {
    pub method: reqwest::Method,
    pub path: &'a str,
    pub query: Option<&'a Q>,
    pub body: Option<&'a Value>,
}

impl<'a> Call<'a> {
    /// `method path`, with no query or body.
    pub fn new(method: reqwest::Method, path: &'a str) -> Self {
        Call {
            method,
            path,
            query: None,
            body: None,
        }
    }
}

impl<'a, Q: serde::Serialize> Call<'a, Q> {
    /// The same call, with `query` as its query string.
    pub fn with_query<R: serde::Serialize>(self, query: &'a R) -> Call<'a, R> {
        Call {
            method: self.method,
            path: self.path,
            query: Some(query),
            body: self.body,
        }
    }

    /// The same call, with `body` (JSON).
    pub fn with_body(self, body: &'a Value) -> Self {
        Call {
            body: Some(body),
            ..self
        }
    }
}

impl Operator {
    pub fn new(keys: Option<Arc<PassportKeys>>) -> Self {
        Self { keys }
    }

    /// Calls `call.path` on `instance` as `caller`; the service's status and JSON answer.
    pub async fn call<Q: serde::Serialize>(
        &self,
        caller: &Caller,
        instance: &Instance,
        call: Call<'_, Q>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let (http, base) = client_for(instance)?;
        self.send(caller, &instance.id, http, &base, call).await
    }

    /// Calls `call.path` on a gateway's admin listener (`address`, plain HTTP: it serves no
    /// TLS, and is bound where only the system's hosts reach it) as `caller`.
    pub async fn call_gateway<Q: serde::Serialize>(
        &self,
        caller: &Caller,
        gateway: &str,
        address: &str,
        call: Call<'_, Q>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(ApiError::internal)?;
        self.send(caller, gateway, http, &format!("http://{address}"), call)
            .await
    }

    /// Sends `call` with a passport minted for `caller` to `base` (process `id`).
    async fn send<Q: serde::Serialize>(
        &self,
        caller: &Caller,
        id: &str,
        http: reqwest::Client,
        base: &str,
        call: Call<'_, Q>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let keys = self.keys.as_ref().ok_or_else(|| {
            ApiError::unavailable("the control plane has no passport keys (TESSERA_PASSPORT_KEYS)")
        })?;
        let roles = match caller.principal {
            Principal::Admin => vec!["admin".to_string()],
            _ => vec!["system".to_string()],
        };
        let subject = caller.principal.to_string();
        let trace = TraceContext::new_root();
        let minted = keys.mint_header(passport::CONTROL_ISSUER, &subject, &roles, None, &trace);
        let unreachable = |e: reqwest::Error| {
            tracing::info!(error = %e, instance = %id, path = call.path, "a process did not answer the control plane");
            ApiError::unavailable(format!("{id} did not answer"))
        };
        let mut request = http.request(call.method, format!("{base}{}", call.path));
        if let Some(query) = call.query {
            request = request.query(query);
        }
        if let Some(body) = call.body {
            request = request.json(body);
        }
        let resp = request
            .header(passport::HEADER, minted)
            .header("traceparent", trace.header())
            .send()
            .await
            .map_err(unreachable)?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = resp.bytes().await.map_err(unreachable)?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::unavailable(format!("{id} answered too much")));
        }
        let value = serde_json::from_slice(&body).map_err(|_| {
            ApiError::unavailable(format!("{id} answered something else than JSON"))
        })?;
        Ok((status, value))
    }
}

/// A client for `instance`'s main port, and its base URL: over mutual TLS when the system has
/// it, expecting the instance's service's identity.
fn client_for(instance: &Instance) -> Result<(reqwest::Client, String), ApiError> {
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    let scheme = match tessera::tls::internal::get() {
        Some(tls) => {
            let expected = tls.identity_of(&format!("service:{}", instance.service));
            let config = tls
                .client_config_for(&expected)
                .map_err(ApiError::internal)?;
            http = http.use_preconfigured_tls(config);
            "https"
        }
        None => "http",
    };
    let http = http.build().map_err(ApiError::internal)?;
    Ok((http, format!("{scheme}://{}", instance.address)))
}

/// The service's answer as ours, its status kept (a 404 or 409 of the service means the same
/// here), except a refusal of the control plane itself (401, 403: its passport keys or clock
/// disagree with the service's), which is the service's fault to the caller, not theirs: 502.
pub fn relay((status, body): (StatusCode, Value)) -> Response {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::warn!(%status, answer = %body, "a service refused the control plane's passport");
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "refused_by_service",
            format!("the service refused the control plane's call ({status})"),
        )
        .into_response();
    }
    (status, axum::Json(body)).into_response()
}
