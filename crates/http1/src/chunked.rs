//! The one chunked transfer-coding decoder (RFC 9112 §7.1), for request bodies (the
//! gateway's server) and response bodies (the client) alike.
//!
//! It is sans-I/O: it decodes whatever a read buffer holds and says whether the body is
//! complete, so each side keeps its own reading (the server reads into the buffer its request
//! borrows from, the client into its connection's) and neither carries a second copy of the
//! framing rules. It is a state machine that takes chunk data as it arrives, even half a
//! chunk: what it has decoded a caller may drop at once, so the raw body is never kept, only
//! an unfinished size or trailer line (bounded) and the decoded body (bounded by the limit).
//!
//! Everything in a chunked body is attacker-controlled. Sizes: every sum is checked, and a
//! body is refused as soon as its decoded size would pass the limit, before the chunk is
//! read. Extensions carry nothing the platform uses, yet a 1-byte chunk may come with a
//! kilobyte of them: each size line is bounded, and so are the extension bytes of a whole
//! body (as hyper does), so that a body cannot cost a thousand times its size to read. A bare
//! line feed is not a line end anywhere (peers that read it as one would frame the body
//! differently).

/// The longest chunk-size line read (size, extensions, CRLF).
const MAX_SIZE_LINE: usize = 1024;
/// The most trailer bytes read.
const MAX_TRAILERS: usize = 64 * 1024;
/// The most chunk-extension bytes one body may carry, all its size lines together.
const MAX_EXTENSIONS: usize = 16 * 1024;

/// Why a chunked body cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The decoded body would pass the limit.
    TooLarge,
    /// Not chunked framing, or framing past the bounds on lines and extensions.
    Malformed,
}

/// Decodes a chunked body from a buffer, from a position on.
#[derive(Debug)]
pub struct Decoder {
    /// Where the undecoded rest starts in the buffer.
    pos: usize,
    state: State,
    /// Extension bytes (everything after the size digits) of the size lines so far.
    extensions: usize,
    /// Trailer bytes so far.
    trailers: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much of it still to come.
    Data(u64),
    /// At the CRLF that ends a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, then an empty line.
    Trailers,
    Done,
}

impl Decoder {
    /// A decoder for a body that starts at `start` in the buffer.
    pub fn new(start: usize) -> Self {
        Self {
            pos: start,
            state: State::Size,
            extensions: 0,
            trailers: 0,
        }
    }

    /// Where the undecoded rest starts; after [`Decoder::decode`] returned `Ok(true)`, where
    /// the body (trailers included) ends.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Says that the caller removed `n` bytes of its buffer that came before the position
    /// (at most [`Decoder::position`] of them, all decoded): its front, or the decoded part
    /// of the body just before the position.
    pub fn consumed(&mut self, n: usize) {
        debug_assert!(n <= self.pos);
        self.pos -= n;
    }

    /// Decodes what `buf` holds from the position on, appending the body's data to `out`,
    /// which may hold at most `max` bytes; `Ok(true)` once the last chunk and the trailers
    /// (read and dropped) are in, `Ok(false)` when more of the body must be read.
    pub fn decode(&mut self, buf: &[u8], out: &mut Vec<u8>, max: u64) -> Result<bool, ChunkError> {
        loop {
            let rest = &buf[self.pos..];
            match self.state {
                State::Size => {
                    let Some((line, size)) = self.size_line(rest)? else {
                        return Ok(false);
                    };
                    self.pos += line;
                    if size == 0 {
                        self.state = State::Trailers;
                        continue;
                    }
                    // No buffer holds more than `isize::MAX` bytes, whatever the caller allows.
                    let room = max.min(isize::MAX as u64).saturating_sub(out.len() as u64);
                    if size > room {
                        return Err(ChunkError::TooLarge);
                    }
                    self.state = State::Data(size);
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(false);
                    }
                    // `left` fits the limit, which bounds `out`; `take` is at most `rest.len()`.
                    let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    out.extend_from_slice(&rest[..take]);
                    self.pos += take;
                    self.state = match left - take as u64 {
                        0 => State::DataEnd,
                        left => State::Data(left),
                    };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        self.pos += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(false),
                    _ => return Err(ChunkError::Malformed),
                },
                State::Trailers => {
                    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                        return match self.trailers.checked_add(rest.len()) {
                            Some(n) if n < MAX_TRAILERS => Ok(false),
                            _ => Err(ChunkError::Malformed),
                        };
                    };
                    if end == 0 || rest[end - 1] != b'\r' {
                        return Err(ChunkError::Malformed); // a bare LF
                    }
                    self.pos += end + 1;
                    if end == 1 {
                        self.state = State::Done;
                        return Ok(true);
                    }
                    self.trailers += end + 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(ChunkError::Malformed);
                    }
                }
                State::Done => return Ok(true),
            }
        }
    }

    /// A whole chunk-size line at the start of `rest`: its length and the size; `None` while
    /// it is incomplete. Counts its extensions against the body's bound.
    fn size_line(&mut self, rest: &[u8]) -> Result<Option<(usize, u64)>, ChunkError> {
        let (line, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) if rest.len() < MAX_SIZE_LINE => return Ok(None),
            _ => return Err(ChunkError::Malformed),
        };
        if line > MAX_SIZE_LINE {
            return Err(ChunkError::Malformed);
        }
        let digits = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let extension = &rest[digits..line - 2];
        if extension.contains(&b'\n') {
            return Err(ChunkError::Malformed); // `httparse` takes any byte in an extension
        }
        self.extensions += extension.len();
        if self.extensions > MAX_EXTENSIONS {
            return Err(ChunkError::Malformed);
        }
        Ok(Some((line, size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `raw` fed in pieces of `step` bytes, as a socket might deliver it.
    fn decode_in_steps(raw: &[u8], step: usize, max: u64) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = Decoder::new(0);
        let mut out = Vec::new();
        let mut end = 0;
        loop {
            end = (end + step).min(raw.len());
            if decoder.decode(&raw[..end], &mut out, max)? {
                return Ok((out, decoder.position()));
            }
            if end == raw.len() {
                return Err(ChunkError::Malformed); // the test ran out of input
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers_in_any_pieces() {
        let raw = b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 5, 64] {
            let (body, end) = decode_in_steps(raw, step, 1024).unwrap();
            assert_eq!(
                (body.as_slice(), &raw[end..]),
                (&b"abcdefg"[..], &b"NEXT"[..])
            );
        }
    }

    #[test]
    fn a_caller_may_drop_what_was_decoded() {
        let raw = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
        let mut buf = raw[..10].to_vec();
        let mut decoder = Decoder::new(0);
        let mut out = Vec::new();
        assert_eq!(decoder.decode(&buf, &mut out, 64), Ok(false));
        let done = decoder.position();
        buf.drain(..done);
        decoder.consumed(done);
        buf.extend_from_slice(&raw[10..]);
        assert_eq!(decoder.decode(&buf, &mut out, 64), Ok(true));
        assert_eq!(
            (out.as_slice(), decoder.position()),
            (&b"abcdefg"[..], buf.len())
        );
    }

    #[test]
    fn refuses_bodies_over_the_limit_before_reading_them() {
        let mut decoder = Decoder::new(0);
        let mut out = Vec::new();
        assert_eq!(
            decoder.decode(b"800\r\n", &mut out, 1024),
            Err(ChunkError::TooLarge)
        );
        // Within the limit chunk by chunk, over it in all.
        let raw = b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
        assert_eq!(decode_in_steps(raw, 64, 5), Err(ChunkError::TooLarge));
    }

    #[test]
    fn sizes_near_the_top_of_u64_do_not_overflow() {
        for raw in [
            &b"ffffffffffffffff\r\n"[..],
            b"3\r\nabc\r\nfffffffffffffffe\r\n",
            b"3\r\nabc\r\nfffffffffffffffd\r\nab",
        ] {
            let mut out = Vec::new();
            assert_eq!(
                Decoder::new(0).decode(raw, &mut out, u64::MAX),
                Err(ChunkError::TooLarge)
            );
            let mut out = Vec::new();
            assert_eq!(
                Decoder::new(0).decode(raw, &mut out, 1 << 20),
                Err(ChunkError::TooLarge)
            );
        }
    }

    #[test]
    fn chunk_data_is_taken_as_it_arrives() {
        // Half of a chunk's data is in: it is decoded, and the position moves past it, so a
        // caller keeps none of the raw body (only an unfinished size line, at most).
        let mut decoder = Decoder::new(0);
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"a\r\nhello", &mut out, 64), Ok(false));
        assert_eq!((out.as_slice(), decoder.position()), (&b"hello"[..], 8));
        let mut buf = b"a\r\nhello".to_vec();
        buf.drain(..8);
        decoder.consumed(8);
        buf.extend_from_slice(b"world\r\n0\r\n\r\n");
        assert_eq!(decoder.decode(&buf, &mut out, 64), Ok(true));
        assert_eq!(
            (out.as_slice(), decoder.position()),
            (&b"helloworld"[..], buf.len())
        );
    }

    #[test]
    fn extensions_are_bounded_per_line_and_per_body() {
        // A whole size line longer than the limit, even when it arrived at once.
        let line = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE));
        let mut out = Vec::new();
        assert_eq!(
            Decoder::new(0).decode(line.as_bytes(), &mut out, 1024),
            Err(ChunkError::Malformed)
        );
        // Lines within the limit, but more extension bytes in all than a body may carry:
        // 1-byte chunks with long extensions are refused long before their raw size counts.
        let chunk = format!("1;{}\r\nx\r\n", "e".repeat(1000));
        let mut decoder = Decoder::new(0);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut refused = None;
        for i in 0..1000 {
            buf.extend_from_slice(chunk.as_bytes());
            match decoder.decode(&buf, &mut out, 1 << 20) {
                Ok(false) => {}
                other => {
                    refused = Some((i, other));
                    break;
                }
            }
        }
        let (at, got) = refused.expect("refused");
        assert_eq!(got, Err(ChunkError::Malformed));
        assert!(at * 1000 <= 2 * MAX_EXTENSIONS, "after {at} chunks");
        // A few short extensions are fine.
        let mut out = Vec::new();
        let raw = b"1;a=b\r\nx\r\n1 ; c\r\ny\r\n0;last\r\n\r\n";
        assert_eq!(Decoder::new(0).decode(raw, &mut out, 64), Ok(true));
        assert_eq!(out, b"xy");
    }

    #[test]
    fn a_bare_line_feed_is_not_a_line_end() {
        for raw in [
            &b"1;ext\nx\r\nx\r\n0\r\n\r\n"[..],
            b"1\r\nx\r\n0\r\nbad\ntrailer: 1\r\n\r\n",
            b"1\r\nx\r\n0\r\n\n\r\n",
        ] {
            let mut out = Vec::new();
            assert_eq!(
                Decoder::new(0).decode(raw, &mut out, 64),
                Err(ChunkError::Malformed),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn refuses_malformed_framing() {
        for raw in [&b"zz\r\n"[..], b"3\r\nabcX\r\n", b"3\r\nabc\r\n0\r\n"] {
            let mut out = Vec::new();
            let got = Decoder::new(0).decode(raw, &mut out, 1024);
            assert!(
                matches!(got, Err(ChunkError::Malformed) | Ok(false)),
                "{raw:?}: {got:?}"
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            Decoder::new(0).decode(b"zz\r\n", &mut out, 1024),
            Err(ChunkError::Malformed)
        );
        let long_line = [b'1'; MAX_SIZE_LINE + 1];
        assert_eq!(
            Decoder::new(0).decode(&long_line, &mut out, 1024),
            Err(ChunkError::Malformed)
        );
    }
}
