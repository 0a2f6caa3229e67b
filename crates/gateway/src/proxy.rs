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
//!
//! The public side answers `/health/*` itself and routes everything else: `/metrics` and
//! `/status/*` are on the admin listener (`admin.rs`), never here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::StatusCode;
use tessera::TraceContext;
use tessera::trace::{Kind, Span};

use crate::error::GatewayError;
use crate::forward::Forwarder;
use crate::routes::{CompiledRoute, NotNormal, RouteTable};
use crate::server::{HeaderBuf, Request, Tunnel};
use crate::tokens::TokenVerifier;
use crate::upstream::{CallFailure, Exchange};
use crate::{authenticate, authorize, envelope, forward, limit, wrap};

pub struct Gateway {
    /// The routes and their upstreams, swapped whole by a reload (`reload.rs`): a request
    /// takes the table in force when it arrives and keeps it to its end.
    pub routes: ArcSwap<RouteTable>,
    pub tokens: Option<Arc<TokenVerifier>>,
    /// The longest a revoked session's tokens can live (the token service's access TTL, or a
    /// safe bound), for revocations that arrive by header.
    pub revoke_for: Duration,
    pub forwarder: Forwarder,
    /// A tunnel (WebSocket) closes after this long without traffic, and after the second in
    /// any case.
    pub tunnel_idle: Duration,
    pub tunnel_max: Duration,
    /// HTTP/2 connections to the instances of gRPC routes (`grpc.rs`).
    pub streams: crate::grpc::Connections,
    /// With Redis: the rate limits and revocations every gateway shares.
    pub shared: Option<Arc<tessera_shared::Shared>>,
}

/// A forwarded request's answer, wrapped.
struct Forwarded {
    status: StatusCode,
    body: Bytes,
    /// The instance that answered, or `fallback`.
    upstream: String,
    /// After a `101`: the instance's connection, to splice with the client's.
    /// Boxed: rare, and what holds it is moved up through the request's futures.
    tunnel: Option<Box<Tunnel>>,
}

/// A proxied request's access record, logged and counted once its answer is written.
pub struct Access {
    route: Option<Arc<str>>,
    upstream: Option<String>,
    trace_id: [u8; 32],
    /// Boxed: rare, and what holds it is moved up through the request's futures.
    tunnel: Option<Box<Tunnel>>,
}

impl crate::server::Handler for Gateway {
    type Done<'a> = Option<Access>;

    async fn handle<'a>(
        &'a self,
        req: &'a Request<'a>,
        headers: &mut HeaderBuf,
    ) -> (StatusCode, Bytes, Option<Access>) {
        match req.path {
            "/health/live" | "/health/ready" => {
                headers.push(b"content-type", wrap::JSON);
                (
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ready\"}"),
                    None,
                )
            }
            _ => {
                let (status, body, access) = self.proxy(req, headers).await;
                (status, body, Some(access))
            }
        }
    }

    fn tunnel(&self, access: &mut Option<Access>) -> Option<Tunnel> {
        access.as_mut()?.tunnel.take().map(|t| *t)
    }

    /// The access log line and the request metrics, once the answer is written: the time
    /// they take is not added to the client's.
    fn done(&self, req: &Request<'_>, status: StatusCode, access: Option<Access>) {
        let Some(access) = access else { return };
        let elapsed = req.start.elapsed();
        tessera::metrics::record_request(
            access.route.as_deref().unwrap_or("unrouted"),
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
    async fn proxy(
        &self,
        req: &Request<'_>,
        headers: &mut HeaderBuf,
    ) -> (StatusCode, Bytes, Access) {
        // A client's trace is continued, but it may only turn sampling down: the system's
        // share applies to its traces too (a client cannot make every request recorded).
        let parent = req
            .fields
            .get_str(tessera::trace::TRACEPARENT)
            .and_then(TraceContext::parse)
            .map(|mut p| {
                p.sampled &= tessera::trace::span::sampled(&p.trace_id);
                p
            });
        let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
        // The request's server span: the client's span (its `traceparent`) is its parent.
        let mut span = Span::open(&trace, parent.map(|p| p.span_id), "request", Kind::Server);
        let mut trace_hex = [0u8; 32];
        let trace_id = tessera::trace::hex(&trace.trace_id, &mut trace_hex);
        let mut traceparent = [0u8; 55];
        trace.write_header(&mut traceparent);
        let table = self.routes.load_full();
        let route = table.find(req.path);
        // Static files (`files.rs`), where their prefix is the longest to match.
        let mount = route.ok().and_then(|r| table.mount(req.path, r));
        let answer = match (route, mount) {
            (Err(NotNormal), _) => Err(GatewayError::PATH_NOT_NORMAL),
            (Ok(_), Some(mount)) => mount.serve(req, headers).map(|(status, body)| Forwarded {
                status,
                body,
                upstream: "files".into(),
                tunnel: None,
            }),
            (Ok(None), None) => Err(GatewayError::ROUTE_NOT_FOUND),
            (Ok(Some(route)), None) => self.stages(route, req, headers, &trace, trace_id).await,
        };
        let (status, body, upstream, tunnel) = match answer {
            Ok(f) => (f.status, f.body, Some(f.upstream), f.tunnel),
            Err(e) => (e.status, wrap::refusal(&e, trace_id, headers), None, None),
        };
        headers.push(b"traceparent", &traceparent);
        headers.push(b"x-trace-id", trace_id.as_bytes());
        let label = match mount {
            Some(mount) => Some(mount.label.clone()),
            None => route.ok().flatten().map(|r| r.label.clone()),
        };
        if span.is_recording() {
            match &label {
                Some(label) => {
                    span.name_pair(req.method.as_str(), label);
                    span.set("http.route", label);
                }
                None => span.name_pair(req.method.as_str(), "(no route)"),
            }
            span.set("http.request.method", &req.method);
            span.set("url.path", req.path);
            span.set("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.fail("answered with a server error");
            }
        }
        drop(span);
        let access = Access {
            route: label,
            upstream,
            trace_id: trace_hex,
            tunnel,
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
        trace_id: &str,
    ) -> Result<Forwarded, GatewayError> {
        let tokens = self.tokens.as_deref();
        limit::per_ip(
            route,
            self.forwarder.proxies.client(req.peer, &req.fields),
            self.shared.as_deref(),
        )
        .await?;
        let caller = authenticate::caller(tokens, &req.fields, route.websocket).await?;
        let caller = caller.as_deref();
        limit::per_user(route, caller, self.shared.as_deref()).await?;
        authorize::check(route, caller)?;
        let body = forward::body(req.body)?;
        let called = self.forwarder.call(route, req, body, caller, trace).await;
        let Exchange {
            mut response,
            instance,
        } = match (called, &route.fallback) {
            (Ok(exchange), _) => exchange,
            (Err(CallFailure::Open), Some(fallback)) => {
                let (status, body) = wrap::fallback(fallback, trace_id, headers);
                return Ok(Forwarded {
                    status,
                    body,
                    upstream: "fallback".into(),
                    tunnel: None,
                });
            }
            (Err(failure), _) => return Err(forward::refusal(failure)),
        };
        if let Some(upgraded) = response.upgraded.take() {
            if !forward::switched_to_websocket(&response.fields()) {
                tracing::warn!(service = %route.service, "an instance switched to a protocol other than WebSocket");
                return Err(GatewayError::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the service answered the upgrade with another protocol",
                ));
            }
            // Switched: the instance's handshake answer goes to the client as it is, and
            // the connection becomes a tunnel.
            wrap::switching(response.fields(), headers);
            return Ok(Forwarded {
                status: StatusCode::SWITCHING_PROTOCOLS,
                body: Bytes::new(),
                upstream: instance,
                tunnel: Some(Box::new(Tunnel {
                    upstream: upgraded.stream,
                    leftover: upgraded.leftover,
                    idle: self.tunnel_idle,
                    total: self.tunnel_max,
                })),
            });
        }
        let fields = response.fields();
        authenticate::revoke_if_asked(tokens, &route.service, &fields, self.revoke_for).await;
        let (status, body) =
            wrap::answer(response.status, fields, &response.body, trace_id, headers)?;
        Ok(Forwarded {
            status,
            body,
            upstream: instance,
            tunnel: None,
        })
    }
}

impl Gateway {
    /// Every upstream's breaker state and bulkhead use, as JSON.
    pub fn resilience_status(&self) -> String {
        let table = self.routes.load();
        let upstreams: serde_json::Map<String, serde_json::Value> = table
            .upstreams()
            .iter()
            .map(|(name, u)| (name.clone(), u.status()))
            .collect();
        serde_json::json!({ "upstreams": upstreams }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use tessera::resilience::{CallOutcome, RateLimit};
    use tessera_manifest::{AuthMode, Fallback, Route, RouteLimits};

    use super::*;
    use crate::server::Handler;
    use crate::testing::{self, Head};

    /// A gateway with `routes` to one service, `shop`, at `address`.
    fn gateway(routes: &[Route], address: &str) -> Gateway {
        Gateway {
            routes: ArcSwap::from_pointee(RouteTable::new(routes)),
            // The shop issues the tokens here: its answers may end sessions.
            tokens: Some(testing::verifier_for("shop")),
            revoke_for: Duration::from_secs(60),
            forwarder: testing::forwarder("shop", address),
            tunnel_idle: Duration::from_secs(60),
            tunnel_max: Duration::from_secs(600),
            streams: Default::default(),
            shared: None,
        }
    }

    fn shop(auth: AuthMode, roles: &[&str]) -> Route {
        Route {
            prefix: "/api".into(),
            service: "shop".into(),
            auth,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            rate_limit: None,
            fallback: None,
            websocket: false,
            grpc: false,
        }
    }

    /// Sends one request through the whole path: status, envelope, response fields, and the
    /// route and instance it was recorded under.
    async fn send(
        gateway: &Gateway,
        method: Method,
        path: &str,
        fields: &[&str],
    ) -> (u16, serde_json::Value, String, Option<String>) {
        let head = Head::request(fields);
        let req = head.to(method, path, b"");
        let mut headers = HeaderBuf::default();
        let (status, body, access) = gateway.handle(&req, &mut headers).await;
        let access = access.expect("a proxied request leaves an access record");
        let envelope: serde_json::Value = serde_json::from_slice(&body).expect("an envelope");
        let fields = String::from_utf8(headers.as_bytes().to_vec()).unwrap();
        // Every answer carries the trace, in the envelope and in the header fields.
        let trace_id = std::str::from_utf8(&access.trace_id).unwrap();
        assert_eq!(envelope["traceId"], trace_id);
        assert!(
            fields.contains(&format!("x-trace-id: {trace_id}\r\n")),
            "{fields}"
        );
        assert!(fields.contains("traceparent: 00-"), "{fields}");
        let upstream = access.upstream.clone();
        assert_eq!(
            access.route.as_deref(),
            gateway
                .routes
                .load()
                .find(path)
                .ok()
                .flatten()
                .map(|r| r.prefix.as_str())
        );
        (status.as_u16(), envelope, fields, upstream)
    }

    fn bearer(token: &str) -> String {
        format!("Authorization: Bearer {token}")
    }

    #[tokio::test]
    async fn a_request_goes_through_every_stage_to_the_upstream_and_back() {
        let (address, seen) = testing::upstream(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\
              X-Tessera-Revoke-Session: s1\r\nCache-Control: no-store\r\n\r\n{\"n\":42}",
        )
        .await;
        let gateway = gateway(&[shop(AuthMode::Required, &["customer"])], &address);
        let token = testing::token("u1", &["customer"], Some("s1"), 600);
        let parent = "Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (status, envelope, fields, upstream) = send(
            &gateway,
            Method::POST,
            "/api/logout",
            &[&bearer(&token), parent],
        )
        .await;
        assert_eq!(status, 200, "{envelope}");
        assert_eq!(envelope["data"]["n"], 42);
        assert_eq!(envelope["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert!(fields.contains("Cache-Control: no-store\r\n"), "{fields}");
        assert!(
            !fields.to_ascii_lowercase().contains("x-tessera"),
            "{fields}"
        );
        assert_eq!(upstream.as_deref(), Some("shop-1"));
        assert_eq!(seen.lock().unwrap().len(), 1);

        // The answer asked for the session's end: its tokens are refused from now on, before
        // any upstream is asked.
        let (status, envelope, _, upstream) =
            send(&gateway, Method::GET, "/api/me", &[&bearer(&token)]).await;
        assert_eq!(
            (status, &envelope["error"]["code"]),
            (401, &"unauthenticated".into())
        );
        assert_eq!(upstream, None);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn refusals_are_made_before_the_upstream_is_asked() {
        let (address, seen) = testing::upstream(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let routes = [
            shop(AuthMode::Required, &["admin"]),
            Route {
                prefix: "/open".into(),
                ..shop(AuthMode::Public, &[])
            },
        ];
        let gateway = gateway(&routes, &address);
        let customer = testing::token("u1", &["customer"], None, 600);
        let admin = testing::token("u2", &["admin"], None, 600);
        let cases: [(&str, Vec<String>, u16, &str); 7] = [
            ("/nowhere", vec![], 404, "route_not_found"),
            ("/api/./x", vec![], 400, "bad_request"),
            ("/api//x", vec![], 400, "bad_request"),
            ("/api/x", vec![], 401, "unauthenticated"),
            (
                "/api/x",
                vec![bearer("not.a.token")],
                401,
                "unauthenticated",
            ),
            (
                "/open/x",
                vec![bearer("not.a.token")],
                401,
                "unauthenticated",
            ),
            ("/api/x", vec![bearer(&customer)], 403, "forbidden"),
        ];
        for (path, fields, want, code) in cases {
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            let (status, envelope, _, upstream) = send(&gateway, Method::GET, path, &fields).await;
            assert_eq!(
                (status, envelope["error"]["code"].as_str()),
                (want, Some(code))
            );
            assert_eq!(envelope["success"], false);
            assert_eq!(upstream, None);
        }
        assert!(seen.lock().unwrap().is_empty());
        let (status, envelope, _, _) =
            send(&gateway, Method::GET, "/api/x", &[&bearer(&admin)]).await;
        assert_eq!((status, envelope["data"].is_null()), (200, true));
        let (status, ..) = send(&gateway, Method::GET, "/open/x", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_address_limit_comes_before_the_token_and_the_caller_limit_before_the_roles() {
        let one = Some(RateLimit::parse("1/m").unwrap());
        let by_address = Route {
            rate_limit: Some(RouteLimits {
                per_ip: one.clone(),
                per_user: None,
            }),
            ..shop(AuthMode::Public, &[])
        };
        let gateway_a = gateway(&[by_address], "127.0.0.1:9");
        let forged = bearer(&testing::forged("u1"));
        let (status, ..) = send(&gateway_a, Method::GET, "/api/x", &[&forged]).await;
        assert_eq!(status, 401);
        let (status, envelope, fields, _) =
            send(&gateway_a, Method::GET, "/api/x", &[&forged]).await;
        assert_eq!(
            (status, envelope["error"]["code"].as_str()),
            (429, Some("rate_limited"))
        );
        assert!(fields.contains("retry-after: "), "{fields}");

        let by_caller = Route {
            rate_limit: Some(RouteLimits {
                per_ip: None,
                per_user: one,
            }),
            ..shop(AuthMode::Public, &["admin"])
        };
        let gateway_b = gateway(&[by_caller], "127.0.0.1:9");
        let customer = bearer(&testing::token("u1", &["customer"], None, 600));
        let (status, ..) = send(&gateway_b, Method::GET, "/api/x", &[&customer]).await;
        assert_eq!(status, 403);
        let (status, ..) = send(&gateway_b, Method::GET, "/api/x", &[&customer]).await;
        assert_eq!(status, 429);
    }

    #[tokio::test]
    async fn an_open_breaker_answers_the_routes_fallback_or_503() {
        let with_fallback = Route {
            fallback: Some(Fallback {
                status: 200,
                body: r#"{"items":[]}"#.into(),
            }),
            ..shop(AuthMode::Public, &[])
        };
        for (route, fallback) in [(with_fallback, true), (shop(AuthMode::Public, &[]), false)] {
            let gateway = gateway(&[route], "127.0.0.1:9");
            let table = gateway.routes.load();
            let upstream = &table.upstreams()["shop"];
            for _ in 0..20 {
                upstream
                    .guard()
                    .breaker
                    .record(CallOutcome::Failure, Duration::ZERO);
            }
            let (status, envelope, fields, recorded) =
                send(&gateway, Method::GET, "/api/x", &[]).await;
            if fallback {
                assert_eq!(
                    (status, &envelope["data"]["items"]),
                    (200, &serde_json::json!([]))
                );
                assert!(
                    fields.contains("x-tessera-fallback: circuit-open\r\n"),
                    "{fields}"
                );
                assert_eq!(recorded.as_deref(), Some("fallback"));
            } else {
                assert_eq!(
                    (status, envelope["error"]["code"].as_str()),
                    (503, Some("circuit_open"))
                );
                assert_eq!(recorded, None);
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_502_without_its_address() {
        let address = testing::closed_address();
        let port = address.rsplit(':').next().unwrap();
        let gateway = gateway(&[shop(AuthMode::Public, &[])], &address);
        let (status, envelope, fields, _) = send(&gateway, Method::POST, "/api/x", &[]).await;
        assert_eq!(
            (status, envelope["error"]["code"].as_str()),
            (502, Some("bad_gateway"))
        );
        let text = format!("{envelope} {fields}");
        assert!(
            !text.contains("127.0.0.1") && !text.contains(port),
            "{text}"
        );
    }
}
