//! Reading a request head: the request line, the framing of its body and what the
//! connection does after it, checked before any of the body is read, with the rules that
//! keep the gateway and the services behind it from reading one request two ways (one
//! framing, no transfer coding on HTTP/1.0, one Host).

use http::{Method, StatusCode};

use crate::fields::{self, Field};
use crate::head::{self, FramingError};

/// The most request header fields read; more is 431.
pub(super) const MAX_HEADERS: usize = 100;
/// The longest request head read; longer is 431.
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// A request head's facts, read before its body (no borrow of the buffer kept): what the
/// connection goes on with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The head's length in the buffer; the body starts there.
    pub len: usize,
    pub method: Method,
    /// Where the target, in origin form, is in the buffer: its start and length.
    pub target: (usize, usize),
    /// The length of the target's path (up to any `?`).
    pub path_len: usize,
    pub framing: BodyFraming,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// An HTTP/1.0 client asked for keep-alive (and is told it got it).
    pub keep_alive_10: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// How a request's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// After this many bytes (0 without a body).
    Length(u64),
    /// Chunked.
    Chunked,
}

/// A request the server answers itself, with this status and message, and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject(pub StatusCode, pub &'static str);

/// Parses the request head at the start of `buf`, recording its fields in `fields`;
/// `Ok(None)` while it is incomplete. What a connection does with every head it reads (public
/// for the fuzz targets).
pub fn parse_head(buf: &[u8], fields: &mut Vec<Field>) -> Result<Option<RequestHead>, Reject> {
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
    if raw_target.contains('#') {
        // A fragment is the client's own (RFC 9112 §3.2 has none in a target); services'
        // parsers drop it, so a proxy that routed on it would route another path than theirs.
        return Err(bad("a request target has no fragment"));
    }
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
    if framing.transfer_encoding && !http11 {
        // HTTP/1.0 has no transfer codings: a peer that reads the message as 1.0 frames it
        // differently, so its framing is faulty (RFC 9112 §6.1).
        return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    // Exactly one Host on HTTP/1.1, at most one on 1.0 (RFC 9112 §3.2): two are two
    // authorities that a proxy and a service may each pick one of.
    let hosts = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .take(2)
        .count();
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(bad("an HTTP/1.1 request needs exactly one Host field"));
    }
    fields::record(buf, parsed.headers, fields);
    Ok(Some(RequestHead {
        len,
        method,
        target: (target_start, target.len()),
        path_len,
        framing: if framing.chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::Length(framing.length.unwrap_or(0))
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
