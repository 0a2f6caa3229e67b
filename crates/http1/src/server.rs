//! The gateway's client-facing HTTP/1.1 server.
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
//! `Expect: 100-continue`, `HEAD`. Malformed heads get 400, oversized heads 431, bodies over
//! the limit 413 (declared ones before any of the body is read); `Content-Length` together
//! with `Transfer-Encoding` is refused (request smuggling). A client must send a whole head
//! within the header timeout; an idle kept-alive connection is closed after the idle timeout.
//! At most `max_connections` are open at once; more wait in the listen backlog. On shutdown,
//! idle connections close at once and busy ones after their response.
//!
//! Timers: one per connection, armed once and re-armed only when it fires, so a request on a
//! busy connection touches no timer at all.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chunked::{self, ChunkError};
use crate::fields::{self, Field, Fields};
use crate::head::{self, FramingError};

/// The most request header fields read; more is 431.
const MAX_HEADERS: usize = 100;
/// The longest request head read; longer is 431.
const MAX_HEAD: usize = 64 * 1024;

/// What the server enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client must send a whole request head within this, from its first byte (or from the
    /// connection's opening, for its first request).
    pub header_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed; a request body must
    /// arrive within it too.
    pub idle_timeout: Duration,
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

/// What a handler answers besides the status and body: the response's header fields.
#[derive(Default)]
pub struct HeaderBuf {
    buf: Vec<u8>,
    has_date: bool,
}

impl HeaderBuf {
    /// Appends a field. Values must be valid field values (no CR or LF): the handler's own, or
    /// ones `httparse` accepted.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        debug_assert!(!value.iter().any(|b| *b == b'\r' || *b == b'\n'));
        self.has_date |= name.eq_ignore_ascii_case(b"date");
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.has_date = false;
    }

    /// The fields as written, for tests.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
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

    /// Called with what [`Handler::handle`] left to do, once its answer is written (or
    /// failed to be).
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
    let (draining, _) = watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let limits = Arc::new(limits);
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
                        max = limits.max_connections,
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
        let conn = Connection::new(stream, peer.ip(), draining.subscribe());
        let (handler, limits) = (handler.clone(), limits.clone());
        tokio::spawn(async move {
            conn.run(&*handler, &limits).await;
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

struct Connection {
    stream: TcpStream,
    peer: IpAddr,
    read: BytesMut,
    write: Vec<u8>,
    fields: Vec<Field>,
    headers: HeaderBuf,
    /// A chunked request body, decoded.
    chunked: Vec<u8>,
    draining: watch::Receiver<bool>,
}

/// A request head's facts, read before its body (no borrow of the buffer kept).
struct Head {
    len: usize,
    method: Method,
    target: (usize, usize),
    path_len: usize,
    framing: Framing,
    keep_alive: bool,
    /// An HTTP/1.0 client asked for keep-alive (and is told it got it).
    keep_alive_10: bool,
    expect_continue: bool,
}

enum Framing {
    Length(u64),
    Chunked,
}

/// A request the server answers itself.
struct Reject(StatusCode, &'static str);

impl Connection {
    fn new(stream: TcpStream, peer: IpAddr, draining: watch::Receiver<bool>) -> Self {
        Self {
            stream,
            peer,
            read: BytesMut::with_capacity(8 * 1024),
            write: Vec::with_capacity(4 * 1024),
            fields: Vec::with_capacity(16),
            headers: HeaderBuf::default(),
            chunked: Vec::new(),
            draining,
        }
    }

    async fn run<H: Handler>(mut self, handler: &H, limits: &Limits) {
        let opened = Instant::now();
        // Idle since (the last answer, or the opening) and for how long it may be.
        let (mut idle_since, mut idle_limit) = (opened, limits.header_timeout);
        // When the first bytes of a head still incomplete arrived.
        let mut head_since: Option<Instant> = None;
        let timer = tokio::time::sleep_until(opened + limits.header_timeout);
        tokio::pin!(timer);
        loop {
            // 1. A whole head.
            let head = loop {
                if !self.read.is_empty() {
                    match parse_head(&self.read, &mut self.fields) {
                        Ok(Some(head)) => break head,
                        Ok(None) if self.read.len() < MAX_HEAD => {
                            if head_since.is_none() {
                                // The header timeout runs from here: bring the timer forward
                                // if it is set for a later (idle) deadline.
                                let since = Instant::now();
                                head_since = Some(since);
                                if timer.deadline() > since + limits.header_timeout {
                                    timer.as_mut().reset(since + limits.header_timeout);
                                }
                            }
                        }
                        Ok(None) => {
                            let reject = Reject(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request head too large",
                            );
                            return self.reject(handler, reject).await;
                        }
                        Err(reject) => return self.reject(handler, reject).await,
                    }
                }
                let idle = self.read.is_empty();
                tokio::select! {
                    biased;
                    read = self.stream.read_buf(&mut self.read) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    () = &mut timer => {
                        let deadline = match head_since {
                            Some(since) => since + limits.header_timeout,
                            None => idle_since + idle_limit,
                        };
                        if Instant::now() >= deadline {
                            if !idle {
                                tracing::debug!(peer = %self.peer, "request head not sent in time");
                            }
                            return;
                        }
                        timer.as_mut().reset(deadline);
                    },
                    _ = self.draining.changed(), if idle => return,
                }
                if self.read.capacity() - self.read.len() < 1024 {
                    self.read.reserve(8 * 1024);
                }
            };
            head_since = None;
            let start = Instant::now();
            idle_limit = limits.idle_timeout;

            // 2. Its body: from the buffer when it is all there (no timer), else read under the
            // idle timeout.
            let body = match self.body_in_buffer(&head, limits.max_body) {
                Some(body) => body,
                None => {
                    let read = self.read_body(&head, limits.max_body);
                    match tokio::time::timeout(limits.idle_timeout, read).await {
                        Ok(Ok(body)) => body,
                        Ok(Err(Closed)) | Err(_) => return, // the client went away, or stalled
                    }
                }
            };
            let consumed = match &body {
                Ok(BodySpan::Inline(n) | BodySpan::Chunked(n)) => head.len + n,
                Err(_) => 0,
            };
            let unread = body.is_err();

            // 3. The answer.
            self.headers.clear();
            let (target_start, target_len) = head.target;
            let buf = &self.read[..];
            let target =
                std::str::from_utf8(&buf[target_start..target_start + target_len]).unwrap_or("/");
            let req = Request {
                method: head.method.clone(),
                target,
                path: &target[..head.path_len],
                fields: Fields::new(&buf[..head.len], &self.fields),
                body: match body {
                    Ok(BodySpan::Inline(n)) => Ok(&buf[head.len..head.len + n]),
                    Ok(BodySpan::Chunked(_)) => Ok(&self.chunked),
                    Err(e) => Err(e),
                },
                peer: self.peer,
                start,
            };
            let (status, body, done) = handler.handle(&req, &mut self.headers).await;
            let draining = self.draining.has_changed().unwrap_or(true);
            let close = !head.keep_alive || unread || draining;
            let connection = match () {
                _ if close => Some(&b"close"[..]),
                _ if head.keep_alive_10 => Some(&b"keep-alive"[..]),
                _ => None,
            };
            let sent = respond(
                &mut self.stream,
                &mut self.write,
                &self.headers,
                status,
                &body,
                head.method == Method::HEAD,
                connection,
            )
            .await;
            handler.done(&req, status, done);
            if sent.is_err() || close {
                return self.close().await;
            }
            idle_since = Instant::now(); // idle from the end of the answer
            if timer.deadline() > idle_since + idle_limit {
                // An idle timeout shorter than the header timeout the timer was armed with.
                timer.as_mut().reset(idle_since + idle_limit);
            }
            self.read.advance(consumed);
            if !self.chunked.is_empty() {
                self.chunked.clear();
            }
        }
    }

    /// The body after `head` if the buffer holds all of it (or it need not be read).
    fn body_in_buffer(&self, head: &Head, max: u64) -> Option<Result<BodySpan, BodyError>> {
        match head.framing {
            Framing::Length(n) if n > max => Some(Err(BodyError::TooLarge)),
            Framing::Length(n) if self.read.len() - head.len >= n as usize => {
                Some(Ok(BodySpan::Inline(n as usize)))
            }
            Framing::Length(_) | Framing::Chunked => None,
        }
    }

    /// Reads the body after `head` into the buffers.
    async fn read_body(
        &mut self,
        head: &Head,
        max: u64,
    ) -> Result<Result<BodySpan, BodyError>, Closed> {
        let mut continued = !head.expect_continue;
        match head.framing {
            Framing::Length(n) => {
                let end = head.len + n as usize;
                self.read.reserve(end.saturating_sub(self.read.len()));
                while self.read.len() < end {
                    if !continued {
                        self.write_continue().await?;
                        continued = true;
                    }
                    self.fill().await?;
                }
                Ok(Ok(BodySpan::Inline(n as usize)))
            }
            Framing::Chunked => {
                self.chunked.clear();
                let mut decoder = chunked::Decoder::new(head.len);
                loop {
                    match decoder.decode(&self.read, &mut self.chunked, max) {
                        Ok(true) => {
                            return Ok(Ok(BodySpan::Chunked(decoder.position() - head.len)));
                        }
                        Ok(false) => {}
                        Err(ChunkError::TooLarge) => return Ok(Err(BodyError::TooLarge)),
                        Err(ChunkError::Malformed) => return Ok(Err(BodyError::Malformed)),
                    }
                    if !continued {
                        self.write_continue().await?;
                        continued = true;
                    }
                    self.fill().await?;
                }
            }
        }
    }

    /// Tells a client that waits for it to send its body (`Expect: 100-continue`).
    async fn write_continue(&mut self) -> Result<(), Closed> {
        self.stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Closed)
    }

    async fn fill(&mut self) -> Result<(), Closed> {
        if self.read.capacity() - self.read.len() < 4096 {
            self.read.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) | Err(_) => Err(Closed),
            Ok(_) => Ok(()),
        }
    }

    async fn reject<H: Handler>(mut self, handler: &H, Reject(status, message): Reject) {
        self.headers.clear();
        let body = handler.malformed(status, message, self.peer, &mut self.headers);
        let sent = respond(
            &mut self.stream,
            &mut self.write,
            &self.headers,
            status,
            &body,
            false,
            Some(b"close"),
        )
        .await;
        if sent.is_ok() {
            self.close().await;
        }
    }

    /// Ends the connection after a response: no more writes, and what the client still sends
    /// is read and dropped briefly, so that the response is not lost to a reset.
    async fn close(mut self) {
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Writes a response into `stream` through the buffer `out`; `connection` is the
/// `Connection` field's value, if one is sent. (A function of the connection's parts, not
/// of the connection: the request it answers still borrows the read buffer.)
async fn respond(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    headers: &HeaderBuf,
    status: StatusCode,
    body: &Bytes,
    head_request: bool,
    connection: Option<&[u8]>,
) -> std::io::Result<()> {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&headers.buf);
    // 1xx, 204 and 304 have no body, and no length either.
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.has_date {
        out.extend_from_slice(b"date: ");
        date::now(out);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(value) = connection {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body: &[u8] = if bodiless || head_request { &[] } else { body };
    crate::write_message(stream, out, body).await
}

/// The client closed the connection, or it failed.
struct Closed;

enum BodySpan {
    /// This many bytes after the head, in the read buffer.
    Inline(usize),
    /// Decoded into the connection's chunked buffer; this many bytes of the read buffer.
    Chunked(usize),
}

/// Parses a request head; `Ok(None)` while it is incomplete.
fn parse_head(buf: &[u8], fields: &mut Vec<Field>) -> Result<Option<Head>, Reject> {
    let bad = |message| Reject(StatusCode::BAD_REQUEST, message);
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ));
        }
        Err(_) => return Err(bad("malformed request")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("malformed method"))?;
    let raw_target = parsed.path.unwrap_or_default();
    let target = origin_form(raw_target).ok_or_else(|| bad("the request target must be a path"))?;
    let target_start = target.as_ptr() as usize - buf.as_ptr() as usize;
    let path_len = target.find('?').unwrap_or(target.len());
    let http11 = parsed.version == Some(1);

    let framing = head::framing(parsed.headers).map_err(|e| match e {
        FramingError::MalformedLength => bad("malformed Content-Length"),
        FramingError::ConflictingLength => bad("conflicting Content-Length"),
    })?;
    if framing.expect_other {
        return Err(Reject(
            StatusCode::EXPECTATION_FAILED,
            "only 100-continue is understood",
        ));
    }
    let (close, keep_alive_asked) = (framing.close, framing.keep_alive);
    if framing.transfer_encoding && (framing.length.is_some() || !framing.chunked) {
        // Both framings at once is how requests are smuggled past a proxy; a last coding
        // other than chunked leaves the body's end unknown (RFC 9112 §6.3).
        return Err(bad("ambiguous request body framing"));
    }
    fields::record(buf, parsed.headers, fields);
    Ok(Some(Head {
        len,
        method,
        target: (target_start, target.len()),
        path_len,
        framing: if framing.chunked {
            Framing::Chunked
        } else {
            Framing::Length(framing.length.unwrap_or(0))
        },
        keep_alive: !close && (http11 || keep_alive_asked),
        keep_alive_10: !close && !http11 && keep_alive_asked,
        expect_continue: framing.expect_continue && http11,
    }))
}

/// The path and query of a request target in origin form (`/p?q`) or absolute form
/// (`http://host/p?q`, which proxies must accept); `None` for any other form.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some(&rest[i..]),
        _ => None, // no path (`http://host` or `http://host?q`): not worth guessing
    }
}

/// The `Date` field's value, formatted once a second.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn now(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs || text.is_empty() {
                *text = httpdate::fmt_http_date(now);
                *at = secs;
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests;
