//! The gateway's public listeners, and which protocol each connection speaks.
//!
//! - **Plain** (`gateway.listen`): HTTP/1.1 by the gateway's own server (`tessera_http1`),
//!   and HTTP/2 with prior knowledge (h2c) when `gateway.http2.h2c` is on. Once HTTPS is on,
//!   it redirects to it or refuses (`redirect.rs`), unless told to serve as before.
//! - **HTTPS** (`gateway.tls.listen`): a TLS handshake (rustls, `tessera_tls`) within the
//!   header timeout, then ALPN decides: `h2` goes to hyper's HTTP/2 server (`h2.rs`), anything
//!   else to the same HTTP/1.1 server as plain connections, over the TLS stream.
//!
//! Whatever the protocol, every request reaches the same `Handler`, the stages of `proxy.rs`:
//! the protocol is this module's business only. Every listener shares one accept loop
//! (`server::accept`): the connection limit, and the drain on shutdown.

mod h2;
mod redirect;

pub use h2::{Body, Streamed, Streaming};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tessera_manifest::{Http2, Plain};
use tessera_tls::TlsAcceptor;
use tokio::net::{TcpListener, TcpStream};

use crate::server::{self, Handler, Limits};

pub use redirect::Redirect;

/// The protocols offered by ALPN on the HTTPS listener, by preference.
pub fn alpn(http2: &Http2) -> Vec<&'static [u8]> {
    if http2.enabled {
        vec![b"h2", b"http/1.1"]
    } else {
        vec![b"http/1.1"]
    }
}

/// How a listener's connections are served.
pub struct Protocols {
    pub limits: Arc<Limits>,
    pub http2: Arc<Http2>,
    /// Shared by every public listener: `max_connections` in all.
    pub slots: server::Slots,
}

/// Serves a public listener: with `tls`, HTTPS (a handshake, then HTTP/2 or HTTP/1.1 as ALPN
/// agreed); without, plain HTTP/1.1, and h2c when configured.
pub async fn serve<H: Handler + Streaming>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    protocols: Protocols,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let Protocols {
        limits,
        http2,
        slots,
    } = protocols;
    server::accept(
        listener,
        slots,
        shutdown,
        drain,
        move |stream, peer, draining| {
            let (tls, handler) = (tls.clone(), handler.clone());
            let (limits, http2) = (limits.clone(), http2.clone());
            async move {
                let peer_ip = peer.ip();
                let Some(acceptor) = tls else {
                    if http2.h2c && starts_with_preface(&stream, limits.header_timeout).await {
                        h2::serve(stream, peer_ip, false, draining, handler, limits, &http2).await;
                    } else {
                        server::serve_stream(stream, peer_ip, false, draining, &*handler, &limits)
                            .await;
                    }
                    return;
                };
                let handshake = acceptor.accept(stream);
                let tls = match tokio::time::timeout(limits.header_timeout, handshake).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake not done in time"),
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    h2::serve(tls, peer_ip, true, draining, handler, limits, &http2).await;
                } else {
                    server::serve_stream(tls, peer_ip, true, draining, &*handler, &limits).await;
                }
            }
        },
    )
    .await
}

/// What a plain listener does with requests once HTTPS is on, if it does not serve them.
pub fn plain_handler(plain: Plain, https_port: u16) -> Option<Redirect> {
    match plain {
        Plain::Serve => None,
        Plain::Redirect => Some(Redirect::new(https_port, false)),
        Plain::Refuse => Some(Redirect::new(https_port, true)),
    }
}

/// The connection preface of HTTP/2 (RFC 9113 §3.4); no HTTP/1.1 request starts like it.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with HTTP/2's preface, looked at without reading it.
async fn starts_with_preface(stream: &TcpStream, within: Duration) -> bool {
    let mut seen = [0u8; PREFACE.len()];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if stream.readable().await.is_err() {
            return false;
        }
        let n = match stream.peek(&mut seen).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if seen[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A preface cut across packets: wait for the rest (h2c is off by default, and a
        // client gets no more than its header timeout this way).
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
