//! A span as OTLP's protobuf (`opentelemetry/proto/trace/v1/trace.proto`), written when the
//! span ends.
//!
//! Each ended span is written here, by the thread that ended it, as one `spans` entry (field 2)
//! of a `ScopeSpans` message, and its bytes appended to the process's sink: the exporter only
//! wraps a batch of them in the request's envelope (`tessera-telemetry`). Written while the
//! span is hot in the cache and its record freed at once by the thread that made it, rather
//! than thousands of records kept for a batch and encoded later, cold, by another task (that
//! was about a third of what tracing cost a gateway). By hand, field by field: OTLP's prost
//! structs cost a dozen allocations per span. `tessera-telemetry`'s tests decode what this
//! writes with those structs and compare it with their own encoding.

use super::{Kind, SpanData, Value};

/// Where bytes are written: the sink's scratch buffer, or a span's inline attributes.
pub(crate) trait Out {
    fn put(&mut self, byte: u8);
    fn put_slice(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, byte: u8) {
        self.push(byte)
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes)
    }
}

/// A slice of exactly the length to be written (an attribute's room in its span).
pub(crate) struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Cursor { buf, at: 0 }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.at == self.buf.len()
    }
}

impl Out for Cursor<'_> {
    fn put(&mut self, byte: u8) {
        self.buf[self.at] = byte;
        self.at += 1;
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

/// OTLP's `Status.code` for an error.
const STATUS_ERROR: u64 = 2;

/// The length of `s` as a `ScopeSpans.spans` entry.
pub fn entry_len(s: &SpanData) -> usize {
    len_field(span_len(s))
}

/// Appends `s` to `out` as a `ScopeSpans.spans` entry (tag, length, `Span` message).
pub fn write_entry(s: &SpanData, out: &mut Vec<u8>) {
    let len = span_len(s);
    out.reserve(len_field(len));
    key(2, LEN, out);
    varint(len as u64, out);
    let start = out.len();
    write_span(s, out);
    debug_assert_eq!(out.len() - start, len, "span_len agrees with write_span");
}

/// The `ScopeSpans.spans` entries in `bytes`, each as `(start, end)`: how a batch is cut in
/// parts without decoding it.
pub fn entries(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= bytes.len() {
            return None;
        }
        let start = at;
        // One key byte (field 2, length-delimited), then the length.
        let (len, used) = read_varint(&bytes[at + 1..])?;
        at += 1 + used + len as usize;
        (at <= bytes.len()).then_some(start..at)
    })
}

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A field's key, for fields below 16 (one byte).
fn key(field: u8, wire: u8, out: &mut impl Out) {
    debug_assert!(field < 16);
    out.put((field << 3) | wire);
}

pub(crate) fn varint(mut v: u64, out: &mut impl Out) {
    while v >= 0x80 {
        out.put((v as u8) | 0x80);
        v >>= 7;
    }
    out.put(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A length-delimited field's size: key, length, body.
fn len_field(body: usize) -> usize {
    1 + varint_len(body as u64) + body
}

fn bytes_field(field: u8, body: &[u8], out: &mut impl Out) {
    key(field, LEN, out);
    varint(body.len() as u64, out);
    out.put_slice(body);
}

/// What an attribute's value is on the wire: `AnyValue { string_value = 1, bool_value = 2,
/// int_value = 3 }`.
fn any_value<'v>(value: &'v Value<'_>) -> (u8, Option<&'v str>, u64) {
    match value {
        Value::Str(s) => (1, Some(s), 0),
        Value::Shared(s) => (1, Some(s), 0),
        Value::Text(s) => (1, Some(s.as_str()), 0),
        Value::Bool(b) => (2, None, u64::from(*b)),
        Value::Int(n) => (3, None, *n as u64),
    }
}

fn any_len(value: &Value<'_>) -> usize {
    match any_value(value) {
        (_, Some(t), _) => len_field(t.len()),
        (_, None, n) => 1 + varint_len(n),
    }
}

/// Appends a `Span.attributes` entry (field 9: tag, length, `KeyValue { key = 1, value = 2 }`).
pub(crate) fn write_attribute(k: &str, v: &Value<'_>, out: &mut impl Out) {
    key(9, LEN, out);
    varint(key_value_len(k, v) as u64, out);
    bytes_field(1, k.as_bytes(), out);
    key(2, LEN, out);
    varint(any_len(v) as u64, out);
    match any_value(v) {
        (field, Some(t), _) => bytes_field(field, t.as_bytes(), out),
        (field, None, n) => {
            key(field, VARINT, out);
            varint(n, out);
        }
    }
}

/// The length of a `Span.attributes` entry.
pub(crate) fn attribute_len(k: &str, v: &Value<'_>) -> usize {
    len_field(key_value_len(k, v))
}

/// `KeyValue { key = 1, value = 2 }`'s body length.
fn key_value_len(k: &str, v: &Value<'_>) -> usize {
    len_field(k.len()) + len_field(any_len(v))
}

/// `Status { message = 2, code = 3 }`'s body length: ERROR with its message, else UNSET (empty).
fn status_len(s: &SpanData) -> usize {
    match &s.error {
        Some(why) => len_field(why.len()) + 2,
        None => 0,
    }
}

/// The `Span` message's length.
fn span_len(s: &SpanData) -> usize {
    let mut n = len_field(16) + len_field(8);
    if s.parent != [0; 8] {
        n += len_field(8);
    }
    n += len_field(s.name.as_bytes().len());
    n += 2 + 9 + 9; // kind, start, end
    n += s.attributes.as_bytes().len();
    n += len_field(status_len(s));
    n + 2 + 4 // flags: field 16's key takes two bytes
}

/// One `Span` message's fields.
fn write_span(s: &SpanData, out: &mut Vec<u8>) {
    bytes_field(1, &s.trace_id, out);
    bytes_field(2, &s.span_id, out);
    if s.parent != [0; 8] {
        bytes_field(4, &s.parent, out);
    }
    bytes_field(5, s.name.as_bytes(), out);
    key(6, VARINT, out);
    out.push(s.kind as u8);
    key(7, FIXED64, out);
    out.extend_from_slice(&s.start_ns.to_le_bytes());
    key(8, FIXED64, out);
    out.extend_from_slice(&s.end_ns.to_le_bytes());
    out.extend_from_slice(s.attributes.as_bytes());
    key(15, LEN, out);
    varint(status_len(s) as u64, out);
    if let Some(why) = &s.error {
        bytes_field(2, why.as_bytes(), out);
        key(3, VARINT, out);
        out.push(STATUS_ERROR as u8);
    }
    varint((16 << 3) | u64::from(FIXED32), out);
    out.extend_from_slice(&flags_of(s).to_le_bytes());
}

/// A span's OTLP flags: W3C's sampled bit (only sampled spans are recorded), and whether its
/// parent is remote (known, bit 8; remote, bit 9): a server's or consumer's parent is in
/// another process.
fn flags_of(s: &SpanData) -> u32 {
    match s.kind {
        Kind::Server | Kind::Consumer if s.parent != [0; 8] => 0x301,
        _ => 0x101,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_as_long_as_they_say() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(v, &mut out);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x80]), None, "unterminated");
    }
}
