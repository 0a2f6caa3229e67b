//! The framing facts of a message head, read once for requests and responses alike.
//!
//! `httparse` finds the fields; what they mean for the body's end and the connection's life
//! (`Content-Length`, `Transfer-Encoding`, `Connection`, `Expect`) is read here, in one
//! place, so that the server and the client cannot come to read the same head differently.
//! The rules that differ by direction (RFC 9112 §6.3: a request with both framings is
//! refused, a response's chunked coding wins) are applied by each side on these facts.

use crate::fields;

/// What a head says about its body and its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    /// The `Content-Length`, when given (every copy agreeing).
    pub length: Option<u64>,
    /// Whether a `Transfer-Encoding` field was sent at all.
    pub transfer_encoding: bool,
    /// Whether the last transfer coding is `chunked` (the one that frames the body).
    pub chunked: bool,
    /// `Connection: close` was sent.
    pub close: bool,
    /// `Connection: keep-alive` was sent (what HTTP/1.0 asks with).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// An `Expect` other than `100-continue` was sent.
    pub expect_other: bool,
}

/// A head whose framing cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// A `Content-Length` that is not a decimal number.
    MalformedLength,
    /// Two `Content-Length` values that differ (a request-smuggling risk).
    ConflictingLength,
}

/// Reads the framing fields of a parsed head.
pub fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, FramingError> {
    let mut f = Framing::default();
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(FramingError::MalformedLength)?;
            if f.length.is_some_and(|l| l != n) {
                return Err(FramingError::ConflictingLength);
            }
            f.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.transfer_encoding = true;
            f.chunked = fields::last_coding_is_chunked(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            f.close |= fields::has_token(h.value, "close");
            f.keep_alive |= fields::has_token(h.value, "keep-alive");
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                f.expect_continue = true;
            } else {
                f.expect_other = true;
            }
        }
    }
    Ok(f)
}

/// A `Content-Length` value: decimal digits only (no sign, no spaces inside).
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing_of(head: &[u8]) -> Result<Framing, FramingError> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut slots);
        assert!(req.parse(head).unwrap().is_complete());
        framing(req.headers)
    }

    #[test]
    fn reads_the_framing_fields() {
        let f = framing_of(
            b"POST / HTTP/1.1\r\nContent-Length: 12\r\ncontent-length: 12\r\nConnection: Keep-Alive\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            f,
            Framing {
                length: Some(12),
                keep_alive: true,
                expect_continue: true,
                ..Framing::default()
            }
        );
        let f = framing_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\nExpect: other\r\n\r\n").unwrap();
        assert!(f.transfer_encoding && f.chunked && f.close && f.expect_other);
        let f = framing_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap();
        assert!(f.transfer_encoding && !f.chunked);
    }

    #[test]
    fn refuses_lengths_that_cannot_be_trusted() {
        for (head, err) in [
            (
                &b"GET / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n"[..],
                FramingError::ConflictingLength,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
                FramingError::MalformedLength,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 1 2\r\n\r\n",
                FramingError::MalformedLength,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: +5\r\n\r\n",
                FramingError::MalformedLength,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
                FramingError::MalformedLength,
            ),
        ] {
            assert_eq!(
                framing_of(head),
                Err(err),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
