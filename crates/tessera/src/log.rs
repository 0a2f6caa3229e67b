//! JSON logs: one object per line, every line naming its service, instance and trace.
//!
//! `{"ts":"2026-11-22T10:00:00.123Z","level":"INFO","service":"catalog","instance":"catalog-1",
//! "trace_id":"…","span_id":"…","target":"shop_catalog","msg":"…", …fields}`
//!
//! The trace ids come from the nearest enclosing span that recorded `trace_id` and `span_id`
//! fields (the request span the service middleware opens), so a handler's own `tracing::info!`
//! lines carry the trace without doing anything. The level filter is `RUST_LOG`.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the JSON logger for this process. Later calls do nothing.
pub fn init(service: &str, instance: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn"));
    let _ = tracing_subscriber::registry()
        .with(JsonLayer {
            service: json_str(service),
            instance: json_str(instance),
        })
        .with(filter)
        .try_init();
}

/// Log lines are appended to one in-memory buffer and written out in batches: when it passes
/// 32 KiB, and every 10 ms by a background thread. A busy server so makes one `write(2)` per
/// batch rather than one per line, and wakes no thread per line. [`flush`] writes what is
/// pending (at shutdown).
struct Writer {
    buffer: std::sync::Mutex<Vec<u8>>,
}

const FLUSH_AT: usize = 32 * 1024;

impl Writer {
    fn write(&self, line: String) {
        let full = {
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buffer.extend_from_slice(line.as_bytes());
            (buffer.len() >= FLUSH_AT).then(|| std::mem::take(&mut *buffer))
        };
        if let Some(batch) = full {
            let _ = std::io::stdout().lock().write_all(&batch);
        }
    }

    fn flush(&self) {
        let batch = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&batch);
            let _ = out.flush();
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
        }
    })
}

/// Writes every pending log line now.
pub fn flush() {
    writer().flush();
}

struct JsonLayer {
    service: String,
    instance: String,
}

/// Trace ids recorded by a span.
struct SpanTrace {
    trace_id: String,
    span_id: String,
}

#[derive(Default)]
struct TraceVisitor {
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl Visit for TraceVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = Some(value.to_string()),
            "span_id" => self.span_id = Some(value.to_string()),
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
        let mut line = String::with_capacity(256);
        line.push_str("{\"ts\":\"");
        push_timestamp(&mut line);
        let _ = write!(
            line,
            "\",\"level\":\"{}\",\"service\":{},\"instance\":{}",
            event.metadata().level(),
            self.service,
            self.instance
        );
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(t) = span.extensions().get::<SpanTrace>() {
                    let _ = write!(
                        line,
                        ",\"trace_id\":{},\"span_id\":{}",
                        json_str(&t.trace_id),
                        json_str(&t.span_id)
                    );
                    break;
                }
            }
        }
        let _ = write!(line, ",\"target\":{}", json_str(event.metadata().target()));
        event.record(&mut FieldWriter { line: &mut line });
        line.push_str("}\n");
        writer().write(line);
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
        let _ = write!(self.line, ",{}:", json_str(name));
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.line.push_str(&json_str(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null");
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.line.push_str(&json_str(&format!("{value:?}")));
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The current time, RFC 3339 UTC with milliseconds.
pub fn rfc3339_now() -> String {
    let mut s = String::with_capacity(24);
    push_timestamp(&mut s);
    s
}

/// RFC 3339 UTC with milliseconds, without a date-time crate.
fn push_timestamp(out: &mut String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_is_rfc3339() {
        let mut s = String::new();
        super::push_timestamp(&mut s);
        assert_eq!(s.len(), 24, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }
}
