//! Writing a response: the status line, the handler's fields, and the fields that are the
//! server's (`content-length`, `date`, `connection`), from one reused buffer in one write.

use bytes::Bytes;
use http::StatusCode;
use tokio::io::AsyncWrite;

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

    pub fn clear(&mut self) {
        self.buf.clear();
        self.has_date = false;
    }

    /// Whether a `date` field was pushed (else the server adds one).
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// The fields pushed, in order: for a server that writes them otherwise (HTTP/2).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.buf.split(|b| *b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|b| *b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
        })
    }

    /// The fields as written, for tests.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Writes a response into `stream` through the buffer `out`; `connection` is the
/// `Connection` field's value, if one is sent. (A function of the connection's parts, not
/// of the connection: the request it answers still borrows the read buffer.)
pub(super) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
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

/// The `Date` field's value, formatted once a second, from the platform's clock
/// (`tessera_trace::unix_now`: the CPU's counter, where the process calibrated it).
pub mod date {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn now(out: &mut Vec<u8>) {
        let secs = tessera_trace::unix_now();
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs || text.is_empty() {
                *text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
                *at = secs;
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}
