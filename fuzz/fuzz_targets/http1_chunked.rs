//! The one chunked decoder (`tessera_http1::chunked::Decoder`), as the server and the client
//! drive it: arbitrary bytes, and valid encodings of the payload, fed in arbitrary pieces.
//!
//! Asserts: no panic; the decoded body is never longer than the bytes it came from nor than
//! the limit; the verdict (the body and where it ends, or the error) is the same whether the
//! bytes come at once or in pieces, and whether the caller keeps what was decoded or drops it;
//! a finished decoder stays finished; a valid encoding decodes to its payload, within a limit
//! of exactly its size and not one byte under.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{Plan, limit};
use tessera_http1::chunked::{ChunkError, Decoder};

/// Where the body ended in the input and what it decoded to; `None`: it did not end.
type Verdict = Result<Option<(Vec<u8>, usize)>, ChunkError>;

fuzz_target!(|data: &[u8]| {
    let plan = Plan::new(data);
    let max = limit(plan.flags);
    // What comes before the body in the buffer (the server's head).
    let before = usize::from(plan.flags >> 3);

    let whole = decode(plan.payload, &[usize::MAX], max, before, false);
    if let Ok(Some((body, end))) = &whole {
        assert!(*end <= plan.payload.len());
        assert!(body.len() <= *end, "decoded more than was read");
        assert!(body.len() as u64 <= max, "decoded past the limit");
    }
    for drop in [false, true] {
        let pieces = decode(plan.payload, plan.pieces(), max, before, drop);
        assert_eq!(
            whole,
            pieces,
            "in pieces {:?}, dropping: {drop}",
            plan.pieces()
        );
    }

    // The payload encoded in chunks of the planned sizes decodes to itself.
    let payload = plan.payload;
    let encoded = encode(payload, plan.pieces(), plan.flags);
    let expected = Ok(Some((payload.to_vec(), encoded.len())));
    for drop in [false, true] {
        let exact = payload.len() as u64;
        let got = decode(&encoded, plan.pieces(), exact, before, drop);
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(&encoded));
        if exact > 0 {
            let got = decode(&encoded, plan.pieces(), exact - 1, before, drop);
            assert_eq!(got, Err(ChunkError::TooLarge));
        }
    }
});

/// Decodes `input` arriving in pieces of `sizes` after `before` bytes of something else;
/// `drop`: the caller drops what was decoded from its buffer after every read.
fn decode(input: &[u8], sizes: &[usize], max: u64, before: usize, drop: bool) -> Verdict {
    let mut buf = vec![b'H'; before];
    let mut decoder = Decoder::new(before);
    let mut out = Vec::new();
    let (mut read, mut dropped, mut turn) = (0, 0, 0);
    loop {
        let n = sizes[turn % sizes.len()].min(input.len() - read);
        turn += 1;
        buf.extend_from_slice(&input[read..read + n]);
        read += n;
        let done = decoder.decode(&buf, &mut out, max)?;
        assert!(decoder.position() <= buf.len());
        assert!(out.len() as u64 <= max);
        if done {
            // Finished is final: nothing more is decoded, the end does not move.
            let (end, len) = (decoder.position(), out.len());
            assert_eq!(decoder.decode(&buf, &mut out, max), Ok(true));
            assert_eq!((decoder.position(), out.len()), (end, len));
            return Ok(Some((out, dropped + end - before)));
        }
        if drop {
            let decoded = decoder.position() - before;
            buf.drain(before..before + decoded);
            decoder.consumed(decoded);
            dropped += decoded;
        }
        if read == input.len() {
            return Ok(None);
        }
    }
}

/// `payload` in chunks of the sizes in turn, with a few extensions and a trailer as `flags`
/// choose, as a peer may send it.
fn encode(payload: &[u8], sizes: &[usize], flags: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = payload;
    let mut turn = 0;
    while !rest.is_empty() {
        let n = sizes[turn % sizes.len()].min(rest.len());
        let size = if flags & 1 == 0 {
            format!("{n:x}")
        } else {
            format!("{n:X}")
        };
        out.extend_from_slice(size.as_bytes());
        if flags & 2 != 0 && turn % 8 == 0 {
            out.extend_from_slice(b";ext=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        turn += 1;
    }
    out.extend_from_slice(b"0\r\n");
    if flags & 4 != 0 {
        out.extend_from_slice(b"x-trailer: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
