//! Log lines for export: the lines a process writes (`tessera::log`), also kept for the
//! exporter (`tessera-telemetry`), which sends them as OTLP log records carrying their trace
//! and span ids.
//!
//! Only once an exporter runs, and never the lines that repeat a span (a request's access
//! line, an event's "handled" line: their targets are in [`SPAN_LINES`]): what the spans
//! already say is not sent twice, and a request costs no export of its own log line.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The targets of lines that repeat what a span records; they stay in the process's output.
pub const SPAN_LINES: [&str; 3] = ["access", "request", "event"];

/// A line to export.
#[derive(Clone, Debug)]
pub struct LogData {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// OpenTelemetry's severity number (`TRACE` 1, `DEBUG` 5, `INFO` 9, `WARN` 13, `ERROR` 17).
    pub severity: u8,
    pub level: &'static str,
    /// All zero when the line belongs to no trace.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The JSON object the line is.
    pub line: String,
}

/// The severity number of a `tracing` level's name.
pub fn severity_of(level: &str) -> u8 {
    match level {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        _ => 17,
    }
}

/// Lines waiting for the exporter: bounded, as spans are.
pub struct LogSink {
    lines: Mutex<Vec<LogData>>,
    dropped: AtomicU64,
}

/// Lines kept waiting at most.
pub const LOG_CAPACITY: usize = 16 * 1024;

impl LogSink {
    pub fn push(&self, line: LogData) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= LOG_CAPACITY {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        lines.push(line);
    }

    /// Takes every waiting line, leaving `spare` (emptied) in their place.
    pub fn take(&self, spare: &mut Vec<LogData>) {
        spare.clear();
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *lines, spare);
    }

    /// Lines dropped so far because the sink was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// This process's log sink.
pub fn sink() -> &'static LogSink {
    static SINK: OnceLock<LogSink> = OnceLock::new();
    SINK.get_or_init(|| LogSink {
        lines: Mutex::new(Vec::new()),
        dropped: AtomicU64::new(0),
    })
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether lines are kept for export.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Keeps lines for export from now on (the exporter calls it).
pub fn start_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether a line of `target` is exported.
pub fn exported(target: &str) -> bool {
    exporting() && !SPAN_LINES.contains(&target)
}
