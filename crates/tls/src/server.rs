//! The `ServerConfig` of a public TLS listener.
//!
//! Resumption is by tickets (RFC 5077 for TLS 1.2, PSK tickets for 1.3) encrypted under keys
//! that rotate every six hours: a returning client skips the key exchange and the signature,
//! and the server keeps nothing per client. A small stateful cache serves the clients that
//! don't take tickets. No 0-RTT: early data can be replayed, and the gateway forwards
//! non-idempotent requests.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::ServerSessionMemoryCache;

use crate::Certificates;

/// A server config presenting `certificates`, offering `alpn` (in order of preference).
pub fn server_config(
    certificates: Arc<Certificates>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(config))
}
