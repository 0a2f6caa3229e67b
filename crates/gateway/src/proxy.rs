//! The request path: route, authenticate, mint the passport, forward, wrap, log.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tessera::TraceContext;
use tessera::manifest::AuthMode;
use tessera::passport::{self, PassportKeys};
use tessera::registry::Discovery;

use crate::envelope;
use crate::routes::RouteTable;
use crate::tokens::{TokenError, TokenVerifier};

/// A response header by which an upstream asks the gateway to revoke the caller's session
/// at once (the token service sets it on logout). Never sent on to the client.
pub const REVOKE_SESSION: &str = "x-tessera-revoke-session";
const ISSUER: &str = "tessera-gateway";
/// How many instances a request may try when connections are refused.
const CONNECT_ATTEMPTS: usize = 3;

pub type Body = Full<Bytes>;

pub struct Gateway {
    pub routes: RouteTable,
    pub discovery: Discovery,
    pub keys: PassportKeys,
    pub tokens: Option<Arc<TokenVerifier>>,
    pub client: Client<HttpConnector, Body>,
    pub upstream_timeout: Duration,
    pub max_body: u64,
    pub max_response: u64,
    pub next: AtomicUsize,
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
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let parent = req
            .headers()
            .get(tessera::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
        let trace_id = trace.trace_id_hex();

        let (mut response, outcome, route) = match self.forward(req, &trace, &trace_id).await {
            Ok((resp, upstream, route)) => {
                let status = resp.status().as_u16();
                (resp, Outcome { status, upstream: Some(upstream) }, route)
            }
            Err(e) => {
                let status = e.status.as_u16();
                (error_response(&e, &trace_id), Outcome { status, upstream: None }, e.route)
            }
        };
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&trace.header()) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
        if let Ok(v) = HeaderValue::from_str(&trace_id) {
            headers.insert(HeaderName::from_static("x-trace-id"), v);
        }
        let elapsed = start.elapsed();
        tessera::metrics::record_request(route.unwrap_or("unrouted"), method.as_str(), outcome.status, elapsed);
        tracing::info!(
            target: "access",
            method = method.as_str(),
            path = path.as_str(),
            status = outcome.status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            trace_id = trace_id.as_str(),
            upstream = outcome.upstream.as_deref().unwrap_or("-"),
            "access"
        );
        Ok(response)
    }

    async fn forward<'a>(
        &'a self,
        req: Request<Incoming>,
        trace: &TraceContext,
        trace_id: &str,
    ) -> Result<(Response<Body>, String, Option<&'a str>), GatewayError<'a>> {
        let route = self
            .routes
            .find(req.uri().path())
            .ok_or_else(|| GatewayError::new(StatusCode::NOT_FOUND, "route_not_found", "no route for this path"))?;
        let fail = |status, code, message: &str| GatewayError::new(status, code, message).on(&route.prefix);

        // Who is calling.
        let identity = match req.headers().get(header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                    .map(str::trim)
                    .ok_or_else(|| fail(StatusCode::UNAUTHORIZED, "unauthenticated", "expected a Bearer token"))?;
                let verifier = self
                    .tokens
                    .as_ref()
                    .ok_or_else(|| fail(StatusCode::UNAUTHORIZED, "unauthenticated", "this gateway accepts no tokens"))?;
                match verifier.verify(token).await {
                    Ok(v) => Some(v),
                    Err(TokenError::Unavailable) => {
                        return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "cannot verify tokens right now"));
                    }
                    Err(e) => return Err(fail(StatusCode::UNAUTHORIZED, "unauthenticated", &e.to_string())),
                }
            }
        };
        if identity.is_none() && route.auth == AuthMode::Required {
            return Err(fail(StatusCode::UNAUTHORIZED, "unauthenticated", "this route needs an access token"));
        }
        if !route.roles.is_empty() {
            let allowed = identity.as_ref().is_some_and(|v| v.roles.iter().any(|r| route.roles.contains(r)));
            if !allowed {
                return Err(fail(StatusCode::FORBIDDEN, "forbidden", "your roles do not allow this route"));
            }
        }

        // The body, bounded.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(fail(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large"));
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body as usize).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(fail(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large"));
            }
            Err(_) => return Err(fail(StatusCode::BAD_REQUEST, "bad_request", "could not read the request body")),
        };

        // Where to.
        let instances = self
            .discovery
            .instances(&route.service)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| fail(StatusCode::SERVICE_UNAVAILABLE, "no_instance", "no live instance of the service"))?;
        let first = self.next.fetch_add(1, Ordering::Relaxed);

        let passport = match &identity {
            Some(v) => self.keys.mint(ISSUER, &v.sub, &v.roles, v.sid.as_deref(), trace),
            None => self.keys.mint(ISSUER, passport::ANONYMOUS, &[], None, trace),
        };
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        copy_request_headers(&parts.headers, &mut headers);
        headers.insert(HeaderName::from_static(passport::HEADER), header_value(&passport)?);
        headers.insert(HeaderName::from_static("traceparent"), header_value(&trace.header())?);
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());

        // Send and read, within the deadline. A connection that could not be made proves the
        // request never reached the instance, so it is safe to try the next one (an instance
        // that died a moment ago is still in the registry until its TTL lapses).
        let attempts = instances.len().min(CONNECT_ATTEMPTS);
        let exchange = async {
            let mut attempt = 0;
            loop {
                let instance = &instances[(first + attempt) % instances.len()];
                let mut upstream = Request::builder()
                    .method(parts.method.clone())
                    .uri(format!("http://{}{}", instance.address, path_and_query))
                    .body(Full::new(body.clone()))
                    .map_err(|_| fail(StatusCode::BAD_REQUEST, "bad_request", "request cannot be forwarded"))?;
                // Clone only while another attempt may need them.
                *upstream.headers_mut() =
                    if attempt + 1 < attempts { headers.clone() } else { std::mem::take(&mut headers) };
                let resp = match self.client.request(upstream).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        tracing::warn!(upstream = %instance.id, error = %e, "upstream request failed");
                        attempt += 1;
                        if e.is_connect() && attempt < attempts {
                            continue;
                        }
                        return Err(fail(StatusCode::BAD_GATEWAY, "bad_gateway", "the service could not be reached"));
                    }
                };
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, self.max_response as usize)
                    .collect()
                    .await
                    .map_err(|_| fail(StatusCode::BAD_GATEWAY, "bad_gateway", "the service's response could not be read"))?
                    .to_bytes();
                return Ok::<_, GatewayError>((parts, body, instance));
            }
        };
        let (parts, body, instance) = tokio::time::timeout(self.upstream_timeout, exchange)
            .await
            .map_err(|_| fail(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "the service did not answer in time"))??;

        if let (Some(sid), Some(tokens)) = (parts.headers.get(REVOKE_SESSION), &self.tokens)
            && let Ok(sid) = sid.to_str() {
                tokens.revoke(sid, tessera::unix_now() + self.revoke_for.as_secs());
            }
        let response = self.wrap(parts, body, trace_id).map_err(|e| e.on(&route.prefix))?;
        Ok((response, instance.id.clone(), Some(route.prefix.as_str())))
    }

    /// Wraps an upstream response in the envelope.
    fn wrap(
        &self,
        parts: http::response::Parts,
        body: Bytes,
        trace_id: &str,
    ) -> Result<Response<Body>, GatewayError<'static>> {
        let status = parts.status;
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        let wrapped = if status.is_success() || status.is_redirection() || status.is_informational() {
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
                    status.canonical_reason().unwrap_or("request failed").to_string(),
                )
            });
            Some(envelope::error(&code, &message, trace_id))
        };
        let mut response = Response::builder().status(if status == StatusCode::NO_CONTENT && wrapped.is_some() {
            StatusCode::OK
        } else {
            status
        });
        let headers = response.headers_mut().expect("builder is valid");
        copy_response_headers(&parts.headers, headers);
        let body = match wrapped {
            Some(b) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                b
            }
            None => {
                if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                    headers.insert(header::CONTENT_TYPE, ct.clone());
                }
                body
            }
        };
        Ok(response.body(Full::new(body)).expect("response parts are valid"))
    }
}

/// A response the gateway makes itself.
#[derive(Debug)]
pub struct GatewayError<'a> {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub route: Option<&'a str>,
}

impl<'a> GatewayError<'a> {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Self {
        Self { status, code, message: message.to_string(), route: None }
    }

    fn on(self, route: &'a str) -> GatewayError<'a> {
        GatewayError { route: Some(route), ..self }
    }
}

fn error_response(e: &GatewayError<'_>, trace_id: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(envelope::error(e.code, &e.message, trace_id)));
    *resp.status_mut() = e.status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn header_value<'a>(s: &str) -> Result<HeaderValue, GatewayError<'a>> {
    HeaderValue::from_str(s)
        .map_err(|_| GatewayError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "cannot build a header"))
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

/// Client headers that go upstream: not hop-by-hop ones, and never the client's own passport,
/// trace parent (replaced) or access token (the passport speaks for it inside).
fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if is_hop_by_hop(name)
            || name == header::AUTHORIZATION
            || name.as_str() == passport::HEADER
            || name.as_str() == "traceparent"
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Upstream headers that go to the client: not hop-by-hop ones and not the platform's own.
fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if is_hop_by_hop(name) || name == header::CONTENT_TYPE || name.as_str().starts_with("x-tessera-") {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}
