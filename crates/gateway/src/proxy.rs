//! The request path: route, authenticate, mint the passport, forward, wrap, log.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tessera::TraceContext;
use tessera::manifest::{AuthMode, Fallback};
use tessera::passport::{self, PassportKeys};
use tessera::registry::Discovery;
use tessera::resilience::Limited as RateLimited;

use crate::envelope;
use crate::pool::{Outgoing, Pool};
use crate::routes::RouteTable;
use crate::tokens::{TokenError, TokenVerifier};
use crate::upstream::{CallFailure, Exchange, Upstream};

/// A response header by which an upstream asks the gateway to revoke the caller's session
/// at once (the token service sets it on logout). Never sent on to the client.
pub const REVOKE_SESSION: &str = "x-tessera-revoke-session";
const ISSUER: &str = "tessera-gateway";

pub type Body = Full<Bytes>;

pub struct Gateway {
    pub routes: RouteTable,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub discovery: Discovery,
    pub keys: PassportKeys,
    pub tokens: Option<Arc<TokenVerifier>>,
    pub pool: Pool,
    pub upstream_timeout: Duration,
    pub max_body: u64,
    pub max_response: u64,
    /// The longest a revoked session's tokens can live (the token service's access TTL, or a
    /// safe bound), for revocations that arrive by header.
    pub revoke_for: Duration,
}

/// What one request did, for the access log.
struct Outcome {
    status: u16,
    upstream: Option<String>,
}

impl Gateway {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: IpAddr,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone(); // shares the request line's bytes
        let parent = req
            .headers()
            .get(tessera::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
        let mut trace_id = [0u8; 32];
        let trace_id = tessera::trace::hex(&trace.trace_id, &mut trace_id);
        let traceparent = trace.header_value();
        let (mut response, outcome, route) = match self
            .forward(req, peer, &trace, &traceparent, trace_id)
            .await
        {
            Ok((resp, upstream, route)) => {
                let status = resp.status().as_u16();
                (
                    resp,
                    Outcome {
                        status,
                        upstream: Some(upstream),
                    },
                    route,
                )
            }
            Err(e) => {
                let status = e.status.as_u16();
                (
                    error_response(&e, trace_id),
                    Outcome {
                        status,
                        upstream: None,
                    },
                    e.route,
                )
            }
        };
        let headers = response.headers_mut();
        headers.insert(HeaderName::from_static("traceparent"), traceparent);
        if let Ok(v) = HeaderValue::from_str(trace_id) {
            headers.insert(HeaderName::from_static("x-trace-id"), v);
        }
        let elapsed = start.elapsed();
        tessera::metrics::record_request(
            route.unwrap_or("unrouted"),
            method.as_str(),
            outcome.status,
            elapsed,
        );
        tracing::info!(
            target: "access",
            method = method.as_str(),
            path = uri.path(),
            status = outcome.status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            trace_id,
            upstream = outcome.upstream.as_deref().unwrap_or("-"),
            "access"
        );
        Ok(response)
    }

    async fn forward<'a>(
        &'a self,
        req: Request<Incoming>,
        peer: IpAddr,
        trace: &TraceContext,
        traceparent: &HeaderValue,
        trace_id: &str,
    ) -> Result<(Response<Body>, String, Option<&'a str>), GatewayError<'a>> {
        let route = self.routes.find(req.uri().path()).ok_or_else(|| {
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
                .check(&peer.to_string())
                .map_err(|l| limited(l).on(&route.prefix))?;
        }

        // Who is calling.
        let identity = match req.headers().get(header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let token = value
                    .to_str()
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

        // The body, bounded.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is too large",
            ));
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body as usize).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is too large",
                ));
            }
            Err(_) => {
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
        let replayable = tessera::resilience::may_repeat(
            &parts.method,
            parts.headers.contains_key("idempotency-key"),
        );
        let root = http::uri::PathAndQuery::from_static("/");
        let path_and_query = parts.uri.path_and_query().unwrap_or(&root);
        let extra = [
            (passport::HEADER, passport.as_bytes()),
            ("traceparent", traceparent.as_bytes()),
        ];
        let request = Outgoing {
            method: &parts.method,
            path_and_query: path_and_query.as_str(),
            headers: &parts.headers,
            skip: not_forwarded,
            extra: &extra,
            deadline_ms: None,
            body: &body,
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
        let Exchange {
            status,
            headers,
            body,
            instance,
        } = match exchange {
            Ok(x) => x,
            Err(CallFailure::Open) => {
                if let Some(fallback) = &route.fallback {
                    return Ok((
                        fallback_response(fallback, trace_id),
                        "fallback".into(),
                        Some(route.prefix.as_str()),
                    ));
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

        if let (Some(sid), Some(tokens)) = (headers.get(REVOKE_SESSION), &self.tokens)
            && let Ok(sid) = sid.to_str()
        {
            tokens.revoke(sid, tessera::unix_now() + self.revoke_for.as_secs());
        }
        let response = self
            .wrap(status, &headers, body, trace_id)
            .map_err(|e| e.on(&route.prefix))?;
        Ok((response, instance, Some(route.prefix.as_str())))
    }

    /// Wraps an upstream response in the envelope.
    fn wrap(
        &self,
        status: StatusCode,
        upstream_headers: &HeaderMap,
        body: Bytes,
        trace_id: &str,
    ) -> Result<Response<Body>, GatewayError<'static>> {
        let is_json = upstream_headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        let wrapped = if status.is_success() || status.is_redirection() || status.is_informational()
        {
            if body.is_empty() {
                Some(envelope::success(None, trace_id))
            } else if is_json {
                if !envelope::is_json(&body) {
                    return Err(GatewayError::new(
                        StatusCode::BAD_GATEWAY,
                        "bad_gateway",
                        "the service sent malformed JSON",
                    ));
                }
                Some(envelope::success(Some(&body), trace_id))
            } else {
                None // files, text, streams: passed through as they are
            }
        } else {
            let (code, message) = envelope::upstream_error(&body).unwrap_or_else(|| {
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
        let mut response =
            Response::builder().status(if status == StatusCode::NO_CONTENT && wrapped.is_some() {
                StatusCode::OK
            } else {
                status
            });
        let headers = response.headers_mut().expect("builder is valid");
        copy_response_headers(upstream_headers, headers);
        let body = match wrapped {
            Some(b) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                b
            }
            None => {
                if let Some(ct) = upstream_headers.get(header::CONTENT_TYPE) {
                    headers.insert(header::CONTENT_TYPE, ct.clone());
                }
                body
            }
        };
        Ok(response
            .body(Full::new(body))
            .expect("response parts are valid"))
    }
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

fn error_response(e: &GatewayError<'_>, trace_id: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(envelope::error(e.code, &e.message, trace_id)));
    *resp.status_mut() = e.status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((limit, wait)) = e.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
        headers.insert(
            HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(limit),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(0u32),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(wait),
        );
    }
    resp
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
fn fallback_response(f: &Fallback, trace_id: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(envelope::success(
        Some(f.body.as_bytes()),
        trace_id,
    )));
    *resp.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        HeaderName::from_static("x-tessera-fallback"),
        HeaderValue::from_static("circuit-open"),
    );
    resp
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Client headers that do not go upstream: hop-by-hop ones, `Expect` (the body is already
/// read), and never the client's own passport, trace parent or deadline (replaced) or access
/// token (the passport speaks for it inside).
fn not_forwarded(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || name == header::AUTHORIZATION
        || name == header::EXPECT
        || matches!(
            name.as_str(),
            passport::HEADER | "traceparent" | tessera::client::DEADLINE_HEADER
        )
}

/// Upstream headers that go to the client: not hop-by-hop ones and not the platform's own.
fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if is_hop_by_hop(name)
            || name == header::CONTENT_TYPE
            || name.as_str().starts_with("x-tessera-")
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
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
