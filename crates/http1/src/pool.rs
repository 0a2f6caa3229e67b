//! Keep-alive HTTP/1.1 connections to instances, driven on the request's own task.
//!
//! A request takes an idle connection to its instance (or opens one), writes the request in
//! one buffer, reads the response head and its whole body, and gives the connection back when
//! the exchange left it clean. No connection task, no channel between the request and its
//! connection, no header map built for the request: a proxied client's headers are written
//! straight from its request, with the caller's own after them. Idle connections live in a
//! short list per instance address under one lock held for a pop or a push.
//!
//! Reading a response, head and body, is `pool/receive.rs`.
//!
//! Callers read bodies whole (the gateway wraps them in the envelope, the bus parses them),
//! which keeps this client small:
//! `Content-Length` and chunked bodies, bodies delimited by the connection's close, `HEAD`,
//! 1xx, 204 and 304 without a body. Anything else malformed is [`SendError::Failed`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use tessera_tls::Identity;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::fields::{Field, Fields};
use crate::stream::Stream;

mod receive;

pub use receive::read_response;
use receive::receive;

/// Why a request reached no response.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect,
    /// The connection failed, or the instance answered with something that is not HTTP/1.1.
    Failed,
    /// The response body is larger than allowed.
    TooLarge,
}

/// What goes upstream.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin form: `/path?query`.
    pub path_and_query: &'a str,
    /// The client's header fields, written as they are except those `skip` names.
    pub headers: Fields<'a>,
    pub skip: fn(&[u8]) -> bool,
    /// The caller's own headers, written after the proxied ones.
    pub extra: &'a [(&'a str, &'a [u8])],
    /// What is left of the request's time, sent as `x-tessera-deadline-ms` (each hop honours it).
    pub deadline_ms: Option<u64>,
    /// The W3C `traceparent` of this attempt (each attempt is a span of its own).
    pub traceparent: Option<&'a [u8]>,
    pub body: &'a [u8],
    /// Whether the request may be sent twice (it is then resent on a fresh connection when a
    /// kept-alive one turns out to have been closed under it).
    pub replayable: bool,
    /// Whether it asks to switch protocols (a WebSocket handshake; its `Connection` and
    /// `Upgrade` fields are the caller's `extra`): it goes on a connection of its own, which
    /// a `101 Switching Protocols` answer hands over in [`Incoming::upgraded`].
    pub upgrade: bool,
    /// Who the instance must prove to be, when mutual TLS is on (`tessera_tls::internal`):
    /// a connection to anyone else fails its handshake.
    pub identity: Option<&'a Identity>,
}

/// A whole response: its head's bytes with the positions of its fields, and its body.
#[derive(Debug)]
pub struct Incoming {
    pub status: StatusCode,
    head: Bytes,
    fields: Vec<Field>,
    pub body: Bytes,
    /// After a `101` to an [`Outgoing::upgrade`] request: the connection, now the new
    /// protocol's.
    /// Boxed: an answer is moved up through every caller's future, and this is rare.
    pub upgraded: Option<Box<Upgraded>>,
}

/// A connection handed over by a `101 Switching Protocols` answer.
#[derive(Debug)]
pub struct Upgraded {
    pub stream: Stream,
    /// What the instance sent after its answer's head, already in the new protocol.
    pub leftover: Bytes,
}

impl Incoming {
    pub fn fields(&self) -> Fields<'_> {
        Fields::new(&self.head, &self.fields)
    }
}

pub struct Pool {
    /// Boxed: a connection is taken out and put back on every request.
    #[allow(clippy::vec_box)]
    idle: Mutex<HashMap<Box<str>, Vec<Box<Connection>>>>,
    max_idle_per_instance: usize,
    connect_timeout: Duration,
}

/// A connection to an instance: a TCP socket when pooled; any byte stream for
/// [`read_response`].
struct Connection<S = Stream> {
    stream: S,
    /// Read buffer; empty between exchanges.
    read: BytesMut,
    /// Write buffer, reused.
    write: Vec<u8>,
    /// Who the instance proved to be (mutual TLS), for reuse by calls to that identity only:
    /// an address the registry still lists for one service may be another's by now.
    identity: Option<Identity>,
}

impl Connection {
    /// Whether the instance closed (or wrote to) the connection while it was idle. Costs no
    /// system call unless the runtime has seen the socket become readable.
    fn is_closed(&self) -> bool {
        self.stream.is_closed()
    }
}

impl Pool {
    pub fn new(max_idle_per_instance: usize, connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            max_idle_per_instance,
            connect_timeout,
        }
    }

    /// Sends `req` to `address` and reads the response, whose body may be at most
    /// `max_response` bytes.
    ///
    /// The paths a request rarely takes (an upgrade; a new connection, with its TLS
    /// handshake) are boxed: their futures are a kilobyte and more, which inline would make
    /// this future, and every caller's that awaits it, that much larger, copied whole each
    /// time one moves; a pooled request allocates nothing for them (BENCHMARKS.md §1).
    pub async fn send(
        &self,
        address: &str,
        req: &Outgoing<'_>,
        max_response: u64,
    ) -> Result<Incoming, SendError> {
        if req.upgrade {
            return Box::pin(self.upgrade(address, req, max_response)).await;
        }
        if let Some(mut conn) = self.take(address, req.identity) {
            match exchange(&mut conn, address, req, max_response).await {
                Ok((resp, reusable)) => {
                    if reusable {
                        self.put(address, conn);
                    }
                    return Ok(resp);
                }
                // Closed under us before answering: the instance most likely closed the idle
                // connection as the request went out. A request that may be sent twice goes
                // again on a fresh connection; another may have been acted on, so it fails.
                Err(Failure::Closed) if req.replayable => {}
                Err(f) => return Err(f.into()),
            }
        }
        let mut conn = Box::pin(self.connect(address, req.identity)).await?;
        let (resp, reusable) = exchange(&mut conn, address, req, max_response)
            .await
            .map_err(SendError::from)?;
        if reusable {
            self.put(address, conn);
        }
        Ok(resp)
    }

    /// An upgrade request, on a connection of its own that is never pooled.
    async fn upgrade(
        &self,
        address: &str,
        req: &Outgoing<'_>,
        max_response: u64,
    ) -> Result<Incoming, SendError> {
        let mut conn = self.connect(address, req.identity).await?;
        write_request(&mut conn, address, req)
            .await
            .map_err(|_| SendError::Failed)?;
        let (mut resp, _) = receive(&mut conn, req.method, max_response, true).await?;
        if resp.status == StatusCode::SWITCHING_PROTOCOLS {
            resp.upgraded = Some(Box::new(Upgraded {
                leftover: conn.read.split().freeze(),
                stream: conn.stream,
            }));
        }
        Ok(resp)
    }

    fn take(&self, address: &str, identity: Option<&Identity>) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(address)?;
        while let Some(conn) = list.pop() {
            // Closed, or proven to be someone else than this call means to reach: dropped.
            if !conn.is_closed() && conn.identity.as_ref() == identity {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, address: &str, conn: Box<Connection>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = match idle.get_mut(address) {
            Some(list) => list,
            None => idle.entry(address.into()).or_default(),
        };
        if list.len() < self.max_idle_per_instance {
            list.push(conn);
        }
    }

    /// A new connection to `address`; with mutual TLS on, a TLS one on which the instance
    /// proved to be `identity` (the handshake within the connect timeout too).
    async fn connect(
        &self,
        address: &str,
        identity: Option<&Identity>,
    ) -> Result<Box<Connection>, SendError> {
        let connect = async {
            let tcp = TcpStream::connect(address)
                .await
                .map_err(|_| SendError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let Some(internal) = tessera_tls::internal::get() else {
                return Ok(Stream::Plain(tcp));
            };
            // Whom an internal call means to reach is part of the call: without it, nothing
            // could be checked, so nothing is sent.
            let Some(name) = identity.and_then(|i| i.server_name().ok()) else {
                tracing::warn!(
                    address,
                    "an internal call without the identity it means to reach"
                );
                return Err(SendError::Connect);
            };
            let connector = tessera_tls::TlsConnector::from(internal.client_config());
            match connector.connect(name, tcp).await {
                Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
                Err(e) => {
                    tracing::warn!(address, expected = %identity.map(|i| i.to_string()).unwrap_or_default(), error = %e, "TLS handshake with an instance failed");
                    Err(SendError::Connect)
                }
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SendError::Connect)??;
        Ok(Box::new(Connection {
            stream,
            read: BytesMut::with_capacity(8 * 1024),
            write: Vec::with_capacity(1024),
            identity: identity.cloned(),
        }))
    }

    /// Forgets idle connections their instance closed (or that went away).
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.is_closed());
            !list.is_empty()
        });
    }
}

/// How an exchange failed.
#[derive(Debug)]
enum Failure {
    /// The connection ended before any of the response arrived.
    Closed,
    /// It failed later, or the response is not HTTP/1.1.
    Broken,
    TooLarge,
}

impl From<Failure> for SendError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Closed | Failure::Broken => SendError::Failed,
            Failure::TooLarge => SendError::TooLarge,
        }
    }
}

/// One request and its response on `conn`; also says whether `conn` can serve another.
async fn exchange(
    conn: &mut Connection,
    address: &str,
    req: &Outgoing<'_>,
    max_response: u64,
) -> Result<(Incoming, bool), Failure> {
    write_request(conn, address, req)
        .await
        .map_err(|_| Failure::Closed)?;
    receive(conn, req.method, max_response, false).await
}

async fn write_request<S: AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    address: &str,
    req: &Outgoing<'_>,
) -> std::io::Result<()> {
    let buf = &mut conn.write;
    buf.clear();
    buf.extend_from_slice(req.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(req.path_and_query.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    buf.extend_from_slice(address.as_bytes());
    buf.extend_from_slice(b"\r\n");
    for (name, value) in req.headers.iter() {
        if !(req.skip)(name) {
            header(buf, name, value);
        }
    }
    for (name, value) in req.extra {
        header(buf, name.as_bytes(), value);
    }
    if let Some(traceparent) = req.traceparent {
        header(buf, b"traceparent", traceparent);
    }
    let mut n = itoa::Buffer::new();
    if let Some(ms) = req.deadline_ms {
        header(
            buf,
            crate::DEADLINE_HEADER.as_bytes(),
            n.format(ms).as_bytes(),
        );
    }
    let body = req.body;
    if !body.is_empty() || !matches!(*req.method, Method::GET | Method::HEAD | Method::DELETE) {
        header(buf, b"content-length", n.format(body.len()).as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    crate::write_message(&mut conn.stream, buf, body).await
}

fn header(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn no_skip(_: &[u8]) -> bool {
        false
    }

    fn get<'a>(path: &'a str, body: &'a Bytes) -> Outgoing<'a> {
        Outgoing {
            method: &Method::GET,
            path_and_query: path,
            headers: Fields::empty(),
            skip: no_skip,
            extra: &[("x-extra", b"1")],
            deadline_ms: None,
            traceparent: None,
            body,
            replayable: true,
            upgrade: false,
            identity: None,
        }
    }

    /// A hyper HTTP/1.1 upstream that answers with the request line, host and x-extra, and
    /// counts the connections it accepted.
    async fn upstream(keep_alive: bool) -> (String, Arc<AtomicUsize>) {
        use http_body_util::{BodyExt, Full};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let text = format!(
                                "{} {} host={:?} extra={:?} body={}",
                                parts.method,
                                parts.uri,
                                parts.headers.get("host"),
                                parts.headers.get("x-extra"),
                                String::from_utf8_lossy(&body)
                            );
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(text),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    fn text(resp: &Incoming) -> String {
        String::from_utf8(resp.body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reuses_connections_and_writes_the_request() {
        let (address, accepted) = upstream(true).await;
        let pool = Pool::new(4, Duration::from_secs(1));
        for i in 0..5 {
            let path = format!("/x?i={i}");
            let resp = pool
                .send(&address, &get(&path, &Bytes::new()), 1024)
                .await
                .unwrap();
            assert_eq!(resp.status, StatusCode::OK);
            assert_eq!(
                text(&resp),
                format!("GET /x?i={i} host=Some({address:?}) extra=Some(\"1\") body=")
            );
        }
        let body = Bytes::from_static(b"hello");
        let mut post = get("/p", &body);
        post.method = &Method::POST;
        let resp = pool.send(&address, &post, 1024).await.unwrap();
        assert!(text(&resp).ends_with("body=hello"), "{}", text(&resp));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_serves_again_only_the_identity_it_was_opened_for() {
        let (address, accepted) = upstream(true).await;
        let pool = Pool::new(4, Duration::from_secs(1));
        let (order, catalog) = (
            Identity::service("shop", "order"),
            Identity::service("shop", "catalog"),
        );
        let empty = Bytes::new();
        let mut req = get("/x", &empty);
        for (identity, connections) in [
            (&order, 1),
            (&order, 1),
            (&catalog, 2),
            (&catalog, 2),
            (&order, 3),
        ] {
            req.identity = Some(identity);
            pool.send(&address, &req, 1024).await.unwrap();
            assert_eq!(accepted.load(Ordering::SeqCst), connections, "{identity}");
        }
    }

    #[tokio::test]
    async fn connections_the_instance_closes_are_replaced() {
        let (address, accepted) = upstream(false).await;
        let pool = Pool::new(4, Duration::from_secs(1));
        for _ in 0..5 {
            let resp = pool
                .send(&address, &get("/", &Bytes::new()), 1024)
                .await
                .unwrap();
            assert_eq!(resp.status, StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn refused_connections_are_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = Pool::new(4, Duration::from_secs(1));
        let sent = pool.send(&address, &get("/", &Bytes::new()), 1024).await;
        assert_eq!(sent.unwrap_err(), SendError::Connect);
    }

    /// An upstream that writes the given raw responses, one per request it reads, then
    /// closes (each connection serves the script from its start).
    async fn scripted(responses: Vec<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let responses = responses.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for resp in responses {
                        // Read one request head (these tests send no bodies).
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                        buf.drain(..end + 4);
                        // Written in two pieces, to exercise partial reads.
                        let (a, b) = resp.split_at(resp.len() / 2);
                        stream.write_all(a).await.unwrap();
                        stream.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        stream.write_all(b).await.unwrap();
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn reads_every_body_framing() {
        let address = scripted(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
        ])
        .await;
        let pool = Pool::new(4, Duration::from_secs(1));
        let empty = Bytes::new();
        let req = get("/", &empty);
        let resp = pool.send(&address, &req, 1024).await.unwrap();
        assert_eq!(
            (resp.status, text(&resp).as_str()),
            (StatusCode::OK, "hello")
        );
        assert_eq!(resp.fields().get("x-a"), Some(&b"1"[..]));
        let resp = pool.send(&address, &req, 1024).await.unwrap();
        assert_eq!(text(&resp), "abcdefg");
        let resp = pool.send(&address, &req, 1024).await.unwrap();
        assert_eq!((resp.status, resp.body.len()), (StatusCode::NO_CONTENT, 0));
        let resp = pool.send(&address, &req, 1024).await.unwrap();
        assert_eq!(text(&resp), "until the end");
        // That connection ended with its body; the next request opens another.
        let resp = pool.send(&address, &req, 1024).await.unwrap();
        assert_eq!(text(&resp), "hello");
    }

    #[tokio::test]
    async fn refuses_oversized_and_malformed_responses() {
        let pool = Pool::new(4, Duration::from_secs(1));
        let empty = Bytes::new();
        let req = get("/", &empty);
        let cases: [(&'static [u8], SendError); 6] = [
            (
                // A few bytes, then a chunk that claims nearly 2^64 more.
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nfffffffffffffff0\r\nxx",
                SendError::TooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n",
                SendError::TooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n800\r\n",
                SendError::TooLarge,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
                SendError::Failed,
            ),
            (b"SMTP ready\r\n\r\n", SendError::Failed),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
                SendError::Failed,
            ),
        ];
        for (raw, expected) in cases {
            let address = scripted(vec![raw]).await;
            let got = pool.send(&address, &req, 1024).await.unwrap_err();
            assert_eq!(got, expected, "{}", String::from_utf8_lossy(raw));
        }
        // Whatever the caller allows.
        let address = scripted(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nfffffffffffffff0\r\nxx",
        ])
        .await;
        let got = pool.send(&address, &req, u64::MAX).await.unwrap_err();
        assert_eq!(got, SendError::TooLarge);
    }

    #[tokio::test]
    async fn a_body_to_the_close_is_bounded_even_when_it_came_with_its_head() {
        // Found by fuzzing (http1_response): the limit was checked only on what was read after
        // the head, so a body that arrived in the head's read passed it.
        let raw = b"HTTP/1.0 200 OK\r\n\r\n0123456789abcdefXYZ";
        let read = |max| read_response(&raw[..], &Method::GET, max);
        assert_eq!(read(16).await.unwrap_err(), SendError::TooLarge);
        let (resp, reusable) = read(19).await.unwrap();
        assert_eq!((&resp.body[..], reusable), (&raw[19..], false));
    }

    #[tokio::test]
    async fn a_declared_length_is_not_memory_until_it_arrives() {
        // The server's fault that fuzzing found (http1_request_head), here too, confirmed with
        // http1_response: room for the whole declared body was reserved before any of it came,
        // and under a large limit an allocation that fails aborts the process.
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 1099511627776\r\n\r\nabc";
        let got = read_response(&raw[..], &Method::GET, u64::MAX).await;
        assert_eq!(got.unwrap_err(), SendError::Failed); // the stream ended first
        // A body larger than what is reserved ahead arrives whole.
        let mut raw = b"HTTP/1.1 200 OK\r\ncontent-length: 3145728\r\n\r\n".to_vec();
        raw.resize(raw.len() + (3 << 20), b'x');
        let (resp, _) = read_response(&raw[..], &Method::GET, u64::MAX)
            .await
            .unwrap();
        assert_eq!(resp.body.len(), 3 << 20);
    }

    #[tokio::test]
    async fn idle_connections_the_instance_closed_are_not_used() {
        // One answer per connection, kept alive, then the instance closes it while idle.
        let address = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]).await;
        let pool = Pool::new(4, Duration::from_secs(1));
        let empty = Bytes::new();
        let mut req = get("/", &empty);
        req.replayable = false; // so that only the idle check can make the second one work
        for _ in 0..3 {
            let resp = pool.send(&address, &req, 1024).await.unwrap();
            assert_eq!(text(&resp), "hello");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_request_that_may_not_repeat_is_not_resent() {
        // The instance closes every connection without answering.
        let address = scripted(vec![]).await;
        let pool = Pool::new(4, Duration::from_secs(1));
        let empty = Bytes::new();
        let mut req = get("/", &empty);
        req.replayable = false;
        assert_eq!(
            pool.send(&address, &req, 1024).await.unwrap_err(),
            SendError::Failed
        );
    }
}
