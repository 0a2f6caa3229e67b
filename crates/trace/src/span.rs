//! Spans: what one hop did, from when to when, under which parent, recorded for export.
//!
//! A [`Span`] is opened where a hop starts its work (the gateway's request, an upstream
//! attempt, a service's request, a service-client call, an event published or handled, a
//! saga step, a database transaction) and ends when it is dropped, so a request cancelled
//! half-way still leaves its span. An ended span is written as OTLP protobuf there and then
//! (`wire.rs`), into this process's [`sink`], from which the exporter (`tessera-telemetry`)
//! takes the bytes in batches; until an exporter is installed, or for a trace that is not
//! sampled, opening a span records nothing and costs a branch.
//!
//! The model is OpenTelemetry's (kind, status, attributes, links) so that the exporter maps
//! it one to one onto OTLP; it lives here, below every crate that opens spans, because this
//! crate needs nothing else.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::TraceContext;

mod wire;

pub use crate::time::calibrate_clock;
pub use wire::{entries, write_entry};

/// OpenTelemetry's span kinds, with their OTLP numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// An attribute's value. Borrowed where the caller has it (a request's path, a route's label):
/// it is written out when set ([`Attributes`]), so nothing of it is kept but its bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Shared(Arc<str>),
    Text(String),
    Int(i64),
    Bool(bool),
}

impl Value<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Shared(s) => Some(s),
            Value::Text(s) => Some(s),
            Value::Int(_) | Value::Bool(_) => None,
        }
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Str(s)
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Self {
        Value::Str(s)
    }
}
impl<'a> From<&'a Arc<str>> for Value<'a> {
    fn from(s: &'a Arc<str>) -> Self {
        Value::Str(s)
    }
}
impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<Arc<str>> for Value<'_> {
    fn from(s: Arc<str>) -> Self {
        Value::Shared(s)
    }
}
impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}
impl From<u16> for Value<'_> {
    fn from(n: u16) -> Self {
        Value::Int(n.into())
    }
}
impl From<u32> for Value<'_> {
    fn from(n: u32) -> Self {
        Value::Int(n.into())
    }
}
impl From<&http::Method> for Value<'static> {
    /// The standard methods as static strings (no copy), others copied.
    fn from(m: &http::Method) -> Self {
        match method_name(m) {
            Some(name) => Value::Str(name),
            None => Value::Text(m.as_str().to_string()),
        }
    }
}

/// A standard method's name, as a static string.
fn method_name(m: &http::Method) -> Option<&'static str> {
    use http::Method;
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => return None,
    })
}
impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A span's name: static, made, or two parts joined by a space (`GET /api/orders`), written
/// out when set: nothing is formatted, allocated or shared (a route's label is not cloned)
/// for a request's name.
#[derive(Clone, Debug, PartialEq)]
pub enum Name {
    Static(&'static str),
    Text(String),
    Joined(Joined),
}

/// Two parts of a name and the space between them, inline.
#[derive(Clone, Debug, PartialEq)]
pub struct Joined {
    len: u8,
    bytes: [u8; JOINED],
}

/// Bytes of a joined name kept inline (a longer one is a [`Name::Text`]).
const JOINED: usize = 95;

impl Name {
    /// `<first> <second>`.
    pub fn joined(first: &str, second: &str) -> Name {
        let len = first.len() + 1 + second.len();
        if len > JOINED {
            return Name::Text(format!("{first} {second}"));
        }
        let mut bytes = [0; JOINED];
        bytes[..first.len()].copy_from_slice(first.as_bytes());
        bytes[first.len()] = b' ';
        bytes[first.len() + 1..len].copy_from_slice(second.as_bytes());
        Name::Joined(Joined {
            len: len as u8,
            bytes,
        })
    }

    /// The name's bytes, as exported.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Static(s) => s.as_bytes(),
            Name::Text(s) => s.as_bytes(),
            Name::Joined(j) => &j.bytes[..usize::from(j.len)],
        }
    }

    /// The name as exported.
    pub fn to_text(&self) -> Cow<'_, str> {
        // Joined from two strings at a space: UTF-8.
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl From<&'static str> for Name {
    fn from(s: &'static str) -> Self {
        Name::Static(s)
    }
}
impl From<String> for Name {
    fn from(s: String) -> Self {
        Name::Text(s)
    }
}
impl From<Cow<'static, str>> for Name {
    fn from(s: Cow<'static, str>) -> Self {
        match s {
            Cow::Borrowed(s) => Name::Static(s),
            Cow::Owned(s) => Name::Text(s),
        }
    }
}

/// A span's attributes, written as OTLP `KeyValue` entries (`Span.attributes`) as they are
/// set: no value is copied into a string of its own or kept as a tree to walk at the end, and
/// a span's handful fits inline (no allocation).
#[derive(Clone, Debug)]
pub struct Attributes {
    /// Bytes used in `inline`, while `more` is empty.
    len: usize,
    inline: [u8; INLINE],
    /// Every entry, once they outgrow `inline`.
    more: Vec<u8>,
}

/// Bytes of attributes a span holds without an allocation: a gateway's spans need 120-200.
const INLINE: usize = 240;

impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes {
            len: 0,
            inline: [0; INLINE],
            more: Vec::new(),
        }
    }
}

impl Attributes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one.
    pub fn push(&mut self, key: &str, value: &Value<'_>) {
        let len = wire::attribute_len(key, value);
        let mut room = wire::Cursor::new(self.room(len));
        wire::write_attribute(key, value, &mut room);
        debug_assert!(room.is_full(), "attribute_len agrees with write_attribute");
    }

    /// Removes every one (keeping the room they took).
    pub fn clear(&mut self) {
        self.len = 0;
        self.more.clear();
    }

    /// `n` more bytes at the end, to be written.
    fn room(&mut self, n: usize) -> &mut [u8] {
        if self.more.is_empty() {
            if self.len + n <= INLINE {
                let at = self.len;
                self.len += n;
                return &mut self.inline[at..at + n];
            }
            self.more.reserve(2 * (self.len + n));
            self.more.extend_from_slice(&self.inline[..self.len]);
        }
        let at = self.more.len();
        self.more.resize(at + n, 0);
        &mut self.more[at..]
    }

    /// The `Span.attributes` entries, back to back.
    pub fn as_bytes(&self) -> &[u8] {
        if self.more.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }
}

impl<'a> FromIterator<(&'a str, Value<'a>)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (&'a str, Value<'a>)>>(iter: I) -> Self {
        let mut attributes = Attributes::new();
        for (key, value) in iter {
            attributes.push(key, &value);
        }
        attributes
    }
}

/// A span's record: what it has gathered while open, written out when it ends.
#[derive(Clone, Debug)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a trace's root.
    pub parent: [u8; 8],
    pub name: Name,
    pub kind: Kind,
    /// Nanoseconds since the Unix epoch.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Set when the work failed: what went wrong, in a few words.
    pub error: Option<Cow<'static, str>>,
    pub attributes: Attributes,
}

impl SpanData {
    /// A record with nothing in it yet, for [`Span::open`] to fill.
    fn blank() -> Box<SpanData> {
        Box::new(SpanData {
            trace_id: [0; 16],
            span_id: [0; 8],
            parent: [0; 8],
            name: Name::Static(""),
            kind: Kind::Internal,
            start_ns: 0,
            end_ns: 0,
            error: None,
            attributes: Attributes::new(),
        })
    }
}

/// A span being recorded; recorded when dropped (or [`Span::end`]).
#[must_use = "a span records the work it is open around"]
pub struct Span {
    /// Boxed, so that a span is one word in the futures that hold it; written out by the
    /// thread that ends it, which keeps the record for its next span (`SPARE`).
    data: Option<Box<SpanData>>,
}

impl Span {
    /// A span that records nothing.
    pub const NONE: Span = Span { data: None };

    /// Opens a span for `ctx` (its ids are this span's), child of `parent` (none for a root).
    /// Records nothing when the trace is not sampled or no exporter is installed.
    pub fn open(
        ctx: &TraceContext,
        parent: Option<[u8; 8]>,
        name: impl Into<Name>,
        kind: Kind,
    ) -> Span {
        if !ctx.sampled || !recording() {
            return Span::NONE;
        }
        // A record an ended span left on this thread, else a blank one, filled in place: a
        // record built aside is copied into its allocation (half a kilobyte).
        let mut data = SPARE
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(SpanData::blank);
        data.trace_id = ctx.trace_id;
        data.span_id = ctx.span_id;
        data.parent = parent.unwrap_or([0; 8]);
        data.name = name.into();
        data.kind = kind;
        data.start_ns = crate::unix_now_ns();
        data.end_ns = 0;
        data.error = None;
        data.attributes.clear();
        Span { data: Some(data) }
    }

    /// A child span of `parent` with ids of its own: the context to send on is the span's.
    pub fn child_of(
        parent: &TraceContext,
        name: impl Into<Name>,
        kind: Kind,
    ) -> (Span, TraceContext) {
        if !parent.sampled || !recording() {
            // Nothing is recorded: the work goes on under its parent's span, and no id is
            // drawn for it.
            return (Span::NONE, *parent);
        }
        let ctx = parent.child();
        (Span::open(&ctx, Some(parent.span_id), name, kind), ctx)
    }

    /// Work done outside any request (a background worker, a timer) as an internal span:
    /// a child of `parent` (the trace the work belongs to: a stored command's, say), or the
    /// root of a trace of its own. The context to work (and call) under is the span's.
    pub fn work(parent: Option<&TraceContext>, name: impl Into<Name>) -> (Span, TraceContext) {
        match parent {
            Some(parent) => Span::child_of(parent, name, Kind::Internal),
            None => {
                let ctx = TraceContext::new_root();
                (Span::open(&ctx, None, name, Kind::Internal), ctx)
            }
        }
    }

    /// Whether anything is recorded: callers skip building costly attributes otherwise.
    pub fn is_recording(&self) -> bool {
        self.data.is_some()
    }

    /// Sets an attribute.
    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        if let Some(data) = &mut self.data {
            data.attributes.push(key, &value.into());
        }
    }

    /// Sets an attribute made only when recording.
    pub fn set_with<'a, V: Into<Value<'a>>>(
        &mut self,
        key: &'static str,
        value: impl FnOnce() -> V,
    ) {
        if let Some(data) = &mut self.data {
            data.attributes.push(key, &value().into());
        }
    }

    /// Marks the span failed, saying why.
    pub fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        if let Some(data) = &mut self.data {
            data.error = Some(why.into());
        }
    }

    /// Takes back a failure set earlier: an attempt is marked failed when it starts (so one
    /// dropped on a timeout says so) and cleared when it completes.
    pub fn clear_failure(&mut self) {
        if let Some(data) = &mut self.data {
            data.error = None;
        }
    }

    /// Renames the span (a route known only once matched).
    pub fn rename(&mut self, name: impl Into<Name>) {
        if let Some(data) = &mut self.data {
            data.name = name.into();
        }
    }

    /// Names the span `<first> <second>` (`GET /api/orders`).
    pub fn name_pair(&mut self, first: &str, second: &str) {
        if let Some(data) = &mut self.data {
            data.name = Name::joined(first, second);
        }
    }

    /// Ends the span now.
    pub fn end(self) {
        drop(self)
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut data) = self.data.take() {
            // A re-anchored clock (or another thread's anchor) a few microseconds behind the
            // start's is clamped to a zero duration.
            data.end_ns = crate::unix_now_ns().max(data.start_ns);
            sink().push(&data);
            // Kept for this thread's next span (not during the thread's teardown, nor one that
            // grew large attributes).
            if data.attributes.more.capacity() <= 4 * INLINE {
                // Nothing of its own kept but the attributes' room.
                data.name = Name::Static("");
                data.error = None;
                let _ = SPARE.try_with(|spare| {
                    let mut spare = spare.borrow_mut();
                    if spare.len() < SPARE_RECORDS {
                        spare.push(data);
                    }
                });
            }
        }
    }
}

thread_local! {
    /// Records of ended spans, for the spans this thread opens next: a span then neither
    /// allocates nor has its record copied into place (most of a request's spans open and end
    /// on the thread serving it).
    // Boxes, not records: a span holds its record by pointer, handed over without a copy.
    #[allow(clippy::vec_box)]
    static SPARE: std::cell::RefCell<Vec<Box<SpanData>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records kept per thread at most.
const SPARE_RECORDS: usize = 64;

/// Ended spans waiting for the exporter, as OTLP bytes (`ScopeSpans.spans` entries, one after
/// the other): bounded, so that an exporter that cannot send never grows the process; what
/// does not fit is counted and dropped.
pub struct Sink {
    encoded: Mutex<Encoded>,
    dropped: AtomicU64,
    /// Bytes at most.
    capacity: usize,
    /// Told once the waiting bytes pass [`FLUSH_AT`]: the exporter takes them then rather than
    /// at its next tick, so that a busy process's batch stays small enough to stay in the
    /// cache between being written and being sent.
    full: tokio::sync::Notify,
}

/// A batch of ended spans, written out.
#[derive(Debug, Default)]
pub struct Encoded {
    /// `ScopeSpans.spans` entries, back to back ([`entries`] finds them again).
    pub bytes: Vec<u8>,
    /// How many.
    pub spans: usize,
    /// Whether the exporter was told this batch is full.
    told: bool,
}

/// The waiting bytes at which the exporter is told to take them (a few thousand spans).
pub const FLUSH_AT: usize = 256 * 1024;

/// Bytes of spans kept waiting at most, by default (a few seconds of a busy gateway: a span
/// is about 250 bytes).
pub const SINK_CAPACITY: usize = 16 * 1024 * 1024;

impl Sink {
    /// Writes `span` at the end of the waiting bytes (under the lock: a span is written in
    /// about the time a copy of it would take, and the exporter takes the lock only to swap
    /// buffers).
    fn push(&self, span: &SpanData) {
        let len = wire::entry_len(span);
        let mut encoded = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        if encoded.bytes.len() + len > self.capacity {
            drop(encoded);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        wire::write_entry(span, &mut encoded.bytes);
        encoded.spans += 1;
        if encoded.bytes.len() >= FLUSH_AT && !encoded.told {
            encoded.told = true;
            self.full.notify_one();
        }
    }

    /// Completes when the waiting bytes passed [`FLUSH_AT`] (since the last [`Sink::take`]).
    pub async fn full(&self) {
        self.full.notified().await
    }

    /// Takes every waiting span, leaving `spare` (emptied, its buffer kept) in their place.
    pub fn take(&self, spare: &mut Encoded) {
        spare.bytes.clear();
        spare.spans = 0;
        spare.told = false;
        let mut encoded = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *encoded, spare);
    }

    /// Spans dropped so far because the sink was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// This process's sink.
pub fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink {
        encoded: Mutex::new(Encoded {
            bytes: Vec::with_capacity(FLUSH_AT + 64 * 1024),
            spans: 0,
            told: false,
        }),
        dropped: AtomicU64::new(0),
        capacity: SINK_CAPACITY,
        full: tokio::sync::Notify::new(),
    })
}

static RECORDING: AtomicBool = AtomicBool::new(false);
/// The share of new traces sampled, in millionths.
static SAMPLE_PPM: AtomicU64 = AtomicU64::new(1_000_000);

/// Whether spans are recorded (an exporter is installed).
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Starts recording spans, sampling `ratio` (0 to 1) of the traces this process starts.
/// Called by the exporter once it runs.
pub fn start_recording(ratio: f64) {
    let ppm = (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
    SAMPLE_PPM.store(ppm, Ordering::Relaxed);
    RECORDING.store(true, Ordering::Relaxed);
}

/// Stops recording (tests; a process whose exporter stopped).
pub fn stop_recording() {
    RECORDING.store(false, Ordering::Relaxed);
}

/// Whether a new trace with this id is sampled: decided from the id itself (OpenTelemetry's
/// `TraceIdRatioBased`), so that every process deciding on the same trace agrees.
pub fn sampled(trace_id: &[u8; 16]) -> bool {
    sampled_at(trace_id, SAMPLE_PPM.load(Ordering::Relaxed))
}

/// Whether a trace with this id is sampled at `ppm` millionths.
fn sampled_at(trace_id: &[u8; 16], ppm: u64) -> bool {
    if ppm >= 1_000_000 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("eight bytes"));
    // The lower 8 bytes are random (W3C level 2): their share of u64 below the ratio.
    u128::from(low >> 11) < (u128::from(ppm) << 53) / 1_000_000
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;
    use prost::Message;

    use super::*;

    /// Held by the tests that turn recording on and off, or take the shared sink.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn a_span_is_recorded_when_dropped_with_its_parent_and_attributes_and_never_when_off() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut root = TraceContext::new_root();
        root.sampled = true;
        stop_recording();
        let off = Span::open(&root, None, "off", Kind::Server);
        assert!(!off.is_recording());
        drop(off);

        start_recording(1.0);
        let (mut span, ctx) = Span::child_of(&root, "GET /x", Kind::Client);
        span.set("http.response.status_code", 503u16);
        span.fail("upstream answered 503");
        drop(span);
        let mut got = Encoded::default();
        sink().take(&mut got);
        // The sink holds `ScopeSpans.spans` entries: back to back, a `ScopeSpans` message.
        let decoded = ScopeSpans::decode(&got.bytes[..]).unwrap();
        assert_eq!(decoded.spans.len(), got.spans);
        assert_eq!(entries(&got.bytes).count(), got.spans);
        let mine: Vec<_> = decoded
            .spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        assert_eq!(mine.len(), 1, "only the span opened while recording");
        let s = mine[0];
        assert_eq!(
            (s.span_id.as_slice(), s.parent_span_id.as_slice()),
            (&ctx.span_id[..], &root.span_id[..])
        );
        assert_eq!((s.kind, s.name.as_str()), (Kind::Client as i32, "GET /x"));
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);
        assert_eq!(s.attributes.len(), 1);
        assert_eq!(s.attributes[0].key, "http.response.status_code");
        assert_eq!(
            s.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(s.status.as_ref().unwrap().message, "upstream answered 503");

        // A trace not sampled records nothing.
        let mut quiet = root;
        quiet.sampled = false;
        drop(Span::open(&quiet, None, "quiet", Kind::Server));
        sink().take(&mut got);
        let decoded = ScopeSpans::decode(&got.bytes[..]).unwrap();
        assert!(decoded.spans.iter().all(|s| s.trace_id != root.trace_id));
    }

    #[test]
    fn a_record_reused_for_the_next_span_keeps_nothing_of_the_last() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut root = TraceContext::new_root();
        root.sampled = true;
        start_recording(1.0);
        // Enough attributes to outgrow the inline room, a joined name, a failure.
        let (mut first, first_ctx) = Span::child_of(&root, "first", Kind::Client);
        first.name_pair("GET", "/api/first");
        for i in 0..15 {
            first.set("tessera.n", i64::from(i));
        }
        first.fail("went wrong");
        drop(first);
        let spare = SPARE.with_borrow(Vec::len);
        assert!(spare >= 1, "the ended span's record is kept");
        let (second, second_ctx) = Span::child_of(&root, "second", Kind::Internal);
        assert_eq!(SPARE.with_borrow(Vec::len), spare - 1, "and taken again");
        drop(second);

        let mut got = Encoded::default();
        sink().take(&mut got);
        let decoded = ScopeSpans::decode(&got.bytes[..]).unwrap();
        let find = |id: [u8; 8]| {
            decoded
                .spans
                .iter()
                .find(|s| s.span_id == id)
                .expect("recorded")
        };
        let (first, second) = (find(first_ctx.span_id), find(second_ctx.span_id));
        assert_eq!(first.name, "GET /api/first");
        assert_eq!(first.attributes.len(), 15);
        assert_eq!(first.status.as_ref().unwrap().message, "went wrong");
        assert_eq!(
            (second.name.as_str(), second.kind),
            ("second", Kind::Internal as i32)
        );
        assert!(second.attributes.is_empty(), "{:?}", second.attributes);
        assert!(second.status.as_ref().is_none_or(|s| s.message.is_empty()));
        assert_eq!(second.parent_span_id, root.span_id);
        assert!(second.start_time_unix_nano >= first.end_time_unix_nano);
    }

    #[test]
    fn the_sampling_ratio_is_kept_and_decided_by_the_trace_id() {
        let ids: Vec<[u8; 16]> = (0..4000).map(|_| rand::random()).collect();
        let kept = ids.iter().filter(|id| sampled_at(id, 250_000)).count();
        assert!((800..1200).contains(&kept), "{kept} of 4000 at 25%");
        // Every process deciding on the same trace decides the same.
        assert!(
            ids.iter()
                .all(|id| sampled_at(id, 250_000) == sampled_at(id, 250_000))
        );
        // A lower share keeps a subset of what a higher one keeps.
        assert!(
            ids.iter()
                .all(|id| !sampled_at(id, 100_000) || sampled_at(id, 250_000))
        );
        assert!(ids.iter().all(|id| !sampled_at(id, 0)));
        assert!(ids.iter().all(|id| sampled_at(id, 1_000_000)));
    }
}
