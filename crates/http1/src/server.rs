//! The server core the gateway is built on: its client-facing HTTP/1.1.
//!
//! A proxy's whole job per request is to read a head, decide, write a head: building a
//! `Request` with a header map, a URI and a body stream for every request, and a `Response`
//! with another map on the way back, is most of what a general-purpose server costs it. Here a
//! connection is one task with one read buffer: the head is parsed in place (`httparse`, the
//! fields kept as offsets, `fields.rs`), the body is read whole and bounded (the gateway wraps
//! and forwards whole bodies anyway), the [`Handler`] gets borrowed views of all of it, and
//! the response is written from one reused buffer in one system call.
//!
//! What a client can rely on: keep-alive (HTTP/1.1 by default, HTTP/1.0 on request),
//! pipelined requests answered in order, `Content-Length` and chunked request bodies,
//! `Expect: 100-continue`, `HEAD`, and upgrades (`101`, then a tunnel: `tunnel.rs`). Malformed heads get 400, oversized heads 431, bodies over
//! the limit 413 (declared ones before any of the body is read); `Content-Length` together
//! with `Transfer-Encoding` is refused (request smuggling). A client must send a whole head
//! within the header timeout, and a body within the body timeout or at the minimum rate
//! (slowloris and its slow-body variant hold a connection for the price of a few bytes); an
//! idle kept-alive connection is closed after the idle timeout.
//! At most `max_connections` are open at once; more wait in the listen backlog. On shutdown,
//! idle connections close at once and busy ones after their response.
//!
//! Timers: one per connection, armed once and re-armed only when it fires, so a request on a
//! busy connection touches no timer at all.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fields::Fields;

mod connection;
mod request;
mod response;
mod tunnel;

use connection::Connection;
pub use request::{BodyFraming, Reject, RequestHead, parse_head};
pub use response::{HeaderBuf, date};
pub use tunnel::{Spliced, Tunnel};

/// What the server enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client must send a whole request head within this, from its first byte (or from the
    /// connection's opening, for its first request).
    pub header_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A request body must arrive within this of its head, plus a second for every
    /// [`Limits::min_body_rate`] bytes of it received: a client that sends a body slower than
    /// that is closed, as one that sends its head too slowly is.
    pub body_timeout: Duration,
    /// The least rate a body is read at, in bytes per second, once past the body timeout;
    /// 0: the whole body within the body timeout.
    pub min_body_rate: u64,
    /// The largest request body read.
    pub max_body: u64,
    /// The most client connections open at once; past it, new ones wait in the listen
    /// backlog until one closes (as nginx's `worker_connections` does).
    pub max_connections: usize,
}

/// One request, borrowed from its connection's buffers.
pub struct Request<'a> {
    pub method: Method,
    /// Origin form: `/path?query`.
    pub target: &'a str,
    pub path: &'a str,
    pub fields: Fields<'a>,
    pub body: Result<&'a [u8], BodyError>,
    pub peer: IpAddr,
    /// Whether it came over TLS (its scheme is `https`).
    pub secure: bool,
    /// When the request's head had arrived.
    pub start: Instant,
}

/// Why a request has no body to hand on. The connection is closed after the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over [`Limits::max_body`], declared or as it arrived.
    TooLarge,
    /// Malformed chunked framing.
    Malformed,
}

/// What answers requests.
pub trait Handler: Send + Sync + 'static {
    /// What is left to do once the answer is written (the access log line, the metrics):
    /// it is not the client's to wait for.
    type Done<'a>: Send
    where
        Self: 'a;

    /// Answers `req`: the status and body, with header fields pushed onto `headers`
    /// (`content-length`, `date` and `connection` are the server's), and what is left to do.
    fn handle<'a>(
        &'a self,
        req: &'a Request<'a>,
        headers: &mut HeaderBuf,
    ) -> impl Future<Output = (StatusCode, Bytes, Self::Done<'a>)> + Send;

    /// For a `101 Switching Protocols` answer: the connection to splice the client's with
    /// (`tunnel.rs`), taken from what [`Handler::handle`] left to do. None: the connection
    /// closes after the answer.
    fn tunnel(&self, done: &mut Self::Done<'_>) -> Option<Tunnel> {
        let _ = done;
        None
    }

    /// Called with what [`Handler::handle`] left to do, once its answer is written (or
    /// failed to be; after a tunnel, once the tunnel has closed).
    fn done(&self, req: &Request<'_>, status: StatusCode, done: Self::Done<'_>);

    /// Answers a request the server could not read (400, 417 or 431); the connection closes
    /// after it.
    fn malformed(
        &self,
        status: StatusCode,
        message: &str,
        peer: IpAddr,
        headers: &mut HeaderBuf,
    ) -> Bytes;
}

/// Serves `handler` on `listener` until `shutdown` completes, then lets the connections
/// finish what they are doing, for at most `drain`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = Arc::new(limits);
    let slots = Slots::new(limits.max_connections);
    accept(
        listener,
        slots,
        shutdown,
        drain,
        move |stream, peer, draining| {
            let (handler, limits) = (handler.clone(), limits.clone());
            async move {
                let conn = Connection::new(stream, peer.ip(), false, draining.0);
                conn.run(&*handler, &limits).await;
            }
        },
    )
    .await
}

/// Tells a connection that the server is shutting down: an idle one closes at once, a busy
/// one after its answer.
pub struct Draining(watch::Receiver<bool>);

impl Draining {
    /// Completes once the server shuts down.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|d| *d).await;
    }
}

/// The connections a server may have open at once, shared by the listeners that draw on it
/// (the gateway's plain and HTTPS listeners count against one `max_connections`).
#[derive(Clone)]
pub struct Slots {
    semaphore: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl Slots {
    pub fn new(max_connections: usize) -> Self {
        Self {
            semaphore: Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))),
            max: max_connections.max(1),
        }
    }
}

/// The accept loop every listener of the gateway shares: connections take one of `slots`
/// (past them, new ones wait in the kernel's backlog), `on_connection` runs on a task of its
/// own for each (its future ends when the connection does), until `shutdown` completes; then
/// connections are told to drain and given at most `drain` to finish.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    slots: Slots,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    on_connection: F,
) where
    F: Fn(TcpStream, SocketAddr, Draining) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (draining, _) = watch::channel(false);
    let Slots {
        semaphore: slots,
        max: max_connections,
    } = slots;
    tokio::pin!(shutdown);
    let mut full = false; // said once per time the limit is reached
    loop {
        // A slot first: at the limit, connections wait in the kernel's backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                full = false;
                slot
            }
            Err(_) => {
                if !full {
                    tracing::warn!(
                        max = max_connections,
                        "connection limit reached; new connections wait"
                    );
                    full = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = on_connection(stream, peer, Draining(draining.subscribe()));
        tokio::spawn(async move {
            conn.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = draining.send(true);
    if tokio::time::timeout(drain, draining.closed())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed");
    }
}

/// Serves HTTP/1.1 on one connection accepted by [`accept`] (after a TLS handshake, say:
/// `secure` says so to the handler), until it closes or the server drains.
pub async fn serve_stream<H: Handler, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: IpAddr,
    secure: bool,
    draining: Draining,
    handler: &H,
    limits: &Limits,
) {
    Connection::new(stream, peer, secure, draining.0)
        .run(handler, limits)
        .await;
}

/// Serves one connection until it closes, as [`serve`] serves each it accepts (without the
/// draining on shutdown). Any byte stream will do: this is how the fuzz targets drive the
/// whole server, heads, bodies and pipelining, without a socket.
pub async fn serve_connection<H: Handler, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: IpAddr,
    handler: &H,
    limits: &Limits,
) {
    let (draining, receiver) = watch::channel(false);
    Connection::new(stream, peer, false, receiver)
        .run(handler, limits)
        .await;
    drop(draining); // kept until the end: a dropped sender reads as a shutdown
}

/// When a request body must have arrived by: the body timeout from the head's arrival, plus
/// what the bytes received so far earned at the minimum rate.
pub struct BodyClock {
    pub start: Instant,
    pub timeout: Duration,
    /// Bytes per second; 0 earns nothing.
    pub rate: u64,
    /// Raw body bytes read so far.
    pub received: u64,
}

impl BodyClock {
    /// The clock of a body whose head arrived at `start`, under `limits`.
    pub fn new(start: Instant, limits: &Limits) -> Self {
        Self {
            start,
            timeout: limits.body_timeout,
            rate: limits.min_body_rate,
            received: 0,
        }
    }

    /// The most a body earns: past this, it has taken long enough whatever its rate.
    const MAX_EARNED: Duration = Duration::from_secs(24 * 3600);

    pub fn deadline(&self) -> Instant {
        let earned = match self.rate {
            0 => Duration::ZERO,
            rate => Duration::from_millis(self.received.saturating_mul(1000) / rate),
        };
        self.start + self.timeout + earned.min(Self::MAX_EARNED)
    }
}

#[cfg(test)]
mod tests;
