//! The request goes on to an instance of the route's service, and its answer comes back.
//!
//! What an instance is sent is the client's request with the gateway's word in place of the
//! client's where the two could disagree: a passport minted for the caller (or for an
//! anonymous one) instead of the access token, a child `traceparent`, and a deadline; the
//! client's own `X-Passport`, trace parent and deadline are dropped, never trusted, and so are
//! the fields that concern one connection; where the request came from is the gateway's word
//! too (`forwarded.rs`). The body was read whole and bounded by the server:
//! one it found too large or malformed ends the request here, before any instance is asked.
//!
//! On a route that allows WebSockets, an upgrade request goes on with its `Connection` and
//! `Upgrade` (hop-by-hop fields, dropped otherwise) on a connection of its own; an instance's
//! `101` hands that connection over, and the server splices it with the client's.
//!
//! The call itself goes through the service's [`Upstream`](crate::upstream::Upstream): breaker, bulkhead, balancer and
//! retries within a budget (`upstream.rs`), which is also what decides that a request may be
//! sent twice. Each way the call can fail has one fixed answer ([`refusal`]); what went wrong
//! goes to the log with the request's trace id, never to the client.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tessera::TraceContext;
use tessera::passport::{self, PassportKeys};
use tessera::registry::Discovery;

use crate::error::GatewayError;
use crate::forwarded::{self, TrustedProxies};
use crate::limit;
use crate::pool::{Outgoing, Pool};
use crate::routes::CompiledRoute;
use crate::server::{BodyError, Request};
use crate::tokens::Verified;
use crate::upstream::{CallFailure, Exchange};

pub(crate) const ISSUER: &str = "tessera-gateway";

/// What sending a request on takes.
pub struct Forwarder {
    pub discovery: Discovery,
    pub keys: PassportKeys,
    pub pool: Pool,
    /// Whose `X-Forwarded-For` is believed.
    pub proxies: TrustedProxies,
    /// For a whole call, retries included.
    pub timeout: Duration,
    pub max_response: u64,
    /// What an anonymous caller's passports begin with (`Forwarder::passport`).
    pub anonymous: std::sync::OnceLock<passport::Prefix>,
}

impl Forwarder {
    /// Sends `req` with `body` to an instance of `route`'s service on behalf of `caller`.
    pub async fn call(
        &self,
        route: &CompiledRoute,
        req: &Request<'_>,
        body: &[u8],
        caller: Option<&Verified>,
        trace: &TraceContext,
    ) -> Result<Exchange, CallFailure> {
        let upstream = &route.upstream;
        let instances = self
            .discovery
            .instances(&route.service)
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let passport = self.passport(caller, trace);
        let replayable =
            tessera::resilience::may_repeat(&req.method, req.fields.contains("idempotency-key"));
        let forwarding = self.proxies.fields(req.peer, req.secure, &req.fields);
        // An upgrade asks for the protocol in the client's `Upgrade` (the instance checks the
        // handshake's own fields, which pass as they are).
        let upgrade = route.websocket.then(|| upgrade_to(req)).flatten();
        // The subprotocols the client offered, but for an access token (`authenticate.rs`):
        // the passport speaks for it upstream.
        let protocols = upgrade
            .and_then(|_| req.fields.get("sec-websocket-protocol"))
            .map(offered_protocols)
            .unwrap_or_default();
        let extra_upgrade = [
            ("connection", &b"upgrade"[..]),
            ("upgrade", upgrade.unwrap_or_default()),
            ("sec-websocket-protocol", protocols.as_bytes()),
        ];
        let extra_all = [
            (passport::HEADER, &passport[..]),
            ("x-forwarded-for", forwarding.x_forwarded_for.as_bytes()),
            ("forwarded", forwarding.forwarded.as_bytes()),
            ("x-forwarded-proto", forwarding.proto),
            extra_upgrade[0],
            extra_upgrade[1],
            extra_upgrade[2],
        ];
        let extra = match upgrade {
            Some(_) if !protocols.is_empty() => &extra_all[..],
            Some(_) => &extra_all[..6],
            None => &extra_all[..4],
        };
        let request = Outgoing {
            method: &req.method,
            path_and_query: req.target,
            headers: req.fields,
            skip: if forwarding.from_proxy {
                not_forwarded_from_a_proxy
            } else {
                not_forwarded
            },
            extra,
            deadline_ms: None,
            traceparent: None,
            body,
            replayable,
            upgrade: upgrade.is_some(),
            identity: upstream.identity(),
        };
        let result = upstream
            .call(
                &self.pool,
                &instances,
                request,
                self.max_response,
                self.timeout,
                trace,
            )
            .await;
        if let Err(
            failure @ (CallFailure::Unreachable | CallFailure::BadResponse | CallFailure::Timeout),
        ) = &result
        {
            // The client hears one fixed sentence (`refusal`); which service failed, and how,
            // goes to the log under the request's trace.
            tessera::log::in_trace(trace, || {
                tracing::warn!(service = %route.service, route = %route.prefix, ?failure, "upstream call failed");
            });
        }
        result
    }
}

impl Forwarder {
    /// The passport for `caller` (anonymous if none) in `trace`: from what every passport of
    /// that caller begins with, made on its first request and kept with its token (or here,
    /// for the anonymous), so a request only writes and signs its own claims.
    pub(crate) fn passport(&self, caller: Option<&Verified>, trace: &TraceContext) -> Vec<u8> {
        let (sub, roles, sid, prefix): (&str, &[String], _, _) = match caller {
            Some(v) => (&v.sub, &v.roles, v.sid.as_deref(), &v.passport),
            None => (passport::ANONYMOUS, &[], None, &self.anonymous),
        };
        let prefix = prefix.get_or_init(|| self.keys.prefix(ISSUER, sub, roles, sid));
        self.keys
            .mint_with(prefix, trace)
            .unwrap_or_else(|| self.keys.mint_bytes(ISSUER, sub, roles, sid, trace))
    }
}

/// The protocol a WebSocket handshake asks for (RFC 6455 §4.1): a GET with
/// `Connection: upgrade`, `Upgrade: websocket`, a `Sec-WebSocket-Key` and version 13. Nothing
/// else is let through as an upgrade: an `h2c` upgrade, say, would hand the client a raw
/// HTTP/2 connection to the instance, past every stage of the gateway.
pub fn upgrade_to<'a>(req: &Request<'a>) -> Option<&'a [u8]> {
    if req.method != http::Method::GET {
        return None;
    }
    let has = |name: &str, token: &str| {
        req.fields.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case(name.as_bytes()) && crate::fields::has_token(v, token)
        })
    };
    let handshake = has("connection", "upgrade")
        && req
            .fields
            .get("upgrade")
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        && req
            .fields
            .get("sec-websocket-key")
            .is_some_and(|v| !v.is_empty())
        && req
            .fields
            .get("sec-websocket-version")
            .is_some_and(|v| v.trim_ascii() == b"13");
    handshake.then(|| req.fields.get("upgrade")).flatten()
}

/// A `Sec-WebSocket-Protocol` value without the access token a browser offers in it.
fn offered_protocols(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(crate::authenticate::BEARER_SUBPROTOCOL))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether an instance's `101` switches to WebSocket, the only protocol the gateway asked for.
pub fn switched_to_websocket(fields: &crate::fields::Fields<'_>) -> bool {
    fields
        .get("upgrade")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// The request's body, if the server could read it.
#[inline]
pub fn body(read: Result<&[u8], BodyError>) -> Result<&[u8], GatewayError> {
    read.map_err(|e| match e {
        BodyError::TooLarge => GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ),
        BodyError::Malformed => GatewayError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "could not read the request body",
        ),
    })
}

/// What the client is told when a call produced no answer (an open breaker's fallback, where
/// the route has one, is the composition's to give).
pub fn refusal(failure: CallFailure) -> GatewayError {
    match failure {
        CallFailure::Open => GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "circuit_open",
            "the service is failing; try again shortly",
        ),
        CallFailure::Full => limit::BULKHEAD_FULL,
        CallFailure::NoInstance => GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_instance",
            "no live instance of the service",
        ),
        CallFailure::Timeout => GatewayError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the service did not answer in time",
        ),
        CallFailure::Unreachable | CallFailure::BadResponse => GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the service could not be reached",
        ),
    }
}

/// Fields that concern one connection only (RFC 9110 §7.6.1), and the framing the gateway
/// sets itself.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
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

/// Client headers that do not go upstream: hop-by-hop ones, `Expect` (the body is already
/// read), and never the client's own passport, trace parent or deadline (replaced), access
/// token (the passport speaks for it inside) or forwarding fields (`forwarded.rs`).
pub(crate) fn not_forwarded(name: &[u8]) -> bool {
    not_forwarded_from_a_proxy(name) || forwarded::not_from_a_client(name)
}

/// The same, from a trusted proxy, whose `X-Forwarded-Host` and `X-Real-IP` go on.
fn not_forwarded_from_a_proxy(name: &[u8]) -> bool {
    forwarded::not_from_a_proxy(name) || not_forwarded_anyway(name)
}

fn not_forwarded_anyway(name: &[u8]) -> bool {
    const REPLACED: [&str; 6] = [
        "authorization",
        "sec-websocket-protocol",
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

#[cfg(test)]
mod tests {
    use http::Method;
    use tessera_manifest::AuthMode;

    use super::*;
    use crate::testing::{self, Head, forwarder, route};

    /// The values of the field `name` in a head as an instance received it.
    fn values(head: &str, name: &str) -> Vec<String> {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    #[test]
    fn only_websocket_handshakes_are_upgrades() {
        let websocket = [
            "Host: x",
            "Connection: keep-alive, Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ];
        let head = Head::request(&websocket);
        assert_eq!(
            upgrade_to(&head.to(Method::GET, "/ws", b"")),
            Some(&b"websocket"[..])
        );
        assert_eq!(upgrade_to(&head.to(Method::POST, "/ws", b"")), None);
        for (i, replaced) in [
            "Connection: keep-alive",
            "Upgrade: h2c",
            "Sec-WebSocket-Key: ",
            "Sec-WebSocket-Version: 8",
        ]
        .into_iter()
        .enumerate()
        {
            let mut lines = websocket;
            lines[i + 1] = replaced;
            let head = Head::request(&lines);
            assert_eq!(
                upgrade_to(&head.to(Method::GET, "/ws", b"")),
                None,
                "{replaced}"
            );
        }
    }

    #[tokio::test]
    async fn the_instance_gets_a_passport_and_a_trace_in_place_of_what_the_client_sent() {
        let (address, seen) =
            testing::upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
        let gateway = forwarder("catalog", &address);
        let head = Head::request(&[
            "Host: shop.example",
            "Authorization: Bearer client-token",
            "X-Passport: forged",
            "Traceparent: 00-11111111111111111111111111111111-2222222222222222-01",
            "X-Tessera-Deadline-Ms: 999999",
            "X-Forwarded-For: 6.6.6.6",
            "Forwarded: for=6.6.6.6",
            "X-Real-IP: 6.6.6.6",
            "Connection: keep-alive",
            "Expect: 100-continue",
            "Accept: application/json",
            "Content-Length: 4",
        ]);
        let req = head.to(Method::POST, "/api/catalog/items?x=1", b"{\"a\"");
        let caller = Verified {
            sub: "u1".into(),
            roles: vec!["admin".into()],
            sid: Some("s1".into()),
            exp: u64::MAX,
            cached_until: u64::MAX,
            passport: Default::default(),
        };
        let trace = TraceContext::new_root();
        let route = route("catalog", AuthMode::Public, &[]);
        let x = gateway
            .call(&route, &req, b"what was read", Some(&caller), &trace)
            .await
            .unwrap();
        assert_eq!(
            (x.response.status, x.instance.as_str()),
            (StatusCode::OK, "catalog-1")
        );

        let head = seen.lock().unwrap().pop().unwrap();
        assert!(
            head.starts_with("POST /api/catalog/items?x=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert_eq!(values(&head, "accept"), ["application/json"]);
        for dropped in ["authorization", "expect", "connection", "x-real-ip"] {
            assert!(values(&head, dropped).is_empty(), "{dropped}: {head}");
        }
        // Where it came from is what the gateway saw (the test request's peer, 127.0.0.1).
        assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(values(&head, "forwarded"), ["for=127.0.0.1;proto=http"]);
        assert_eq!(values(&head, "x-forwarded-proto"), ["http"]);
        assert_eq!(
            values(&head, "content-length"),
            ["13"],
            "the body's, not the client's"
        );
        // The gateway's trace (under the attempt's own span when spans are recorded: the
        // black-box tests see those).
        let sent = values(&head, "traceparent");
        assert_eq!(sent.len(), 1, "{head}");
        let sent = TraceContext::parse(&sent[0]).unwrap();
        assert_eq!(sent.trace_id, trace.trace_id);
        let deadline = values(&head, tessera::client::DEADLINE_HEADER);
        assert_eq!(deadline.len(), 1, "{head}");
        assert!(deadline[0].parse::<u64>().unwrap() <= 2000, "{head}");
        // One passport, the gateway's, for the caller.
        let passport = values(&head, passport::HEADER);
        assert_eq!(passport.len(), 1, "{head}");
        let passport = testing::passport_keys().verify(&passport[0]).unwrap();
        assert_eq!(
            (passport.sub.as_str(), passport.sid.as_deref()),
            ("u1", Some("s1"))
        );
        assert!(passport.has_role("admin"));
    }

    #[tokio::test]
    async fn an_anonymous_request_carries_an_anonymous_passport() {
        let (address, seen) = testing::upstream(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let gateway = forwarder("catalog", &address);
        let head = Head::request(&[]);
        let req = head.to(Method::GET, "/api/catalog", b"");
        let route = route("catalog", AuthMode::Public, &[]);
        let trace = TraceContext::new_root();
        gateway.call(&route, &req, b"", None, &trace).await.unwrap();
        let head = seen.lock().unwrap().pop().unwrap();
        let passport = values(&head, passport::HEADER);
        let passport = testing::passport_keys().verify(&passport[0]).unwrap();
        assert!(passport.is_anonymous());
    }

    #[tokio::test]
    async fn an_unreachable_instance_is_502_and_the_client_is_not_told_where_it_was() {
        let address = testing::closed_address();
        let port = address.rsplit(':').next().unwrap().to_string();
        let gateway = forwarder("inventory", &address);
        let head = Head::request(&[]);
        // A POST without a key is not sent twice: one refused connection is the answer.
        let req = head.to(Method::POST, "/api/inventory", b"");
        let route = route("inventory", AuthMode::Public, &[]);
        let trace = TraceContext::new_root();
        let failure = gateway
            .call(&route, &req, b"", None, &trace)
            .await
            .err()
            .unwrap();
        assert!(matches!(failure, CallFailure::Unreachable), "{failure:?}");
        let e = refusal(failure);
        assert_eq!((e.status, e.code), (StatusCode::BAD_GATEWAY, "bad_gateway"));
        let mut headers = crate::server::HeaderBuf::default();
        let body = crate::wrap::refusal(&e, "t", &mut headers);
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            !text.contains("127.0.0.1") && !text.contains(&port),
            "{text}"
        );
        assert!(!text.contains("inventory-1"), "nor which instance: {text}");
    }

    #[tokio::test]
    async fn a_service_the_gateway_has_no_upstream_for_is_503_no_instance() {
        let gateway = forwarder("catalog", "127.0.0.1:9");
        let head = Head::request(&[]);
        let req = head.to(Method::GET, "/api/x", b"");
        let route = route("elsewhere", AuthMode::Public, &[]);
        let trace = TraceContext::new_root();
        let failure = gateway
            .call(&route, &req, b"", None, &trace)
            .await
            .err()
            .unwrap();
        let e = refusal(failure);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "no_instance")
        );
    }

    #[test]
    fn every_failure_has_one_fixed_answer() {
        let answers = [
            (CallFailure::Open, 503, "circuit_open"),
            (CallFailure::Full, 503, "bulkhead_full"),
            (CallFailure::NoInstance, 503, "no_instance"),
            (CallFailure::Timeout, 504, "upstream_timeout"),
            (CallFailure::Unreachable, 502, "bad_gateway"),
            (CallFailure::BadResponse, 502, "bad_gateway"),
        ];
        for (failure, status, code) in answers {
            let e = refusal(failure);
            assert_eq!((e.status.as_u16(), e.code), (status, code));
            assert!(matches!(e.message, std::borrow::Cow::Borrowed(_)));
        }
    }

    #[test]
    fn a_body_the_server_could_not_read_ends_the_request() {
        assert_eq!(body(Ok(b"x")).unwrap(), b"x");
        let e = body(Err(BodyError::TooLarge)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (413, "payload_too_large"));
        let e = body(Err(BodyError::Malformed)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "bad_request"));
    }

    #[test]
    fn a_browsers_token_offered_as_a_subprotocol_is_taken_and_never_forwarded() {
        let value = b"tessera, bearer.eyJ0eXAi.eyJzdWIi.c2ln";
        assert_eq!(
            crate::authenticate::subprotocol_token(value),
            Some("eyJ0eXAi.eyJzdWIi.c2ln")
        );
        assert_eq!(super::offered_protocols(value), "tessera");
        assert_eq!(super::offered_protocols(b"bearer.x"), "");
        assert_eq!(
            crate::authenticate::subprotocol_token(b"tessera, chat"),
            None
        );
        assert_eq!(crate::authenticate::subprotocol_token(b"bearer."), None);
        assert!(super::not_forwarded(b"Sec-WebSocket-Protocol"));
    }

    #[tokio::test]
    async fn a_token_offered_as_a_subprotocol_never_reaches_the_instance() {
        let (address, seen) = testing::upstream(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: tessera\r\n\r\n",
        )
        .await;
        let gateway = forwarder("catalog", &address);
        let head = Head::request(&[
            "Host: shop.example",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Protocol: tessera, bearer.the-secret-token",
        ]);
        let req = head.to(Method::GET, "/api/catalog/live", b"");
        let mut route = route("catalog", AuthMode::Public, &[]);
        route.websocket = true;
        let _ = gateway
            .call(&route, &req, b"", None, &TraceContext::new_root())
            .await;
        let head = seen.lock().unwrap().pop().expect("the instance was asked");
        assert!(!head.contains("the-secret-token"), "{head}");
        assert_eq!(
            values(&head, "sec-websocket-protocol"),
            ["tessera"],
            "{head}"
        );
        assert_eq!(values(&head, "upgrade"), ["websocket"], "{head}");
    }
}
