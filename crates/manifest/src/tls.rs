//! `[gateway.tls]` and `[gateway.http2]`: HTTPS at the edge, and HTTP/2's limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The gateway's HTTPS listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Where HTTPS is served (HTTP/2 and HTTP/1.1, by ALPN).
    pub listen: SocketAddr,
    /// Certificate chains and their keys, PEM, relative to the manifest; the first is served
    /// to clients whose SNI matches none. None: a development certificate for `localhost` and
    /// the listen address, from a development CA that `tessera up` keeps in
    /// `<state_dir>/tls/dev-ca` (trust its `ca.pem`).
    #[serde(default)]
    pub certificates: Vec<CertificatePaths>,
    /// What the plain listener (`gateway.listen`) does once HTTPS is on.
    #[serde(default)]
    pub plain: Plain,
    /// How often the certificate files are checked for a change, in milliseconds.
    #[serde(default = "default_reload_ms")]
    pub reload_ms: u64,
}

fn default_reload_ms() -> u64 {
    1000
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificatePaths {
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// What plain HTTP gets when HTTPS is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plain {
    /// `308 Permanent Redirect` to the same target over HTTPS (the method and body are kept).
    #[default]
    Redirect,
    /// `403 https_required`, for APIs whose clients should fail loudly rather than follow.
    Refuse,
    /// Served as before, beside HTTPS (a load balancer in front that terminates TLS itself).
    Serve,
}

/// HTTP/2's limits, per client connection (`[gateway.http2]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2 {
    /// Offer `h2` by ALPN on the HTTPS listener.
    pub enabled: bool,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listener too.
    pub h2c: bool,
    /// Streams a client may have open at once. Each holds its request and its answer whole,
    /// so this multiplies what one connection can hold (up to `max_body_bytes` plus
    /// `max_response_bytes` a stream).
    pub max_concurrent_streams: u32,
    /// The largest header list (decoded) a request may carry, in bytes.
    pub max_header_list_bytes: u32,
    /// Flow-control window per stream and per connection: how much of a request body a
    /// client may send before the gateway reads it.
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// Streams a client may reset before the gateway has answered them, at once: past it the
    /// connection is closed (the "rapid reset" attack, CVE-2023-44487).
    pub max_pending_resets: usize,
}

impl Default for Http2 {
    fn default() -> Self {
        Self {
            enabled: true,
            h2c: false,
            max_concurrent_streams: 32,
            max_header_list_bytes: 16 * 1024,
            stream_window_bytes: 256 * 1024,
            connection_window_bytes: 1024 * 1024,
            max_pending_resets: 20,
        }
    }
}
