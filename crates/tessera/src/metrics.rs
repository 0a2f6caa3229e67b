//! Prometheus metrics in text format at `/metrics`.
//!
//! One process-wide recorder from `metrics-exporter-prometheus`, rendered on request (no
//! listener of its own). Every HTTP server of the platform records
//! `http_server_requests_total` and `http_server_request_duration_seconds` per route, method
//! and status; routes are the matched templates (`/api/catalog/products/{id}`), never raw
//! paths, so the number of series stays bounded.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the recorder (once per process) and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (in tests); rendering still works.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        let upkeep = handle.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// Every metric the platform records, with its help text: Prometheus's exposition carries it
/// (`promtool check metrics` wants it), and `docs/observability.md` lists the same.
const DESCRIBED: &[(&str, &str)] = &[
    (
        "tessera_mail_sent_total",
        "Mail messages an SMTP server accepted (tessera::mail).",
    ),
    (
        "tessera_mail_failed_total",
        "Mail messages not sent, by outcome: retry (tried again later) or dead (given up).",
    ),
    (
        "http_server_requests_total",
        "HTTP requests served, by route, method and status.",
    ),
    (
        "http_server_request_duration_seconds",
        "Time to answer an HTTP request, by route, method and status.",
    ),
    (
        "tessera_breaker_rejected_total",
        "Calls refused at once by an open circuit breaker.",
    ),
    (
        "tessera_breaker_transitions_total",
        "Circuit breaker state changes.",
    ),
    (
        "tessera_breaker_state",
        "A circuit breaker's state: 0 closed, 1 open, 2 half-open.",
    ),
    (
        "tessera_bulkhead_rejected_total",
        "Calls refused because a bulkhead was full.",
    ),
    ("tessera_retries_total", "Calls tried again."),
    (
        "tessera_retry_budget_exhausted_total",
        "Retries not made because the retry budget was spent.",
    ),
    (
        "tessera_outlier_ejections_total",
        "Instances ejected from load balancing for failing.",
    ),
    (
        "tessera_fallbacks_total",
        "Answers given by a route's fallback.",
    ),
    (
        "tessera_rate_limited_total",
        "Requests refused by a rate limit.",
    ),
    (
        "tessera_rate_limit_local_total",
        "Rate-limit checks made locally while the shared store was unreachable.",
    ),
    (
        "tessera_redis_failures_total",
        "Failed calls to the shared Redis.",
    ),
    ("tessera_cache_hits_total", "Reads answered from a cache."),
    (
        "tessera_cache_misses_total",
        "Reads a cache could not answer.",
    ),
    (
        "tessera_db_reads_total",
        "Reads sent to a replica or to the primary.",
    ),
    (
        "tessera_db_replica_lag_bytes",
        "How far a read replica is behind its primary.",
    ),
    ("tessera_events_handled_total", "Events handled, by topic."),
    (
        "tessera_events_duplicates_total",
        "Events delivered again and ignored (already handled).",
    ),
    (
        "tessera_events_fetched_total",
        "Events fetched from the bus, by topic.",
    ),
    (
        "tessera_events_dead_lettered_total",
        "Events given up on and sent to the dead letters.",
    ),
    (
        "tessera_events_stuck",
        "Events whose handling keeps failing and is retried until done.",
    ),
    (
        "tessera_outbox_published_total",
        "Events the outbox relay published.",
    ),
    (
        "tessera_outbox_parked_total",
        "Events the bus refused, parked in the outbox.",
    ),
    (
        "tessera_spans_exported_total",
        "Spans handed to the exporter.",
    ),
    (
        "tessera_spans_dropped_total",
        "Spans dropped because the exporter fell behind.",
    ),
    (
        "tessera_logs_dropped_total",
        "Log records dropped because the exporter fell behind.",
    ),
    (
        "tessera_telemetry_spans_received_total",
        "Spans the collector stored.",
    ),
    (
        "tessera_telemetry_logs_received_total",
        "Log records the collector stored.",
    ),
    (
        "tessera_telemetry_spans_pruned_total",
        "Spans and log records the collector's retention removed.",
    ),
    (
        "tessera_config_applied_total",
        "Configuration versions this instance applied (tessera config).",
    ),
    (
        "tessera_gateway_reloads_total",
        "Manifest reloads of the gateway's routes, by outcome (applied, refused).",
    ),
    (
        "tessera_config_refused_total",
        "Configuration versions that did not parse here; the running values stayed.",
    ),
];

fn describe() {
    for (name, help) in DESCRIBED {
        if name.ends_with("_seconds") {
            metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help);
        } else if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    handle().render()
}

/// The two series of one route, method and status.
struct Series {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Series by route, then by method and status (a handful per route: a short scan).
type SeriesByRoute = HashMap<Box<str>, Vec<(Box<str>, u16, Series)>>;

thread_local! {
    /// Per thread, the series handles already registered: recording a request is then a hash
    /// lookup by borrowed strings and two atomic updates, with no label allocation.
    static SERIES: std::cell::RefCell<SeriesByRoute> = std::cell::RefCell::default();
}

/// Records one served HTTP request.
pub fn record_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    SERIES.with_borrow_mut(|series| {
        let by_route = match series.get_mut(route) {
            Some(v) => v,
            None => series.entry(route.into()).or_default(),
        };
        let i = match by_route
            .iter()
            .position(|(m, s, _)| *s == status && &**m == method)
        {
            Some(i) => i,
            None => {
                let labels = [
                    ("route", route.to_string()),
                    ("method", method.to_string()),
                    ("status", status.to_string()),
                ];
                let handles = Series {
                    requests: metrics::counter!("http_server_requests_total", &labels),
                    duration: metrics::histogram!("http_server_request_duration_seconds", &labels),
                };
                by_route.push((method.into(), status, handles));
                by_route.len() - 1
            }
        };
        let handles = &by_route[i].2;
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
    });
}

/// An axum handler for `GET /metrics`.
pub async fn endpoint() -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
}

#[cfg(test)]
mod tests {
    use super::DESCRIBED;

    /// Every metric the workspace records is described: a new one without help text would
    /// fail `promtool check metrics` in the black-box suite; this says which, and where.
    #[test]
    fn every_metric_recorded_anywhere_has_help_text() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut missing = Vec::new();
        let mut stack = vec![root.join("crates"), root.join("services")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                    for (i, _) in text.match_indices(macro_name) {
                        let rest = text[i + macro_name.len()..].trim_start();
                        let Some(rest) = rest.strip_prefix('"') else {
                            continue;
                        };
                        let name = &rest[..rest.find('"').unwrap_or(0)];
                        let a_name = !name.is_empty()
                            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                        if a_name && !DESCRIBED.iter().any(|(n, _)| *n == name) {
                            missing.push(format!("{name} ({})", path.display()));
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "metrics without help text: {missing:?}");
    }
}
