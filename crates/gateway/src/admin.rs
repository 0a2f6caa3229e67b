//! The gateway's admin listener: `/metrics`, `/status/resilience` and `/status/process`, on an address of their
//! own (`gateway.admin_listen`, loopback by default), and `/health/*` there too.
//!
//! What they tell (the upstreams, their breakers and instances, request counts per route) is
//! for the operator, not for whoever can reach the public port; a separate listener keeps
//! them off it by where they are bound, which no route or header can change, and lets a
//! firewall or a scraper treat the two differently. It runs on the same HTTP/1.1 server core
//! as the public side, with its own connection limit, so that a flood on one does not starve
//! the other.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tessera::TraceContext;

use crate::envelope;
use crate::proxy::Gateway;
use crate::server::{self, HeaderBuf, Request};
use crate::wrap;

/// The most connections the admin listener serves at once (scrapers and operators).
const MAX_CONNECTIONS: usize = 64;

/// Answers the admin endpoints from the gateway's state.
pub struct Admin {
    pub gateway: Arc<Gateway>,
}

impl Admin {
    /// The limits of the admin listener: the public side's timeouts, few connections, no
    /// bodies to speak of.
    pub fn limits(public: &server::Limits) -> server::Limits {
        server::Limits {
            max_body: 64 * 1024,
            max_connections: MAX_CONNECTIONS,
            ..public.clone()
        }
    }
}

impl server::Handler for Admin {
    type Done<'a> = ();

    async fn handle<'a>(
        &'a self,
        req: &'a Request<'a>,
        headers: &mut HeaderBuf,
    ) -> (StatusCode, Bytes, ()) {
        let (status, body) = match req.path {
            "/metrics" => {
                headers.push(b"content-type", b"text/plain; version=0.0.4");
                (StatusCode::OK, Bytes::from(tessera::metrics::render()))
            }
            "/status/process" => {
                headers.push(b"content-type", wrap::JSON);
                (StatusCode::OK, Bytes::from(tessera::admin::Process::json()))
            }
            "/status/resilience" => {
                headers.push(b"content-type", wrap::JSON);
                (
                    StatusCode::OK,
                    Bytes::from(self.gateway.resilience_status()),
                )
            }
            "/health/live" | "/health/ready" => {
                headers.push(b"content-type", wrap::JSON);
                (
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ready\"}"),
                )
            }
            _ => {
                let body = self.error(
                    "route_not_found",
                    "the admin listener serves /metrics, /status/resilience, /status/process and /health/*",
                    headers,
                );
                (StatusCode::NOT_FOUND, body)
            }
        };
        (status, body, ())
    }

    fn done(&self, _: &Request<'_>, _: StatusCode, (): ()) {}

    fn malformed(
        &self,
        status: StatusCode,
        message: &str,
        _peer: IpAddr,
        headers: &mut HeaderBuf,
    ) -> Bytes {
        self.error(envelope::code_for(status.as_u16()), message, headers)
    }
}

impl Admin {
    fn error(&self, code: &str, message: &str, headers: &mut HeaderBuf) -> Bytes {
        let trace = TraceContext::new_root();
        let mut trace_id = [0u8; 32];
        let trace_id = tessera::trace::hex(&trace.trace_id, &mut trace_id);
        headers.push(b"content-type", wrap::JSON);
        envelope::error(code, message, trace_id)
    }
}

/// How long the admin listener lets its connections finish once the gateway has stopped.
pub const DRAIN: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::routes::RouteTable;
    use crate::server::Handler;
    use crate::testing::{self, Head};

    #[tokio::test]
    async fn answers_metrics_status_and_health_and_nothing_else() {
        tessera::metrics::handle();
        let admin = Admin {
            gateway: Arc::new(Gateway {
                routes: RouteTable::new(&[]),
                tokens: None,
                revoke_for: Duration::from_secs(60),
                forwarder: testing::forwarder("shop", "127.0.0.1:9"),
                tunnel_idle: Duration::from_secs(60),
                tunnel_max: Duration::from_secs(600),
                streams: Default::default(),
                shared: None,
            }),
        };
        let head = Head::request(&[]);
        for (path, status, contains) in [
            ("/metrics", 200, ""),
            ("/status/resilience", 200, "\"shop\""),
            ("/health/ready", 200, "ready"),
            ("/api/x", 404, "route_not_found"),
        ] {
            let req = head.to(Method::GET, path, b"");
            let mut headers = HeaderBuf::default();
            let (got, body, ()) = admin.handle(&req, &mut headers).await;
            let body = String::from_utf8(body.to_vec()).unwrap();
            assert_eq!(got.as_u16(), status, "{path}: {body}");
            assert!(body.contains(contains), "{path}: {body}");
        }
    }
}
