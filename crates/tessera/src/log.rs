//! JSON logs: one object per line, every line naming its service, instance and trace.
//!
//! `{"ts":"2026-11-22T10:00:00.123Z","level":"INFO","service":"catalog","instance":"catalog-1",
//! "trace_id":"…","span_id":"…","target":"shop_catalog","msg":"…", …fields}`
//!
//! The trace ids come from the nearest enclosing span that recorded `trace_id` and `span_id`
//! fields ([`TraceContext::span`]), else from the request or event being handled (the
//! `tessera_trace::REQUEST` scope the service middleware and consumers set), so a handler's
//! own `tracing::info!` lines carry the trace without doing anything, and serving a request
//! opens no span. The level filter is `RUST_LOG`.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::json::{Escaped, push_json_str};
use crate::trace::{REQUEST, TraceContext, push_timestamp};

/// Installs the JSON logger for this process. Later calls do nothing.
pub fn init(service: &str, instance: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,reqwest=warn"));
    let _ = tracing_subscriber::registry()
        .with(JsonLayer {
            identity: {
                let mut s = String::from(",\"service\":");
                push_json_str(&mut s, service);
                s.push_str(",\"instance\":");
                push_json_str(&mut s, instance);
                s
            },
        })
        .with(filter)
        .try_init();
}

/// Log lines are appended to one in-memory buffer and written out in batches: when it passes
/// 32 KiB, and every 10 ms by a background thread. A busy server so makes one `write(2)` per
/// batch rather than one per line, and wakes no thread per line. [`flush`] writes what is
/// pending (at shutdown). Two buffers take turns, so batches allocate nothing (and glibc's
/// allocator is not made to consolidate its free lists by a large free per batch).
struct Writer {
    buffer: std::sync::Mutex<Vec<u8>>,
    /// The other buffer, while it is not being written out.
    spare: std::sync::Mutex<Vec<u8>>,
}

const FLUSH_AT: usize = 32 * 1024;

impl Writer {
    fn write(&self, line: &[u8]) {
        let full = {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buffer.extend_from_slice(line);
            (buffer.len() >= FLUSH_AT).then(|| self.swap(&mut buffer))
        };
        if let Some(batch) = full {
            let _ = std::io::stdout().lock().write_all(&batch);
            self.give_back(batch);
        }
    }

    fn flush(&self) {
        let batch = {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.is_empty() {
                return;
            }
            self.swap(&mut buffer)
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&batch);
        let _ = out.flush();
        drop(out);
        self.give_back(batch);
    }

    /// The pending lines, leaving the spare buffer (or a new one, if it is being written) in
    /// their place.
    fn swap(&self, buffer: &mut Vec<u8>) -> Vec<u8> {
        let mut spare = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        if spare.capacity() == 0 {
            spare.reserve(FLUSH_AT * 2);
        }
        std::mem::replace(buffer, spare)
    }

    fn give_back(&self, mut batch: Vec<u8>) {
        if batch.capacity() <= FLUSH_AT * 4 {
            batch.clear();
            *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = batch;
        }
    }
}

fn writer() -> &'static Writer {
    static WRITER: std::sync::OnceLock<Writer> = std::sync::OnceLock::new();
    WRITER.get_or_init(|| {
        std::thread::Builder::new()
            .name("tessera-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    writer().flush();
                }
            })
            .expect("the log thread starts");
        Writer {
            buffer: std::sync::Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
            spare: std::sync::Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
        }
    })
}

/// Writes every pending log line now.
pub fn flush() {
    writer().flush();
}

struct JsonLayer {
    /// `,"service":"…","instance":"…"`, escaped once.
    identity: String,
}

/// Trace ids recorded by a span.
struct SpanTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

#[derive(Default)]
struct TraceVisitor {
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
}

impl Visit for TraceVisitor {
    fn record_u128(&mut self, field: &Field, value: u128) {
        if field.name() == "trace_id" {
            self.trace_id = Some(value.to_be_bytes());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "span_id" {
            self.span_id = Some(value.to_be_bytes());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = parse_hex(value),
            "span_id" => self.span_id = parse_hex(value),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "trace_id" | "span_id" => self.record_str(field, &format!("{value:?}")),
            _ => {}
        }
    }
}

fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let b = hex.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

thread_local! {
    /// The trace of a log line written by [`in_trace`].
    static TRACE: std::cell::Cell<Option<TraceContext>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` (which logs) as part of `trace`, outside any span or request scope: the service
/// middleware writes its request line with it, after the handler's scope has ended.
pub fn in_trace<R>(trace: &TraceContext, f: impl FnOnce() -> R) -> R {
    /// Puts the outer trace back even if `f` panics (a field's `Display` may).
    struct Restore(Option<TraceContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TRACE.set(self.0);
        }
    }
    let _restore = Restore(TRACE.replace(Some(*trace)));
    f()
}

/// The trace a log line belongs to: the nearest enclosing span that recorded trace ids, else
/// the line written by [`in_trace`], else the request or event being handled.
fn trace_of<S: Subscriber + for<'a> LookupSpan<'a>>(
    event: &Event<'_>,
    ctx: &Context<'_, S>,
) -> Option<([u8; 16], [u8; 8])> {
    if let Some(scope) = ctx.event_scope(event) {
        for span in scope {
            if let Some(t) = span.extensions().get::<SpanTrace>() {
                return Some((t.trace_id, t.span_id));
            }
        }
    }
    TRACE
        .get()
        .or_else(|| REQUEST.try_with(|r| r.trace).ok())
        .map(|t| (t.trace_id, t.span_id))
}

thread_local! {
    /// The line being written, reused: formatting a line allocates nothing once warm.
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsonLayer {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut v = TraceVisitor::default();
        attrs.record(&mut v);
        if let (Some(trace_id), Some(span_id), Some(span)) = (v.trace_id, v.span_id, ctx.span(id)) {
            span.extensions_mut()
                .insert(SpanTrace { trace_id, span_id });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            line.push_str("{\"ts\":\"");
            push_timestamp(line);
            line.push_str("\",\"level\":\"");
            line.push_str(event.metadata().level().as_str());
            line.push('"');
            line.push_str(&self.identity);
            let trace = trace_of(event, &ctx);
            if let Some((trace_id, span_id)) = trace {
                let mut buf = [0u8; 32];
                line.push_str(",\"trace_id\":\"");
                line.push_str(crate::trace::hex(&trace_id, &mut buf));
                line.push_str("\",\"span_id\":\"");
                line.push_str(crate::trace::hex(&span_id, &mut buf));
                line.push('"');
            }
            line.push_str(",\"target\":");
            push_json_str(line, event.metadata().target());
            event.record(&mut FieldWriter { line });
            line.push_str("}\n");
            writer().write(line.as_bytes());
            let target = event.metadata().target();
            if crate::trace::logs::exported(target) {
                let level = event.metadata().level().as_str();
                let (trace_id, span_id) = trace.unwrap_or_default();
                crate::trace::logs::sink().push(crate::trace::logs::LogData {
                    ts_ns: crate::trace::unix_now_ns(),
                    severity: crate::trace::logs::severity_of(level),
                    level,
                    trace_id,
                    span_id,
                    line: line.trim_end().to_string(),
                });
            }
            if line.capacity() > 16 * 1024 {
                *line = String::with_capacity(512); // one huge line does not stay resident
            }
        });
    }
}

struct FieldWriter<'a> {
    line: &'a mut String,
}

impl FieldWriter<'_> {
    fn key(&mut self, field: &Field) {
        let name = match field.name() {
            "message" => "msg",
            n => n,
        };
        self.line.push(',');
        push_json_str(self.line, name);
        self.line.push(':');
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.line, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.line.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.line.push_str("null");
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        // Messages and `%value` fields arrive here: formatted and escaped as they are written.
        self.line.push('"');
        let _ = write!(Escaped(self.line), "{value:?}");
        self.line.push('"');
    }
}
