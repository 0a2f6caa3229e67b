//! TLS for Tessera: the certificates a server presents, read from files and reloaded when
//! they change; the choice among several by the name the client asks for (SNI); and the
//! certificate authorities a system makes for itself.
//!
//! One crypto provider serves the whole workspace, `ring` ([`provider`]): aws-lc would cost a
//! minute of C build on every clean checkout for nothing we use. Protocol versions are TLS 1.3
//! and 1.2, with rustls's suites, all of them AEAD with forward secrecy (no CBC, no RSA key
//! exchange, nothing a scanner flags).
//!
//! - [`certificates`]: chain and key files → a [`Certificates`] resolver that picks by SNI and
//!   swaps in new files without a restart: a handshake gets the old pair or the new one,
//!   never a half-written file (a pair is swapped only once its key matches its chain).
//! - [`server`]: the `ServerConfig` a public listener uses: ALPN, session resumption.
//! - [`authority`]: a certificate authority kept in a directory, created at first start: the
//!   development CA that makes HTTPS work on a laptop with one command, and the system CA.
//! - [`identity`]: mutual TLS between a system's processes, each certificate naming who holds
//!   it.

pub mod authority;
pub mod certificates;
pub mod identity;
pub mod internal;
pub mod server;

use std::sync::Arc;

pub use authority::Authority;
pub use certificates::{CertificateFiles, Certificates};
pub use identity::Identity;
pub use rustls;
pub use server::server_config;
pub use tokio_rustls::{self, TlsAcceptor, TlsConnector, server::TlsStream};

/// The workspace's one crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions every Tessera endpoint speaks.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
