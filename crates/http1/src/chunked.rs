//! The one chunked transfer-coding decoder (RFC 9112 §7.1), for request bodies (the
//! gateway's server) and response bodies (the client) alike.
//!
//! It is sans-I/O: it decodes whatever a read buffer holds and says whether the body is
//! complete, so each side keeps its own reading (the server reads into the buffer its request
//! borrows from, the client into its connection's) and neither carries a second copy of the
//! framing rules. Sizes are attacker-controlled: every sum is checked, and a body is refused
//! as soon as its decoded size would pass the limit, before the chunk is read.

/// The longest chunk-size line waited for (size, extensions, CRLF).
const MAX_SIZE_LINE: usize = 1024;
/// The most trailer bytes waited for.
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a chunked body cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// The decoded body would pass the limit.
    TooLarge,
    /// Not chunked framing.
    Malformed,
}

/// Decodes a chunked body from a buffer, from a position on.
#[derive(Debug)]
pub struct Decoder {
    /// Where the next chunk starts in the buffer; only ever on a chunk boundary.
    pos: usize,
}

impl Decoder {
    /// A decoder for a body that starts at `start` in the buffer.
    pub fn new(start: usize) -> Self {
        Self { pos: start }
    }

    /// Where the undecoded rest starts; after [`Decoder::decode`] returned `Ok(true)`, where
    /// the body (trailers included) ends.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Says that the caller dropped the first `n` bytes of its buffer (at most
    /// [`Decoder::position`], all of them decoded).
    pub fn consumed(&mut self, n: usize) {
        debug_assert!(n <= self.pos);
        self.pos -= n;
    }

    /// Decodes the whole chunks `buf` holds from the position on, appending their data to
    /// `out`, which may hold at most `max` bytes; `Ok(true)` once the last chunk and the
    /// trailers (read and dropped) are in, `Ok(false)` when more of the body must be read.
    pub fn decode(&mut self, buf: &[u8], out: &mut Vec<u8>, max: u64) -> Result<bool, ChunkError> {
        loop {
            let rest = &buf[self.pos..];
            let (line, size) = match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete(found)) => found,
                Ok(httparse::Status::Partial) if rest.len() < MAX_SIZE_LINE => return Ok(false),
                _ => return Err(ChunkError::Malformed),
            };
            if size == 0 {
                // Trailer lines, then an empty line.
                let mut at = line;
                loop {
                    match rest[at..].windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            self.pos += at + 2;
                            return Ok(true);
                        }
                        Some(i) => at += i + 2,
                        None if rest.len() - at < MAX_TRAILERS => return Ok(false),
                        None => return Err(ChunkError::Malformed),
                    }
                }
            }
            let room = max.saturating_sub(out.len() as u64);
            if size > room {
                return Err(ChunkError::TooLarge);
            }
            // `size` is at most `max`, but `max` is the caller's: check the sum anyway.
            let end = usize::try_from(size)
                .ok()
                .and_then(|size| line.checked_add(size))
                .and_then(|end| end.checked_add(2))
                .ok_or(ChunkError::TooLarge)?;
            if rest.len() < end {
                return Ok(false);
            }
            if &rest[end - 2..end] != b"\r\n" {
                return Err(ChunkError::Malformed);
            }
            out.extend_from_slice(&rest[line..end - 2]);
            self.pos += end;
        }
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
