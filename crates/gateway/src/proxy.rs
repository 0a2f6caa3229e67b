//! The request path, as a composition of its stages: route, then limit by address,
//! authenticate, limit by caller, authorize, forward, wrap; and the access record once the
//! answer is written.
//!
//! Each stage is a plain function (or method) over borrowed parts of the request in its own
//! file, with the reasoning for what it decides: `limit.rs`, `authenticate.rs`,
//! `authorize.rs`, `forward.rs`, `wrap.rs`. A stage refuses with a `GatewayError`, which ends
//! the request with `wrap::refusal`. The order is part of the behaviour: the address's rate
//! limit comes before any token is verified (a flood of made-up tokens costs a bucket lookup
//! each), the caller's rate limit before the roles check, and nothing reaches an upstream
//! before authorization.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tessera::TraceContext;

use crate::error::GatewayError;
use crate::forward::Forwarder;
use crate::routes::{CompiledRoute, RouteTable};
use crate::server::{HeaderBuf, Request};
use crate::tokens::TokenVerifier;
use crate::upstream::{CallFailure, Exchange};
use crate::{authenticate, authorize, envelope, forward, limit, wrap};

pub struct Gateway {
    pub routes: RouteTable,
    pub tokens: Option<Arc<TokenVerifier>>,
    /// The longest a revoked session's tokens can live (the token service's access TTL, or a
    /// safe bound), for revocations that arrive by header.
    pub revoke_for: Duration,
    pub forwarder: Forwarder,
}

/// A forwarded request's answer, wrapped.
struct Forwarded {
    status: StatusCode,
    body: Bytes,
    /// The instance that answered, or `fallback`.
    upstream: String,
}

/// A proxied request's access record, logged and counted once its answer is written.
pub struct Access<'a> {
    route: Option<&'a str>,
    upstream: Option<String>,
    trace_id: [u8; 32],
}

impl crate::server::Handler for Gateway {
    type Done<'a> = Option<Access<'a>>;

    async fn handle<'a>(
        &'a self,
        req: &'a Request<'a>,
        headers: &mut HeaderBuf,
    ) -> (StatusCode, Bytes, Option<Access<'a>>) {
        match req.path {
            "/health/live" | "/health/ready" => {
                headers.push(b"content-type", wrap::JSON);
                (
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ready\"}"),
                    None,
                )
            }
            "/metrics" => {
                headers.push(b"content-type", b"text/plain; version=0.0.4");
                (
                    StatusCode::OK,
                    Bytes::from(tessera::metrics::render()),
                    None,
                )
            }
            "/status/resilience" => {
                headers.push(b"content-type", wrap::JSON);
                (StatusCode::OK, Bytes::from(self.resilience_status()), None)
            }
            _ => {
                let (status, body, access) = self.proxy(req, headers).await;
                (status, body, Some(access))
            }
        }
    }

    /// The access log line and the request metrics, once the answer is written: the time
    /// they take is not added to the client's.
    fn done(&self, req: &Request<'_>, status: StatusCode, access: Option<Access<'_>>) {
        let Some(access) = access else { return };
        let elapsed = req.start.elapsed();
        tessera::metrics::record_request(
            access.route.unwrap_or("unrouted"),
            req.method.as_str(),
            status.as_u16(),
            elapsed,
        );
        let trace_id = std::str::from_utf8(&access.trace_id).unwrap_or("-");
        tracing::info!(
            target: "access",
            method = req.method.as_str(),
            path = req.path,
            status = status.as_u16(),
            latency_ms = elapsed.as_micros() as f64 / 1000.0,
            trace_id,
            upstream = access.upstream.as_deref().unwrap_or("-"),
            "access"
        );
    }

    fn malformed(
        &self,
        status: StatusCode,
        message: &str,
        peer: IpAddr,
        headers: &mut HeaderBuf,
    ) -> Bytes {
        let trace = TraceContext::new_root();
        let mut trace_id = [0u8; 32];
        let trace_id = tessera::trace::hex(&trace.trace_id, &mut trace_id);
        headers.push(b"content-type", wrap::JSON);
        headers.push(b"x-trace-id", trace_id.as_bytes());
        tessera::metrics::record_request("unrouted", "-", status.as_u16(), Duration::ZERO);
        tracing::info!(target: "access", method = "-", peer = %peer, status = status.as_u16(), trace_id, message, "access");
        envelope::error(envelope::code_for(status.as_u16()), message, trace_id)
    }
}

impl Gateway {
    /// Routes and passes one request through the stages; what to log of it comes back too.
    async fn proxy<'a>(
        &'a self,
        req: &Request<'_>,
        headers: &mut HeaderBuf,
    ) -> (StatusCode, Bytes, Access<'a>) {
        let parent = req
            .fields
            .get_str(tessera::trace::TRACEPARENT)
            .and_then(TraceContext::parse);
        let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
        let mut trace_hex = [0u8; 32];
        let trace_id = tessera::trace::hex(&trace.trace_id, &mut trace_hex);
        let traceparent = trace.header_value();
        let route = self.routes.find(req.path);
        let answer = match route {
            None => Err(GatewayError::ROUTE_NOT_FOUND),
            Some(route) => {
                self.stages(
                    route,
                    req,
                    headers,
                    &trace,
                    traceparent.as_bytes(),
                    trace_id,
                )
                .await
            }
        };
        let (status, body, upstream) = match answer {
            Ok(f) => (f.status, f.body, Some(f.upstream)),
            Err(e) => (e.status, wrap::refusal(&e, trace_id, headers), None),
        };
        headers.push(b"traceparent", traceparent.as_bytes());
        headers.push(b"x-trace-id", trace_id.as_bytes());
        let access = Access {
            route: route.map(|r| r.prefix.as_str()),
            upstream,
            trace_id: trace_hex,
        };
        (status, body, access)
    }

    /// The stages of a routed request, in order.
    async fn stages(
        &self,
        route: &CompiledRoute,
        req: &Request<'_>,
        headers: &mut HeaderBuf,
        trace: &TraceContext,
        traceparent: &[u8],
        trace_id: &str,
    ) -> Result<Forwarded, GatewayError> {
        let tokens = self.tokens.as_deref();
        limit::per_ip(route, req.peer)?;
        let caller = authenticate::caller(tokens, &req.fields).await?;
        let caller = caller.as_deref();
        limit::per_user(route, caller)?;
        authorize::check(route, caller)?;
        let body = forward::body(req.body)?;
        let called = self
            .forwarder
            .call(route, req, body, caller, trace, traceparent)
            .await;
        let Exchange { response, instance } = match (called, &route.fallback) {
            (Ok(exchange), _) => exchange,
            (Err(CallFailure::Open), Some(fallback)) => {
                let (status, body) = wrap::fallback(fallback, trace_id, headers);
                return Ok(Forwarded {
                    status,
                    body,
                    upstream: "fallback".into(),
                });
            }
            (Err(failure), _) => return Err(forward::refusal(failure)),
        };
        let fields = response.fields();
        authenticate::revoke_if_asked(tokens, &fields, self.revoke_for);
        let (status, body) =
            wrap::answer(response.status, fields, &response.body, trace_id, headers)?;
        Ok(Forwarded {
            status,
            body,
            upstream: instance,
        })
    }
}

impl Gateway {
    /// Every upstream's breaker state and bulkhead use, as JSON.
    pub fn resilience_status(&self) -> String {
        let upstreams: serde_json::Map<String, serde_json::Value> = self
            .forwarder
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), u.status()))
            .collect();
        serde_json::json!({ "upstreams": upstreams }).to_string()
    }
}
