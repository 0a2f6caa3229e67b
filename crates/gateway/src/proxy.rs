//! The request path: route, authenticate, mint the passport, forward, wrap, log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tessera::TraceContext;
use tessera::passport::{self, PassportKeys};
use tessera::registry::Discovery;
use tessera::resilience::Limited as RateLimited;
use tessera_manifest::{AuthMode, Fallback};

use crate::envelope;
use crate::fields::Fields;
use crate::pool::{Outgoing, Pool};
use crate::routes::RouteTable;
use crate::server::{BodyError, HeaderBuf, Request};
use crate::tokens::{TokenError, TokenVerifier};
use crate::upstream::{CallFailure, Exchange, Upstream};

/// A response header by which an upstream asks the gateway to revoke the caller's session
/// at once (the token service sets it on logout). Never sent on to the client.
pub const REVOKE_SESSION: &str = "x-tessera-revoke-session";
const ISSUER: &str = "tessera-gateway";
const JSON: &[u8] = b"application/json";

pub struct Gateway {
    pub routes: RouteTable,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub discovery: Discovery,
    pub keys: PassportKeys,
    pub tokens: Option<Arc<TokenVerifier>>,
    pub pool: Pool,
    pub upstream_timeout: Duration,
    pub max_response: u64,
    /// The longest a revoked session's tokens can live (the token service's access TTL, or a
    /// safe bound), for revocations that arrive by header.
    pub revoke_for: Duration,
}

/// A forwarded request's answer, wrapped.
struct Forwarded<'a> {
    status: StatusCode,
    body: Bytes,
    /// The instance that answered, or `fallback`.
    upstream: String,
    route: &'a str,
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
                headers.push(b"content-type", JSON);
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
                headers.push(b"content-type", JSON);
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
        headers.push(b"content-type", JSON);
        headers.push(b"x-trace-id", trace_id.as_bytes());
        tessera::metrics::record_request("unrouted", "-", status.as_u16(), Duration::ZERO);
        tracing::info!(target: "access", method = "-", peer = %peer, status = status.as_u16(), trace_id, message, "access");
        envelope::error(envelope::code_for(status.as_u16()), message, trace_id)
    }
}

impl Gateway {
    /// Routes, authenticates and forwards one request; what to log of it comes back too.
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
        let (status, body, upstream, route) = match self
            .forward(req, headers, &trace, traceparent.as_bytes(), trace_id)
            .await
        {
            Ok(f) => (f.status, f.body, Some(f.upstream), Some(f.route)),
            Err(e) => (
                e.status,
                error_response(&e, trace_id, headers),
                None,
                e.route,
            ),
        };
        headers.push(b"traceparent", traceparent.as_bytes());
        headers.push(b"x-trace-id", trace_id.as_bytes());
        let access = Access {
            route,
            upstream,
            trace_id: trace_hex,
        };
        (status, body, access)
    }

    async fn forward<'a>(
        &'a self,
        req: &Request<'_>,
        headers: &mut HeaderBuf,
        trace: &TraceContext,
        traceparent: &[u8],
        trace_id: &str,
    ) -> Result<Forwarded<'a>, GatewayError<'a>> {
        let route = self.routes.find(req.path).ok_or_else(|| {
            GatewayError::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "no route for this path",
            )
        })?;
        let fail = |status, code, message: &str| {
            GatewayError::new(status, code, message).on(&route.prefix)
        };
        if let Some(limiter) = &route.per_ip {
            limiter
                .check(&req.peer.to_string())
                .map_err(|l| limited(l).on(&route.prefix))?;
        }

        // Who is calling.
        let identity = match req.fields.get("authorization") {
            None => None,
            Some(value) => {
                let token = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .ok_or_else(|| {
                        fail(
                            StatusCode::UNAUTHORIZED,
                            "unauthenticated",
                            "expected a Bearer token",
                        )
                    })?;
                let verifier = self.tokens.as_ref().ok_or_else(|| {
                    fail(
                        StatusCode::UNAUTHORIZED,
                        "unauthenticated",
                        "this gateway accepts no tokens",
                    )
                })?;
                match verifier.verify(token).await {
                    Ok(v) => Some(v),
                    Err(TokenError::Unavailable) => {
                        return Err(fail(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "cannot verify tokens right now",
                        ));
                    }
                    Err(e) => {
                        return Err(fail(
                            StatusCode::UNAUTHORIZED,
                            "unauthenticated",
                            &e.to_string(),
                        ));
                    }
                }
            }
        };
        if let (Some(limiter), Some(who)) = (&route.per_user, &identity) {
            limiter
                .check(&who.sub)
                .map_err(|l| limited(l).on(&route.prefix))?;
        }
        if identity.is_none() && route.auth == AuthMode::Required {
            return Err(fail(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this route needs an access token",
            ));
        }
        if !route.roles.is_empty() {
            let allowed = identity
                .as_ref()
                .is_some_and(|v| v.roles.iter().any(|r| route.roles.contains(r)));
            if !allowed {
                return Err(fail(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "your roles do not allow this route",
                ));
            }
        }

        // The body, bounded (the server read it, or found it too large or malformed).
        let body = match req.body {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return Err(fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is too large",
                ));
            }
            Err(BodyError::Malformed) => {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "could not read the request body",
                ));
            }
        };

        // Where to, and how.
        let upstream = self.upstreams.get(&route.service).ok_or_else(|| {
            fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_instance",
                "no live instance of the service",
            )
        })?;
        let instances = self
            .discovery
            .instances(&route.service)
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let passport = match &identity {
            Some(v) => self
                .keys
                .mint_header(ISSUER, &v.sub, &v.roles, v.sid.as_deref(), trace),
            None => self
                .keys
                .mint_header(ISSUER, passport::ANONYMOUS, &[], None, trace),
        };
        let replayable =
            tessera::resilience::may_repeat(&req.method, req.fields.contains("idempotency-key"));
        let extra = [
            (passport::HEADER, passport.as_bytes()),
            ("traceparent", traceparent),
        ];
        let request = Outgoing {
            method: &req.method,
            path_and_query: req.target,
            headers: req.fields,
            skip: not_forwarded,
            extra: &extra,
            deadline_ms: None,
            body,
            replayable,
        };
        let exchange = upstream
            .call(
                &self.pool,
                &instances,
                request,
                self.max_response,
                self.upstream_timeout,
            )
            .await;
        let Exchange { response, instance } = match exchange {
            Ok(x) => x,
            Err(CallFailure::Open) => {
                if let Some(fallback) = &route.fallback {
                    let (status, body) = fallback_response(fallback, trace_id, headers);
                    return Ok(Forwarded {
                        status,
                        body,
                        upstream: "fallback".into(),
                        route: &route.prefix,
                    });
                }
                return Err(fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "circuit_open",
                    "the service is failing; try again shortly",
                ));
            }
            Err(CallFailure::Full) => {
                return Err(fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "bulkhead_full",
                    "too many requests to this service in flight",
                ));
            }
            Err(CallFailure::NoInstance) => {
                return Err(fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_instance",
                    "no live instance of the service",
                ));
            }
            Err(CallFailure::Timeout) => {
                return Err(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the service did not answer in time",
                ));
            }
            Err(CallFailure::Unreachable | CallFailure::BadResponse) => {
                return Err(fail(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the service could not be reached",
                ));
            }
        };

        let fields = response.fields();
        if let (Some(sid), Some(tokens)) = (fields.get_str(REVOKE_SESSION), &self.tokens) {
            tokens.revoke(sid, tessera::unix_now() + self.revoke_for.as_secs());
        }
        let (status, body) = wrap(response.status, fields, &response.body, trace_id, headers)
            .map_err(|e| e.on(&route.prefix))?;
        Ok(Forwarded {
            status,
            body,
            upstream: instance,
            route: &route.prefix,
        })
    }
}

/// Wraps an upstream response in the envelope: its status and body, its fields pushed onto
/// `headers`.
fn wrap(
    status: StatusCode,
    upstream: Fields<'_>,
    body: &Bytes,
    trace_id: &str,
    headers: &mut HeaderBuf,
) -> Result<(StatusCode, Bytes), GatewayError<'static>> {
    let content_type = upstream.get("content-type");
    let is_json = content_type
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    let wrapped = if status.is_success() || status.is_redirection() || status.is_informational() {
        if body.is_empty() {
            Some(envelope::success(None, trace_id))
        } else if is_json {
            if !envelope::is_json(body) {
                return Err(GatewayError::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the service sent malformed JSON",
                ));
            }
            Some(envelope::success(Some(body), trace_id))
        } else {
            None // files, text, streams: passed through as they are
        }
    } else {
        let (code, message) = envelope::upstream_error(body).unwrap_or_else(|| {
            (
                envelope::code_for(status.as_u16()).to_string(),
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_string(),
            )
        });
        Some(envelope::error(&code, &message, trace_id))
    };
    for (name, value) in upstream.iter() {
        if !not_returned(name) {
            headers.push(name, value);
        }
    }
    Ok(match wrapped {
        Some(body) => {
            headers.push(b"content-type", JSON);
            let status = if status == StatusCode::NO_CONTENT {
                StatusCode::OK
            } else {
                status
            };
            (status, body)
        }
        None => {
            if let Some(ct) = content_type {
                headers.push(b"content-type", ct);
            }
            (status, body.clone())
        }
    })
}

/// A response the gateway makes itself.
#[derive(Debug)]
pub struct GatewayError<'a> {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub route: Option<&'a str>,
    /// For 429: (limit, seconds to wait).
    pub retry_after: Option<(u32, u64)>,
}

impl<'a> GatewayError<'a> {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Self {
        Self {
            status,
            code,
            message: message.to_string(),
            route: None,
            retry_after: None,
        }
    }

    fn on(self, route: &'a str) -> GatewayError<'a> {
        GatewayError {
            route: Some(route),
            ..self
        }
    }
}

/// The envelope of a response the gateway makes itself; its fields pushed onto `headers`.
fn error_response(e: &GatewayError<'_>, trace_id: &str, headers: &mut HeaderBuf) -> Bytes {
    headers.push(b"content-type", JSON);
    if let Some((limit, wait)) = e.retry_after {
        let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (limit, wait) = (a.format(limit).as_bytes(), b.format(wait).as_bytes());
        headers.push(b"retry-after", wait);
        headers.push(b"ratelimit-limit", limit);
        headers.push(b"ratelimit-remaining", b"0");
        headers.push(b"ratelimit-reset", wait);
    }
    envelope::error(e.code, &e.message, trace_id)
}

fn limited<'a>(l: RateLimited) -> GatewayError<'a> {
    metrics::counter!("tessera_rate_limited_total").increment(1);
    GatewayError {
        retry_after: Some((l.limit, l.retry_after)),
        ..GatewayError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        )
    }
}

/// The route's configured answer while its service's breaker is open.
fn fallback_response(f: &Fallback, trace_id: &str, headers: &mut HeaderBuf) -> (StatusCode, Bytes) {
    headers.push(b"content-type", JSON);
    headers.push(b"x-tessera-fallback", b"circuit-open");
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::OK);
    (status, envelope::success(Some(f.body.as_bytes()), trace_id))
}

/// Fields that concern one connection only (RFC 9110 §7.6.1), and the framing the gateway
/// sets itself.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&str; 11] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Upstream headers that do not go back to the client: hop-by-hop ones, `Content-Type` (set
/// for the wrapped body), the gateway's own trace fields (its values win) and internal
/// `x-tessera-*` signals.
fn not_returned(name: &[u8]) -> bool {
    is_hop_by_hop(name)
        || name.eq_ignore_ascii_case(b"content-type")
        || name.eq_ignore_ascii_case(b"traceparent")
        || name.eq_ignore_ascii_case(b"x-trace-id")
        || name
            .get(..10)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"x-tessera-"))
}

/// Client headers that do not go upstream: hop-by-hop ones, `Expect` (the body is already
/// read), and never the client's own passport, trace parent or deadline (replaced) or access
/// token (the passport speaks for it inside).
fn not_forwarded(name: &[u8]) -> bool {
    const REPLACED: [&str; 5] = [
        "authorization",
        "expect",
        passport::HEADER,
        "traceparent",
        tessera::client::DEADLINE_HEADER,
    ];
    is_hop_by_hop(name)
        || REPLACED
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

impl Gateway {
    /// Every upstream's breaker state and bulkhead use, as JSON.
    pub fn resilience_status(&self) -> String {
        let upstreams: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), u.status()))
            .collect();
        serde_json::json!({ "upstreams": upstreams }).to_string()
    }
}
