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
