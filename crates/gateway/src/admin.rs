//! The gateway's admin listener: `/metrics`, `/status/resilience`, `/status/routes` (the route
//! table in force) and `/status/process`, on an address of their own (`gateway.admin_listen`, loopback by default), `/health/*` there too, and
//! `POST /admin/reload` (`reload.rs`).
//!
//! Reading is open to whoever reaches the listener; reloading is not, wherever it is bound:
//! it takes a passport the control plane minted for the system's admin (`tessera reload`
//! goes through the control plane), verified with the system's passport keys.
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

use tessera::passport;

use crate::envelope;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::server::{self, HeaderBuf, Request};
use crate::wrap;

/// The most connections the admin listener serves at once (scrapers and operators).
const MAX_CONNECTIONS: usize = 64;

/// Answers the admin endpoints from the gateway's state.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    /// None: the gateway was not started from a manifest file, and has nothing to reload.
    pub reloader: Option<Arc<Reloader>>,
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
            "/status/routes" => {
                headers.push(b"content-type", wrap::JSON);
                let routes = self.gateway.routes.load().status();
                (StatusCode::OK, Bytes::from(routes.to_string()))
            }
            "/health/live" | "/health/ready" => {
                headers.push(b"content-type", wrap::JSON);
                (
                    StatusCode::OK,
                    Bytes::from_static(b"{\"status\":\"ready\"}"),
                )
            }
            "/admin/reload" => self.reload(req, headers).await,
            _ => {
                let body = self.error(
                    "route_not_found",
                    "the admin listener serves /metrics, /status/resilience, /status/routes, /status/process, /health/* and /admin/reload",
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
    /// `POST /admin/reload`, for the control plane's admin passport only.
    async fn reload(&self, req: &Request<'_>, headers: &mut HeaderBuf) -> (StatusCode, Bytes) {
        if req.method != http::Method::POST {
            let body = self.error("method_not_allowed", "reload with POST", headers);
            return (StatusCode::METHOD_NOT_ALLOWED, body);
        }
        let passport = req
            .fields
            .get_str(passport::HEADER)
            .map(|p| self.gateway.forwarder.keys.verify(p));
        match passport {
            Some(Ok(p)) if p.iss == passport::CONTROL_ISSUER && p.has_role("admin") => {}
            Some(Ok(_)) => {
                let body = self.error(
                    "forbidden",
                    "reloading is for the system's admin, through the control plane",
                    headers,
                );
                return (StatusCode::FORBIDDEN, body);
            }
            _ => {
                let body = self.error("unauthenticated", "a valid passport is required", headers);
                return (StatusCode::UNAUTHORIZED, body);
            }
        }
        let Some(reloader) = &self.reloader else {
            let body = self.error(
                "not_found",
                "this gateway was not started from a manifest file",
                headers,
            );
            return (StatusCode::NOT_FOUND, body);
        };
        match reloader.reload().await {
            Ok(reloaded) => {
                headers.push(b"content-type", wrap::JSON);
                let body = serde_json::to_vec(&reloaded).unwrap_or_default();
                (StatusCode::OK, Bytes::from(body))
            }
            Err(why) => {
                let body = self.error("invalid_manifest", &why, headers);
                (StatusCode::UNPROCESSABLE_ENTITY, body)
            }
        }
    }

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

    /// The admin listener of a gateway with one route, to `shop`, and nothing to reload.
    fn admin() -> Admin {
        let routes = RouteTable::new(&[tessera_manifest::Route {
            prefix: "/api".into(),
            service: "shop".into(),
            auth: tessera_manifest::AuthMode::Public,
            roles: vec![],
            rate_limit: None,
            fallback: None,
            websocket: false,
            grpc: false,
        }]);
        Admin {
            gateway: Arc::new(testing::gateway(routes)),
            reloader: None,
        }
    }

    #[tokio::test]
    async fn reloading_takes_the_control_planes_passport_for_the_admin() {
        let admin = admin();
        let keys = testing::passport_keys();
        let trace = TraceContext::new_root();
        let mint = |issuer: &str, roles: &[&str]| {
            let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
            format!(
                "x-passport: {}",
                keys.mint_header(issuer, "admin", &roles, None, &trace)
                    .to_str()
                    .unwrap()
            )
        };
        let gateways = mint("tessera-gateway", &["admin"]);
        let system = mint(passport::CONTROL_ISSUER, &["system"]);
        let admins = mint(passport::CONTROL_ISSUER, &["admin"]);
        for (method, fields, status, code) in [
            (Method::POST, vec![], 401, "unauthenticated"),
            (
                Method::POST,
                vec!["x-passport: forged.x.y"],
                401,
                "unauthenticated",
            ),
            // A user with the shop's admin role, through the gateway: not the platform's.
            (Method::POST, vec![gateways.as_str()], 403, "forbidden"),
            (Method::POST, vec![system.as_str()], 403, "forbidden"),
            (
                Method::GET,
                vec![admins.as_str()],
                405,
                "method_not_allowed",
            ),
            // Allowed, and nothing to reload: started without a manifest file.
            (Method::POST, vec![admins.as_str()], 404, "not_found"),
        ] {
            let head = Head::request(&fields);
            let req = head.to(method, "/admin/reload", b"");
            let mut headers = HeaderBuf::default();
            let (got, body, ()) = admin.handle(&req, &mut headers).await;
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (got.as_u16(), body["error"]["code"].as_str()),
                (status, Some(code)),
                "{fields:?}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn answers_metrics_status_and_health_and_nothing_else() {
        tessera::metrics::handle();
        let admin = admin();
        let head = Head::request(&[]);
        for (path, status, contains) in [
            ("/metrics", 200, ""),
            ("/status/resilience", 200, "\"shop\""),
            ("/status/routes", 200, "\"prefix\":\"/api\""),
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
