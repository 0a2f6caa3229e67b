//! One client connection: a task with one read buffer, reading heads and bodies under the
//! header, body and idle timeouts (one timer for all three), answering requests in order,
//! closing cleanly. Its stream is a TCP socket when served; any byte stream will do (the
//! fuzzer's is a buffer).

use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::request::{BodyFraming, MAX_HEAD, Reject, RequestHead, parse_head};
use super::response::{HeaderBuf, respond};
use super::{BodyClock, BodyError, Handler, Limits, Request, tunnel};
use crate::RESERVE_AHEAD;
use crate::chunked::{self, ChunkError};
use crate::fields::{Field, Fields};

pub(super) struct Connection<S> {
    stream: S,
    peer: IpAddr,
    secure: bool,
    read: BytesMut,
    write: Vec<u8>,
    fields: Vec<Field>,
    headers: HeaderBuf,
    /// A chunked request body, decoded.
    chunked: Vec<u8>,
    draining: watch::Receiver<bool>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn new(
        stream: S,
        peer: IpAddr,
        secure: bool,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            stream,
            peer,
            secure,
            read: BytesMut::with_capacity(8 * 1024),
            write: Vec::with_capacity(4 * 1024),
            fields: Vec::with_capacity(16),
            headers: HeaderBuf::default(),
            chunked: Vec::new(),
            draining,
        }
    }

    pub(super) async fn run<H: Handler>(mut self, handler: &H, limits: &Limits) {
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
            // body timeout and minimum rate.
            let body = match self.body_in_buffer(&head, limits.max_body) {
                Some(body) => body,
                None => {
                    let mut clock = BodyClock::new(start, limits);
                    if timer.deadline() > clock.deadline() {
                        timer.as_mut().reset(clock.deadline());
                    }
                    let read = self.read_body(&head, limits.max_body, &mut clock, timer.as_mut());
                    match read.await {
                        Ok(body) => body,
                        Err(Closed) => return, // the client went away, or was too slow
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
                secure: self.secure,
                start,
            };
            let (status, body, mut done) = handler.handle(&req, &mut self.headers).await;
            // A `101`: the connection is the new protocol's from its answer on (a tunnel the
            // handler hands over, spliced here), and ends with it.
            let upgrading = status == StatusCode::SWITCHING_PROTOCOLS;
            let tunnel = if upgrading {
                handler.tunnel(&mut done)
            } else {
                None
            };
            let draining = self.draining.has_changed().unwrap_or(true);
            let close = !head.keep_alive || unread || draining;
            let connection = match () {
                _ if upgrading => Some(&b"upgrade"[..]),
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
            if upgrading {
                if let (Ok(()), Some(tunnel), false) = (sent, tunnel, unread) {
                    let early = &buf[consumed..];
                    tunnel::splice(&mut self.stream, early, tunnel, &mut self.draining).await;
                }
                return handler.done(&req, status, done);
            }
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
    fn body_in_buffer(&self, head: &RequestHead, max: u64) -> Option<Result<BodySpan, BodyError>> {
        match head.framing {
            BodyFraming::Length(n) if n > max => Some(Err(BodyError::TooLarge)),
            BodyFraming::Length(n) if self.read.len() - head.len >= n as usize => {
                Some(Ok(BodySpan::Inline(n as usize)))
            }
            BodyFraming::Length(_) | BodyFraming::Chunked => None,
        }
    }

    /// Reads the body after `head` into the buffers.
    async fn read_body(
        &mut self,
        head: &RequestHead,
        max: u64,
        clock: &mut BodyClock,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<Result<BodySpan, BodyError>, Closed> {
        let mut continued = !head.expect_continue;
        match head.framing {
            BodyFraming::Length(n) => {
                let end = head
                    .len
                    .saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
                // Room for the body as it arrives, a little ahead at most: a declared length
                // is only a claim, and an allocation that fails aborts the process.
                self.read
                    .reserve(end.saturating_sub(self.read.len()).min(RESERVE_AHEAD));
                while self.read.len() < end {
                    if !continued {
                        self.write_continue().await?;
                        continued = true;
                    }
                    self.fill(clock, timer.as_mut()).await?;
                }
                Ok(Ok(BodySpan::Inline(n as usize)))
            }
            BodyFraming::Chunked => {
                self.chunked.clear();
                let mut decoder = chunked::Decoder::new(head.len);
                loop {
                    match decoder.decode(&self.read, &mut self.chunked, max) {
                        Ok(true) => {
                            return Ok(Ok(BodySpan::Chunked(decoder.position() - head.len)));
                        }
                        Ok(false) => self.drop_decoded(head.len, &mut decoder),
                        Err(ChunkError::TooLarge) => return Ok(Err(BodyError::TooLarge)),
                        Err(ChunkError::Malformed) => return Ok(Err(BodyError::Malformed)),
                    }
                    if !continued {
                        self.write_continue().await?;
                        continued = true;
                    }
                    self.fill(clock, timer.as_mut()).await?;
                }
            }
        }
    }

    /// Drops from the read buffer the raw chunked body decoded so far (between the head, which
    /// the request borrows, and what is still undecoded), so that a body costs its decoded
    /// size and not its raw one: 1-byte chunks with long extensions would otherwise be kept
    /// whole. The undecoded rest (an unfinished line, bounded by the decoder) moves down; it
    /// moves only once at least as much has been decoded, so the copying stays linear.
    fn drop_decoded(&mut self, body_start: usize, decoder: &mut chunked::Decoder) {
        let decoded = decoder.position() - body_start;
        let rest = self.read.len() - decoder.position();
        if decoded == 0 || decoded < rest {
            return;
        }
        self.read.copy_within(decoder.position().., body_start);
        self.read.truncate(body_start + rest);
        decoder.consumed(decoded);
    }

    /// Tells a client that waits for it to send its body (`Expect: 100-continue`).
    async fn write_continue(&mut self) -> Result<(), Closed> {
        self.stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Closed)
    }

    /// Reads more of a body, unless the client is past its body deadline. The timer is
    /// re-armed only when it fires early: the deadline only moves later as bytes arrive.
    async fn fill(
        &mut self,
        clock: &mut BodyClock,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<(), Closed> {
        if self.read.capacity() - self.read.len() < 4096 {
            self.read.reserve(16 * 1024);
        }
        loop {
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.read) => return match read {
                    Ok(0) | Err(_) => Err(Closed),
                    Ok(n) => {
                        clock.received = clock.received.saturating_add(n as u64);
                        Ok(())
                    }
                },
                () = timer.as_mut() => {
                    let deadline = clock.deadline();
                    if Instant::now() >= deadline {
                        tracing::debug!(peer = %self.peer, received = clock.received, "request body not sent in time");
                        return Err(Closed);
                    }
                    timer.as_mut().reset(deadline);
                }
            }
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

/// The client closed the connection, or it failed.
struct Closed;

enum BodySpan {
    /// This many bytes after the head, in the read buffer.
    Inline(usize),
    /// Decoded into the connection's chunked buffer; this many bytes of the read buffer are
    /// left of it after the head (what was decoded early may have been dropped already).
    Chunked(usize),
}
