//! W3C Trace Context (`traceparent`), accepted or started per request.
//!
//! Only the part every hop needs is kept: trace id, span id and the sampled flag, as fixed-size
//! arrays so that a context is `Copy` and costs no allocation on the hot path.

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, with this hop as its root span.
    pub fn new_root() -> Self {
        let mut trace_id: [u8; 16] = random_id();
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        Self {
            trace_id,
            span_id: new_span_id(),
            sampled: crate::span::sampled(&trace_id),
        }
    }

    /// The same trace, a new span: what a hop uses for its own work and sends downstream.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            sampled: self.sampled,
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`. Invalid or all-zero ids give `None`, and the
    /// caller starts a new trace, as the spec asks.
    pub fn parse(header: &str) -> Option<Self> {
        let b = header.trim().as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex_byte(&b[0..2])?;
        // Version ff is forbidden; version 00 must be exactly 55 bytes.
        if version == 0xff || (version == 0 && b.len() != 55) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// Parses a bare 32-hex trace id (as carried in a passport), with a fresh span.
    pub fn from_trace_id(hex: &str) -> Option<Self> {
        let b = hex.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[2 * i..2 * i + 2])?;
        }
        (trace_id != [0; 16]).then(|| Self {
            trace_id,
            span_id: new_span_id(),
            sampled: crate::span::sampled(&trace_id),
        })
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    /// A span for this hop's work: its log lines carry the trace and span ids
    /// (`tessera::log`). The ids are recorded as integers, so opening it allocates no strings.
    pub fn span(&self, name: &'static str) -> tracing::Span {
        tracing::info_span!(
            "hop",
            hop = name,
            trace_id = u128::from_be_bytes(self.trace_id),
            span_id = u64::from_be_bytes(self.span_id)
        )
    }

    /// [`Self::header`] as a header value.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut out = [0u8; 55];
        self.write_header(&mut out);
        http::HeaderValue::from_bytes(&out).expect("hex and dashes")
    }

    /// [`Self::header`] written into `out`, without allocating.
    pub fn write_header(&self, out: &mut [u8; 55]) {
        out[..3].copy_from_slice(b"00-");
        hex_digits(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_digits(&self.span_id, &mut out[36..52]);
        out[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
    }

    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.trace_id);
        s
    }

    pub fn span_id_hex(&self) -> String {
        let mut s = String::with_capacity(16);
        push_hex(&mut s, &self.span_id);
        s
    }
}

/// Writes `bytes` as lowercase hex into `out` (twice their length) and returns it as a `&str`.
pub fn hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    let out = &mut out[..bytes.len() * 2];
    hex_digits(bytes, out);
    std::str::from_utf8(out).expect("hex digits are ASCII")
}

/// [`hex`]'s digits alone, where bytes serve (a header's value): not checked again as text.
fn hex_digits(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

thread_local! {
    /// Where ids are drawn from: a fast generator (xoshiro256++) seeded from the system's per
    /// thread, as OpenTelemetry's SDKs draw theirs. An id must be unique and random (W3C), not
    /// secret: nothing is granted by knowing one. The cryptographic generator cost a gateway a
    /// fiftieth of its own work per request.
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_entropy());
}

/// `N` random bytes for an id.
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0; N];
    IDS.with_borrow_mut(|ids| rand::RngCore::fill_bytes(ids, &mut id));
    id
}

fn new_span_id() -> [u8; 8] {
    let mut id: [u8; 8] = random_id();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None, // the spec allows lowercase only
        }
    }
    Some(nibble(pair[0])? << 4 | nibble(pair[1])?)
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(h).unwrap();
        assert_eq!(t.header(), h);
        assert_eq!(t.header_value(), h);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
        assert!(t.sampled);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn child_keeps_the_trace() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(root.trace_id, child.trace_id);
        assert_ne!(root.span_id, child.span_id);
        assert_eq!(TraceContext::parse(&child.header()), Some(child));
        assert_eq!(
            TraceContext::from_trace_id(&root.trace_id_hex())
                .unwrap()
                .trace_id,
            root.trace_id
        );
    }
}
