//! The plain listener once HTTPS is on: `308 Permanent Redirect` to the same target over
//! HTTPS (a 308 keeps the method and body, where a 301 lets clients turn a POST into a GET),
//! or `403 https_required` when the manifest says to refuse. `/health/*` is answered either
//! way, for probes that only speak plain HTTP.
//!
//! The redirect's host is the request's own `Host` with the HTTPS port in place of its port,
//! and only if it is a plain host name or address: anything else gets 400, so that a client
//! cannot make the gateway write a `Location` of its choosing.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tessera::TraceContext;

use crate::server::{Handler, HeaderBuf, Request};
use crate::{envelope, wrap};

pub struct Redirect {
    /// `:port`, or nothing for 443.
    port: String,
    refuse: bool,
}

impl Redirect {
    pub fn new(https_port: u16, refuse: bool) -> Self {
        let port = match https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        Self { port, refuse }
    }

    fn error(
        &self,
        status: StatusCode,
        code: &str,
        message: &str,
        headers: &mut HeaderBuf,
    ) -> Bytes {
        let trace = TraceContext::new_root();
        let mut hex = [0u8; 32];
        let trace_id = tessera::trace::hex(&trace.trace_id, &mut hex);
        headers.push(b"content-type", wrap::JSON);
        headers.push(b"x-trace-id", trace_id.as_bytes());
        let _ = status;
        envelope::error(code, message, trace_id)
    }
}

/// The host part of a `Host` value, if it is a name or an address and nothing else.
fn host_of(value: &str) -> Option<&str> {
    let host = match value.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            let (inside, after) = (&rest[..end], &rest[end + 1..]);
            inside.parse::<std::net::Ipv6Addr>().ok()?;
            if !(after.is_empty() || port_ok(after.strip_prefix(':')?)) {
                return None;
            }
            &value[..end + 2]
        }
        None => {
            let (host, port) = value.split_once(':').unwrap_or((value, ""));
            if !(port.is_empty() && !value.contains(':') || port_ok(port)) {
                return None;
            }
            host
        }
    };
    let plain = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    plain.then_some(host)
}

fn port_ok(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// Nothing is streamed on the plain listener's redirect.
impl super::Streaming for Redirect {}

impl Handler for Redirect {
    type Done<'a> = ();

    async fn handle<'a>(
        &'a self,
        req: &'a Request<'a>,
        headers: &mut HeaderBuf,
    ) -> (StatusCode, Bytes, ()) {
        if let "/health/live" | "/health/ready" = req.path {
            headers.push(b"content-type", wrap::JSON);
            return (
                StatusCode::OK,
                Bytes::from_static(b"{\"status\":\"ready\"}"),
                (),
            );
        }
        if self.refuse {
            let status = StatusCode::FORBIDDEN;
            let body = self.error(
                status,
                "https_required",
                "this API is served over HTTPS only",
                headers,
            );
            return (status, body, ());
        }
        let Some(host) = req.fields.get_str("host").and_then(host_of) else {
            let status = StatusCode::BAD_REQUEST;
            let body = self.error(
                status,
                "bad_request",
                "a request needs a valid Host to be redirected to HTTPS",
                headers,
            );
            return (status, body, ());
        };
        let mut location = String::with_capacity(16 + host.len() + req.target.len());
        location.push_str("https://");
        location.push_str(host);
        location.push_str(&self.port);
        location.push_str(req.target);
        headers.push(b"location", location.as_bytes());
        (StatusCode::PERMANENT_REDIRECT, Bytes::new(), ())
    }

    fn done(&self, req: &Request<'_>, status: StatusCode, (): ()) {
        tessera::metrics::record_request(
            "https-redirect",
            req.method.as_str(),
            status.as_u16(),
            req.start.elapsed(),
        );
    }

    fn malformed(
        &self,
        status: StatusCode,
        message: &str,
        _peer: IpAddr,
        headers: &mut HeaderBuf,
    ) -> Bytes {
        tessera::metrics::record_request("https-redirect", "-", status.as_u16(), Duration::ZERO);
        self.error(
            status,
            envelope::code_for(status.as_u16()),
            message,
            headers,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_hosts_are_redirected_to() {
        assert_eq!(host_of("shop.example"), Some("shop.example"));
        assert_eq!(host_of("shop.example:8080"), Some("shop.example"));
        assert_eq!(host_of("127.0.0.1:80"), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_of("[::1]"), Some("[::1]"));
        for bad in [
            "",
            ":80",
            "evil.example/path",
            "a@b",
            "a:b",
            "a:80:90",
            "[::1",
            "[nothost]",
            "[::1]x",
            "a b",
            "host:123456",
            "a\"b",
        ] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }
}
