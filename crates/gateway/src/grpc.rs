//! gRPC through the gateway: a route with `grpc = true` passes HTTP/2 requests on as streams,
//! to instances that speak HTTP/2 (h2c, prior knowledge), and their answers back as they
//! come, trailers (`grpc-status`, `grpc-message`) included; server, client and bidirectional
//! streaming all pass, since neither side is read whole.
//!
//! The stages are the same as for any request (`proxy.rs`): the address's rate limit, the
//! access token (`authorization` metadata) → a passport for the instance, the caller's limit,
//! the route's roles; then the call goes through the service's guard (breaker, bulkhead,
//! balancer: attempts are not retried, since a stream cannot be sent twice, but a refused
//! connection moves on to another instance). A refusal is a gRPC status in a trailers-only
//! answer (`UNAUTHENTICATED` for 401, `PERMISSION_DENIED` for 403, `UNAVAILABLE` for 503…),
//! which is what gRPC clients read; what went wrong is in the log under the request's trace.
//!
//! Each call is traced as a request is (`docs/observability.md`): a server span named after
//! the route's method (`rpc.service`, `rpc.method`, the gRPC status when the answer carries
//! it in its head), ending when the answer's head is passed on (its stream may go on long
//! after), and a client span for the attempt, whose `traceparent` the instance receives.
//!
//! A call has the time its `grpc-timeout` gives it, else `websocket_max_ms` (a client stream
//! is answered only once the client is done); while its answer streams, its HTTP/2 stream
//! counts as open. Connections to instances are HTTP/2 and multiplexed: one per instance,
//! opened on first use and again when it closes, pinged every 30 s. Not yet over mutual TLS
//! (the gateway's gRPC upstreams are h2c): the manifest refuses `grpc` routes when it is on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tessera::TraceContext;
use tessera::passport;
use tessera::resilience::{Limits, Rejected, Retryable};
use tessera::trace::{Kind, Span};

use crate::error::GatewayError;
use crate::listen::{Body, Streamed, Streaming};
use crate::proxy::Gateway;
use crate::routes::CompiledRoute;
use crate::server::Request;
use crate::{authenticate, authorize, forward, limit};

/// HTTP/2 connections to instances, by address.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<String, SendRequest<Incoming>>>,
}

impl Connections {
    /// A sender on a live connection to `address`, opened if there is none.
    async fn to(&self, address: &str) -> Option<SendRequest<Incoming>> {
        if let Some(send) = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
            && !send.is_closed()
        {
            return Some(send.clone());
        }
        let tcp = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(address),
        )
        .await
        .ok()?
        .ok()?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A host gone silent is found in seconds, not at the next call's deadline.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_string(), send.clone());
        Some(send)
    }
}

/// One attempt's outcome, for the guard.
enum Attempt {
    Answered(http::Response<Incoming>),
    /// No connection: nothing was sent.
    Refused,
    /// Sent, and no answer came.
    Failed,
}

impl Retryable for Attempt {
    /// gRPC answers 200 whatever happened: a status in a trailers-only answer says more.
    fn is_failure(&self) -> bool {
        match self {
            Attempt::Answered(r) => {
                let status = r.headers().get("grpc-status").and_then(|v| v.to_str().ok());
                r.status().is_server_error() || matches!(status, Some("13" | "14"))
            }
            Attempt::Refused | Attempt::Failed => true,
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self, Attempt::Refused)
    }

    fn never_sent(&self) -> bool {
        matches!(self, Attempt::Refused)
    }
}

impl Streaming for Gateway {
    fn streams(&self, path: &str) -> bool {
        matches!(self.routes.load().find(path), Ok(Some(route)) if route.grpc)
    }

    async fn stream<'a>(
        &'a self,
        req: Request<'a>,
        parts: &'a http::request::Parts,
        body: Incoming,
    ) -> http::Response<Body> {
        // As for any request: a client's trace continued, its sampling only turned down.
        let parent = req
            .fields
            .get_str(tessera::trace::TRACEPARENT)
            .and_then(TraceContext::parse)
            .map(|mut p| {
                p.sampled &= tessera::trace::span::sampled(&p.trace_id);
                p
            });
        let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
        let mut span = Span::open(&trace, parent.map(|p| p.span_id), "grpc", Kind::Server);
        let mut hex = [0u8; 32];
        let trace_id = tessera::trace::hex(&trace.trace_id, &mut hex).to_string();
        let table = self.routes.load_full();
        // The table of this request (a reload may have come since `streams` looked): a route
        // that no longer passes gRPC is not streamed.
        let route = table.find(req.path).ok().flatten().filter(|r| r.grpc);
        let answer = match route {
            Some(route) => self.call(route, &req, parts, body, &trace).await,
            None => Err(GatewayError::ROUTE_NOT_FOUND),
        };
        let (status, upstream) = match &answer {
            Ok(r) => (r.status().as_u16(), "grpc"),
            Err(e) => (e.status.as_u16(), "-"),
        };
        if span.is_recording() {
            match route {
                Some(r) => describe(&mut span, req.path, Some(r.label.clone())),
                // A path no route knows is the client's to choose: not a name.
                None => span.rename("grpc (no route)"),
            }
            span.set("http.response.status_code", status);
            match &answer {
                Ok(r) => {
                    if let Some(code) = grpc_status(r.headers()) {
                        span.set("rpc.grpc.status_code", code);
                        if is_server_fault(code) {
                            span.fail("the instance answered with a server error");
                        }
                    }
                }
                Err(e) if e.status.is_server_error() => span.fail(e.message.clone()),
                Err(_) => {}
            }
        }
        drop(span);
        let latency_ms = req.start.elapsed().as_micros() as f64 / 1000.0;
        tracing::info!(target: "access", method = req.method.as_str(), path = req.path, status, latency_ms, trace_id = %trace_id, upstream, "access");
        match answer {
            Ok(response) => response,
            Err(e) => refusal(&e, &trace_id),
        }
    }
}

impl Gateway {
    /// The stages, then the call; the instance's answer as it comes.
    async fn call(
        &self,
        route: &CompiledRoute,
        req: &Request<'_>,
        parts: &http::request::Parts,
        body: Incoming,
        trace: &TraceContext,
    ) -> Result<http::Response<Body>, GatewayError> {
        let tokens = self.tokens.as_deref();
        limit::per_ip(
            route,
            self.forwarder.proxies.client(req.peer, &req.fields),
            self.shared.as_deref(),
        )
        .await?;
        let caller = authenticate::caller(tokens, &req.fields, false).await?;
        let caller = caller.as_deref();
        limit::per_user(route, caller, self.shared.as_deref()).await?;
        authorize::check(route, caller)?;

        let forwarder = &self.forwarder;
        let upstream = &route.upstream;
        let instances = forwarder
            .discovery
            .instances(&route.service)
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let passport = forwarder.passport(caller, trace);
        let forwarding = forwarder.proxies.fields(req.peer, req.secure, &req.fields);
        let mut headers = http::HeaderMap::with_capacity(parts.headers.len() + 6);
        for (name, value) in &parts.headers {
            if !forward::not_forwarded(name.as_str().as_bytes()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let traceparent = trace.header_value();
        let extra: [(&str, &[u8]); 6] = [
            (passport::HEADER, &passport[..]),
            ("traceparent", traceparent.as_bytes()),
            ("x-forwarded-for", forwarding.x_forwarded_for.as_bytes()),
            ("forwarded", forwarding.forwarded.as_bytes()),
            ("x-forwarded-proto", forwarding.proto),
            // gRPC's own: the one `te` HTTP/2 allows, dropped above as hop-by-hop.
            ("te", b"trailers"),
        ];
        for (name, value) in extra {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }

        let body = Mutex::new(Some(body));
        // The call's own deadline (`grpc-timeout`), never past the longest a tunnel may last,
        // which is also the default: a client stream's answer comes only once the client is
        // done, however long it takes.
        let within = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.as_bytes()))
            .map_or(self.tunnel_max, |asked| asked.min(self.tunnel_max));
        let limits = Limits {
            deadline: None,
            within: Some(within),
            per_try: within,
        };
        let (headers, body) = (&headers, &body);
        let attempt = upstream
            .guard()
            .call(&instances, false, limits, |instance, _| async move {
                let Some(mut send) = self.streams.to(&instance.address).await else {
                    return Attempt::Refused;
                };
                if send.ready().await.is_err() {
                    return Attempt::Refused;
                }
                let Some(body) = body.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                    return Attempt::Failed;
                };
                let (mut span, attempt_trace) = Span::child_of(trace, "grpc call", Kind::Client);
                if span.is_recording() {
                    describe(&mut span, req.path, Some(route.label.clone()));
                    span.set("peer.service", &route.label);
                    span.set("tessera.instance", &instance.id);
                    span.fail("timed out or cancelled");
                }
                let uri = format!("http://{}{}", instance.address, req.target);
                let mut request = http::Request::new(body);
                *request.method_mut() = parts.method.clone();
                *request.headers_mut() = headers.clone();
                // The instance's span is the attempt's child.
                request
                    .headers_mut()
                    .insert("traceparent", attempt_trace.header_value());
                match uri.parse() {
                    Ok(uri) => *request.uri_mut() = uri,
                    Err(_) => return Attempt::Failed,
                }
                let outcome = match send.send_request(request).await {
                    Ok(response) => Attempt::Answered(response),
                    Err(_) => Attempt::Failed,
                };
                span.clear_failure();
                match &outcome {
                    Attempt::Answered(r) => {
                        if let Some(code) = grpc_status(r.headers()) {
                            span.set("rpc.grpc.status_code", code);
                            if is_server_fault(code) {
                                span.fail("the instance answered with a server error");
                            }
                        }
                    }
                    _ => span.fail("no answer"),
                }
                outcome
            })
            .await;
        match attempt {
            Ok(Attempt::Answered(response)) => {
                let (mut head, body) = response.into_parts();
                head.headers.remove(header::CONNECTION);
                Ok(http::Response::from_parts(
                    head,
                    Either::Right(Streamed::new(body)),
                ))
            }
            Ok(Attempt::Refused | Attempt::Failed) => {
                tracing::warn!(service = %route.service, "gRPC call failed");
                Err(forward::refusal(crate::upstream::CallFailure::Unreachable))
            }
            Err(Rejected::Open) => Err(forward::refusal(crate::upstream::CallFailure::Open)),
            Err(Rejected::Full) => Err(forward::refusal(crate::upstream::CallFailure::Full)),
            Err(Rejected::NoInstance) => {
                Err(forward::refusal(crate::upstream::CallFailure::NoInstance))
            }
            Err(Rejected::Timeout) => Err(forward::refusal(crate::upstream::CallFailure::Timeout)),
        }
    }
}

/// A gRPC span's name (`service/method`, the path's two parts) and attributes.
fn describe(span: &mut Span, path: &str, route: Option<std::sync::Arc<str>>) {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    span.rename(path.trim_start_matches('/').to_string());
    span.set("rpc.system", "grpc");
    span.set("rpc.service", service);
    span.set("rpc.method", method);
    if let Some(route) = route {
        span.set("http.route", route);
    }
}

/// The `grpc-status` of an answer's head (a trailers-only answer carries it there).
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The gRPC codes OpenTelemetry counts as the server's fault (an error on a server span).
fn is_server_fault(code: u32) -> bool {
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// A `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A refusal as gRPC clients read it: HTTP 200, `application/grpc`, the status in the
/// headers of an answer without a body ("trailers-only").
fn refusal(e: &GatewayError, trace_id: &str) -> http::Response<Body> {
    let code = match e.status.as_u16() {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 => 12,       // UNIMPLEMENTED
        413 => 8,        // RESOURCE_EXHAUSTED
        429 => 8,        // RESOURCE_EXHAUSTED
        504 => 4,        // DEADLINE_EXCEEDED
        502 | 503 => 14, // UNAVAILABLE
        _ => 13,         // INTERNAL
    };
    let mut response = http::Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    // grpc-message is percent-encoded UTF-8 (printable ASCII but `%` as it is).
    let mut message = String::with_capacity(e.message.len());
    for b in e.message.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            message.push(b as char);
        } else {
            message.push_str(&format!("%{b:02X}"));
        }
    }
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", value);
    }
    if let Ok(value) = HeaderValue::from_str(trace_id) {
        headers.insert("x-trace-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_spec_writes_them() {
        assert_eq!(grpc_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        for bad in [&b""[..], b"S", b"10", b"123456789S", b"1x", b"-1S"] {
            assert_eq!(
                grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
