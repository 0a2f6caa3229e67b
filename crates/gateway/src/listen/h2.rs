//! HTTP/2 for the gateway: hyper's server does the framing, HPACK, flow control and the
//! protocol's own defences; each request is then read whole and handed to the same
//! [`Handler`] the HTTP/1.1 server calls, as a [`Request`] whose fields are laid out as an
//! HTTP/1.1 head's would be (`fields::push`). The stages never know which protocol a request
//! came by, so there is one request path, not two.
//!
//! Limits, besides the HTTP/1.1 server's body limit, body timeout and minimum rate, which
//! apply per stream here (`server::BodyClock`):
//! - concurrent streams, header list size and flow-control windows from `[gateway.http2]`;
//! - rapid reset (CVE-2023-44487): at most `max_pending_resets` streams reset by the client
//!   before they are answered, and a bound on the streams the server itself resets for
//!   protocol errors ("MadeYouReset"); past either the connection is closed;
//! - PING and SETTINGS floods: the h2 crate keeps one pending PONG and one pending SETTINGS
//!   acknowledgement at most, and answers a client that doesn't read with backpressure;
//! - a connection with no open stream is closed after the header timeout if it never sent a
//!   request, after the idle timeout otherwise, gracefully (GOAWAY); one that doesn't let
//!   that finish within a second is dropped.
//!
//! Response fields that only mean something on an HTTP/1.1 connection are not sent.
//! Cookies split across fields (RFC 9113 §8.2.3) are joined back for the upstream.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tessera_manifest::Http2;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::fields::{self, Fields};
use crate::server::{BodyClock, BodyError, Draining, Handler, HeaderBuf, Limits, Request, date};

/// How long streams in flight get once the server drains (as the accept loop's drain).
const DRAIN: Duration = Duration::from_secs(10);

/// Serves HTTP/2 on one connection until it closes, is idle too long, or the server drains.
pub async fn serve<H: Handler + Streaming, S>(
    stream: S,
    peer: IpAddr,
    secure: bool,
    mut draining: Draining,
    handler: Arc<H>,
    limits: Arc<Limits>,
    config: &Http2,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = {
        let (activity, limits) = (activity.clone(), limits.clone());
        hyper::service::service_fn(move |req| {
            let (handler, limits) = (handler.clone(), limits.clone());
            let open = activity.begin();
            async move {
                let mut response = answer(&*handler, req, peer, secure, &limits).await;
                // A stream stays open until its body's end; a whole answer, from here.
                if let Either::Right(streamed) = response.body_mut() {
                    streamed.open = Some(open);
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(config.max_header_list_bytes)
        .initial_stream_window_size(config.stream_window_bytes)
        .initial_connection_window_size(config.connection_window_bytes)
        .max_pending_accept_reset_streams(config.max_pending_resets)
        .max_local_error_reset_streams(config.max_pending_resets.max(1) * 50)
        .max_send_buf_size(256 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let timer = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(timer);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = draining.wait(), if !closing => {
                // GOAWAY: no new streams; those in flight get the server's drain time.
                conn.as_mut().graceful_shutdown();
                closing = true;
                timer.as_mut().reset(Instant::now() + DRAIN);
            }
            () = &mut timer => {
                if closing {
                    return tracing::debug!(%peer, "HTTP/2 connection did not close in time");
                }
                let (since, limit) = activity.idle(&limits);
                let now = Instant::now();
                match since {
                    Some(since) if now >= since + limit => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(now + Duration::from_secs(1));
                    }
                    Some(since) => timer.as_mut().reset(since + limit),
                    None => timer.as_mut().reset(now + limit), // busy: look again later
                }
            }
        }
    }
}

/// What an HTTP/2 answer's body is: whole (the stages' answers), or an instance's stream
/// passed on as it comes, trailers included (gRPC).
pub type Body = Either<Full<Bytes>, Streamed>;

/// An instance's stream passed on as it comes; while it lasts, the client's stream counts as
/// open (a gRPC stream quiet for longer than the idle timeout is not a connection to close).
pub struct Streamed {
    body: Incoming,
    open: Option<Open>,
}

impl Streamed {
    pub fn new(body: Incoming) -> Self {
        Self { body, open: None }
    }
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Requests a handler passes on as streams, not read whole: gRPC (HTTP/2 only: it needs
/// trailers and long-lived streams). The default streams nothing.
pub trait Streaming: Send + Sync + 'static {
    /// Whether a request to `path` is a stream to pass on.
    fn streams(&self, path: &str) -> bool {
        let _ = path;
        false
    }

    /// Passes `req` (its head read, its body `body` still to come) on, and the answer back.
    fn stream<'a>(
        &'a self,
        req: Request<'a>,
        parts: &'a http::request::Parts,
        body: Incoming,
    ) -> impl Future<Output = http::Response<Body>> + Send + 'a {
        let _ = (req, parts, body);
        async { http::Response::new(Either::Left(Full::new(Bytes::new()))) }
    }
}

/// Reads one stream's request whole and answers it through `handler` (or passes it on as a
/// stream, when the handler says so).
async fn answer<H: Handler + Streaming>(
    handler: &H,
    req: http::Request<Incoming>,
    peer: IpAddr,
    secure: bool,
    limits: &Limits,
) -> http::Response<Body> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let mut headers = HeaderBuf::default();
    // What the HTTP/1.1 server refuses, refused here too: an origin-form target only (no
    // CONNECT, no `*`), and exactly one host (`:authority` or one `Host`).
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|t| t.starts_with('/'));
    let refusal = match (&parts.method, target) {
        (&Method::CONNECT, _) | (_, None) => Some("the request target must be a path"),
        _ if hosts > 1 || (hosts == 0 && parts.uri.authority().is_none()) => {
            Some("a request needs exactly one host")
        }
        _ => None,
    };
    if let Some(message) = refusal {
        let status = StatusCode::BAD_REQUEST;
        let body = handler.malformed(status, message, peer, &mut headers);
        return response(status, &headers, body, false);
    }
    let target = target.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(p, _)| p);

    // The fields as the HTTP/1.1 server would have them: `Host` from `:authority`.
    let mut head = Vec::with_capacity(512);
    let mut recorded = Vec::with_capacity(parts.headers.len() + 1);
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(header::HOST)
    {
        fields::push(
            &mut head,
            &mut recorded,
            b"host",
            authority.as_str().as_bytes(),
        );
    }
    let mut cookies: Option<Vec<u8>> = None;
    for (name, value) in &parts.headers {
        if name == header::COOKIE {
            let joined = cookies.get_or_insert_with(Vec::new);
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(value.as_bytes());
        } else {
            fields::push(
                &mut head,
                &mut recorded,
                name.as_str().as_bytes(),
                value.as_bytes(),
            );
        }
    }
    if let Some(cookies) = cookies {
        fields::push(&mut head, &mut recorded, b"cookie", &cookies);
    }

    if handler.streams(path) {
        let req = Request {
            method: parts.method.clone(),
            target,
            path,
            fields: Fields::new(&head, &recorded),
            body: Ok(&[]),
            peer,
            secure,
            start,
        };
        return handler.stream(req, &parts, body).await;
    }
    let body = match read_body(body, limits, start).await {
        Ok(body) => body,
        Err(TimedOut) => {
            let status = StatusCode::REQUEST_TIMEOUT;
            let body =
                handler.malformed(status, "request body not sent in time", peer, &mut headers);
            return response(status, &headers, body, false);
        }
    };
    let req = Request {
        method: parts.method,
        target,
        path,
        fields: Fields::new(&head, &recorded),
        body: body.as_deref().map_err(|e| *e),
        peer,
        secure,
        start,
    };
    let (status, answer, done) = handler.handle(&req, &mut headers).await;
    let response = response(status, &headers, answer, req.method == Method::HEAD);
    handler.done(&req, status, done);
    response
}

/// The body did not arrive within its time.
struct TimedOut;

/// A stream's body, whole, under the same limits as an HTTP/1.1 body.
async fn read_body(
    mut body: Incoming,
    limits: &Limits,
    start: Instant,
) -> Result<Result<Bytes, BodyError>, TimedOut> {
    if body.size_hint().lower() > limits.max_body {
        return Ok(Err(BodyError::TooLarge));
    }
    let mut clock = BodyClock::new(start, limits);
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(clock.deadline(), body.frame()).await {
            Err(_) => return Err(TimedOut),
            Ok(None) => break,
            // The client reset the stream: nobody is left to answer.
            Ok(Some(Err(_))) => return Err(TimedOut),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not forwarded
        };
        clock.received += data.len() as u64;
        if clock.received > limits.max_body {
            return Ok(Err(BodyError::TooLarge));
        }
        // One frame, the usual case for an API request: kept as it is, not copied.
        match first.take() {
            None if more.is_empty() => first = Some(data),
            Some(earlier) => {
                more.extend_from_slice(&earlier);
                more.extend_from_slice(&data);
            }
            None => more.extend_from_slice(&data),
        }
    }
    Ok(Ok(first.unwrap_or_else(|| more.freeze())))
}

/// Fields of HTTP/1.1 connections, which HTTP/2 forbids (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8]) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

fn response(
    status: StatusCode,
    headers: &HeaderBuf,
    body: Bytes,
    head_request: bool,
) -> http::Response<Body> {
    let mut response = http::Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers.iter() {
        if connection_specific(name) {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    if !headers.has_date() {
        let mut now = Vec::with_capacity(32);
        date::now(&mut now);
        if let Ok(value) = HeaderValue::from_bytes(&now) {
            map.insert(header::DATE, value);
        }
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless {
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !head_request {
            *response.body_mut() = Either::Left(Full::new(body));
        }
    }
    response
}

/// Whether a connection has streams open, and since when it has had none.
struct Activity {
    opened: Instant,
    open: AtomicUsize,
    /// Milliseconds after `opened` when the last stream ended; `u64::MAX` if none has begun.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            open: AtomicUsize::new(0),
            last: AtomicU64::new(u64::MAX),
        }
    }

    fn begin(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Since when the connection has been idle (None: a stream is open), and how long it may
    /// be: the header timeout before its first request, the idle timeout after.
    fn idle(&self, limits: &Limits) -> (Option<Instant>, Duration) {
        if self.open.load(Ordering::Acquire) > 0 {
            return (None, limits.idle_timeout);
        }
        match self.last.load(Ordering::Acquire) {
            u64::MAX => (Some(self.opened), limits.header_timeout),
            ms => (
                Some(self.opened + Duration::from_millis(ms)),
                limits.idle_timeout,
            ),
        }
    }
}

/// An open stream; its end is recorded when dropped.
struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let ms = self.0.opened.elapsed().as_millis() as u64;
        self.0.last.store(ms, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}
