//! RED metrics of every route: the control plane knows the instances (the registry, and the
//! gateways the manifest runs), scrapes each one's `/metrics` every few seconds, and keeps per
//! service and route a short series of points (rate, errors, p50, p99) for the console's
//! charts: `GET /v1/telemetry/metrics`; and each process's resilience, its breakers asked
//! when shown and its counters from the last scrape: `GET /v1/telemetry/resilience`. A real Prometheus scrapes the same instances through
//! `GET /v1/telemetry/prometheus`, an HTTP service discovery (`http_sd_configs`) endpoint.
//!
//! A point is the difference between two scrapes of each instance, summed over the
//! service's instances: an instance that restarted (its counters went down) counts from zero,
//! and a new one counts from its second scrape. Quantiles come from the latency histogram's
//! bucket differences, interpolated within the bucket as Prometheus's `histogram_quantile`
//! does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};
use tessera::ApiError;

use super::Telemetry;
use super::exposition::{Sample, samples};
use crate::policy::Caller;

/// Points kept per route: an hour at the default interval.
pub const POINTS: usize = 720;

/// A process whose `/metrics` is scraped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub instance: String,
    /// `host:port` serving `/metrics` over plain HTTP.
    pub address: String,
}

/// One point of a route's series.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Unix ms at the end of the interval.
    pub t: i64,
    /// Requests per second over the interval.
    pub rate: f64,
    /// Requests answered 5xx per second.
    pub errors: f64,
    /// Latency quantiles, ms (none without requests).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// What one scrape of one instance said, per route.
#[derive(Clone, Default)]
struct RouteCounts {
    requests: f64,
    errors: f64,
    /// Cumulative bucket counts by upper bound.
    buckets: BTreeMap<OrderedBound, f64>,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
struct OrderedBound(f64);
impl Eq for OrderedBound {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The series, and the last scrape of each instance.
#[derive(Default)]
pub struct Series {
    last: HashMap<String, (String, HashMap<String, RouteCounts>)>,
    points: BTreeMap<(String, String), VecDeque<Point>>,
    /// Each instance's resilience counters at its last scrape.
    counters: BTreeMap<String, BTreeMap<&'static str, f64>>,
}

/// The counters the resilience page shows, summed over their labels.
const RESILIENCE_COUNTERS: [&str; 6] = [
    "tessera_retries_total",
    "tessera_retry_budget_exhausted_total",
    "tessera_breaker_rejected_total",
    "tessera_bulkhead_rejected_total",
    "tessera_outlier_ejections_total",
    "tessera_rate_limited_total",
];

/// The resilience counters in one scrape.
fn resilience_counters(text: &str) -> BTreeMap<&'static str, f64> {
    let mut out: BTreeMap<&'static str, f64> =
        RESILIENCE_COUNTERS.iter().map(|n| (*n, 0.0)).collect();
    for s in samples(text, &RESILIENCE_COUNTERS) {
        if let Some(name) = RESILIENCE_COUNTERS.iter().find(|n| **n == s.name) {
            *out.entry(name).or_default() += s.value;
        }
    }
    out
}

/// Each route's counts in one scrape.
fn counts_of(text: &str) -> HashMap<String, RouteCounts> {
    let mut out: HashMap<String, RouteCounts> = HashMap::new();
    let names = [
        "http_server_requests_total",
        "http_server_request_duration_seconds_bucket",
    ];
    for s in samples(text, &names) {
        let Some(route) = s.label("route") else {
            continue;
        };
        let counts = out.entry(route.to_string()).or_default();
        if s.name == names[0] {
            counts.requests += s.value;
            if is_error(&s) {
                counts.errors += s.value;
            }
        } else if let Some(le) = s.label("le").and_then(bound) {
            *counts.buckets.entry(OrderedBound(le)).or_default() += s.value;
        }
    }
    out
}

fn is_error(s: &Sample) -> bool {
    s.label("status")
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| c >= 500)
}

fn bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// `now - before`, a counter that went down (a restart) counting from zero.
fn delta(now: f64, before: f64) -> f64 {
    if now >= before { now - before } else { now }
}

/// The `q` quantile (0 to 1) of cumulative bucket counts, in the buckets' unit.
fn quantile(q: f64, buckets: &BTreeMap<OrderedBound, f64>) -> Option<f64> {
    let total = buckets.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (OrderedBound(upper), count) in buckets {
        if *count >= rank {
            if upper.is_infinite() {
                return Some(lower); // past the last finite bound: the bound it passed
            }
            let inside = (count - below).max(f64::MIN_POSITIVE);
            return Some(lower + (upper - lower) * ((rank - below) / inside));
        }
        lower = *upper;
        below = *count;
    }
    Some(lower)
}

/// What an instance's requests came to, summed over its routes: counts from one scrape, or
/// the difference of two (`rollouts.rs` compares two versions of a service with it).
#[derive(Clone, Default)]
pub struct Totals {
    counts: RouteCounts,
}

impl Totals {
    /// The totals in one scrape's text.
    pub fn of(text: &str) -> Self {
        let mut counts = RouteCounts::default();
        for c in counts_of(text).into_values() {
            counts.requests += c.requests;
            counts.errors += c.errors;
            for (le, n) in c.buckets {
                *counts.buckets.entry(le).or_default() += n;
            }
        }
        Self { counts }
    }

    /// Adds what happened between `before` and `now` (a restart counting from zero).
    pub fn add_since(&mut self, now: &Totals, before: &Totals) {
        let (c, b) = (&now.counts, &before.counts);
        self.counts.requests += delta(c.requests, b.requests);
        self.counts.errors += delta(c.errors, b.errors);
        for (le, count) in &c.buckets {
            let was = b.buckets.get(le).copied().unwrap_or(0.0);
            *self.counts.buckets.entry(*le).or_default() += delta(*count, was);
        }
    }

    pub fn requests(&self) -> f64 {
        self.counts.requests
    }

    /// Requests answered 5xx.
    pub fn errors(&self) -> f64 {
        self.counts.errors
    }

    pub fn p99_ms(&self) -> Option<f64> {
        quantile(0.99, &self.counts.buckets).map(|s| s * 1000.0)
    }
}

/// Where `instance`'s `/metrics` is, if it registered an admin listener on its own host.
pub fn admin_of(instance: &tessera::registry::Instance) -> Option<String> {
    instance
        .metadata
        .get(tessera::admin::METADATA_KEY)
        .and_then(|a| admin_address(&instance.address, a))
}

/// The text of `/metrics` at `address` (plain HTTP), at most [`MAX_SCRAPE_BYTES`].
pub async fn scrape(http: &reqwest::Client, address: &str) -> Option<String> {
    let mut resp = http
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .ok()?;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_SCRAPE_BYTES {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&body).into_owned())
}

impl Series {
    /// Takes one round of scrapes (`(target, text)`, taken at `t` ms after `interval`) and
    /// adds a point per route that had requests before.
    fn add(&mut self, t: i64, interval: Duration, scraped: Vec<(Target, String)>) {
        let mut sums: BTreeMap<(String, String), RouteCounts> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for (target, text) in scraped {
            let now = counts_of(&text);
            seen.insert(target.instance.clone());
            self.counters
                .insert(target.instance.clone(), resilience_counters(&text));
            if let Some((_, before)) = self.last.get(&target.instance) {
                for (route, c) in &now {
                    let b = before.get(route).cloned().unwrap_or_default();
                    let sum = sums
                        .entry((target.service.clone(), route.clone()))
                        .or_default();
                    sum.requests += delta(c.requests, b.requests);
                    sum.errors += delta(c.errors, b.errors);
                    for (le, count) in &c.buckets {
                        let was = b.buckets.get(le).copied().unwrap_or(0.0);
                        *sum.buckets.entry(*le).or_default() += delta(*count, was);
                    }
                }
            }
            self.last.insert(target.instance, (target.service, now));
        }
        // Instances gone since: forgotten (one back later counts from its next scrape).
        self.last.retain(|instance, _| seen.contains(instance));
        self.counters.retain(|instance, _| seen.contains(instance));
        let seconds = interval.as_secs_f64().max(0.001);
        for ((service, route), sum) in sums {
            let key = (service, route);
            if !self.points.contains_key(&key)
                && self.points.keys().filter(|(s, _)| *s == key.0).count() >= MAX_ROUTES
            {
                continue;
            }
            let points = self.points.entry(key).or_default();
            points.push_back(Point {
                t,
                rate: sum.requests / seconds,
                errors: sum.errors / seconds,
                p50_ms: quantile(0.5, &sum.buckets).map(|s| s * 1000.0),
                p99_ms: quantile(0.99, &sum.buckets).map(|s| s * 1000.0),
            });
            while points.len() > POINTS {
                points.pop_front();
            }
        }
        // Routes with no point for as long as a series lasts: forgotten.
        let oldest = t - (POINTS as i64) * interval.as_millis() as i64;
        self.points
            .retain(|_, points| points.back().is_some_and(|p| p.t >= oldest));
    }
}

/// The instances to scrape: every registered one that says where its admin listener is, the
/// gateways the manifest runs, and the control plane itself.
pub(super) fn targets(telemetry: &Telemetry) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(registry) = &telemetry.registry {
        for (service, instances) in registry.catalog().services {
            for i in instances {
                if let Some(admin) = admin_of(&i) {
                    out.push(Target {
                        service: service.clone(),
                        instance: i.id.clone(),
                        address: admin,
                    });
                }
            }
        }
    }
    out.extend(telemetry.fixed_targets.iter().cloned());
    out
}

/// The admin address an instance registered, if it is a socket address on the same host as
/// the instance itself: what an instance says is not a URL the control plane (or Prometheus)
/// would fetch wherever it points.
fn admin_address(instance: &str, admin: &str) -> Option<String> {
    let admin: std::net::SocketAddr = admin.parse().ok()?;
    let host: std::net::SocketAddr = instance.parse().ok()?;
    (admin.ip() == host.ip()).then(|| admin.to_string())
}

/// The most a scrape reads of an instance's `/metrics`.
const MAX_SCRAPE_BYTES: usize = 4 * 1024 * 1024;
/// The most routes a service keeps series for (a service labelling raw paths as routes would
/// grow them without end).
const MAX_ROUTES: usize = 200;

/// Scrapes every target each `every`, for as long as the process runs.
pub(super) async fn run(telemetry: Telemetry, every: Duration) {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(every.min(Duration::from_secs(2)))
        .build()
        .expect("a client");
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let scrapes = targets(&telemetry).into_iter().map(|target| {
            let http = http.clone();
            async move {
                let text = scrape(&http, &target.address).await?;
                Some((target, text))
            }
        });
        let scraped: Vec<_> = futures_util::future::join_all(scrapes)
            .await
            .into_iter()
            .flatten()
            .collect();
        let t = tessera::unix_now_ms();
        telemetry
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(t, every, scraped);
    }
}

/// `GET /v1/telemetry/prometheus`: Prometheus's HTTP service discovery, every target with its
/// service and instance as labels.
pub async fn prometheus(
    State(telemetry): State<Telemetry>,
    caller: Caller,
) -> Result<Json<JsonValue>, ApiError> {
    caller.may_inspect()?;
    let groups: Vec<JsonValue> = targets(&telemetry)
        .into_iter()
        .map(|t| {
            json!({
                "targets": [t.address],
                "labels": {
                    "job": "tessera",
                    "tessera_system": telemetry.system,
                    "tessera_service": t.service,
                    "tessera_instance": t.instance,
                },
            })
        })
        .collect();
    Ok(Json(JsonValue::Array(groups)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    service: Option<String>,
    route: Option<String>,
}

/// `GET /v1/telemetry/metrics?service=&route=`: each route's series.
pub async fn series(
    State(telemetry): State<Telemetry>,
    caller: Caller,
    tessera::Query(q): tessera::Query<SeriesQuery>,
) -> Result<Json<JsonValue>, ApiError> {
    caller.may_inspect()?;
    let series = telemetry.series.lock().unwrap_or_else(|e| e.into_inner());
    let routes: Vec<JsonValue> = series
        .points
        .iter()
        .filter(|((s, r), _)| {
            q.service.as_deref().is_none_or(|want| want == s)
                && q.route.as_deref().is_none_or(|want| want == r)
        })
        .map(|((service, route), points)| {
            json!({ "service": service, "route": route, "points": points })
        })
        .collect();
    Ok(Json(json!({ "routes": routes })))
}

/// Each of `targets`' admin listener's JSON at `path`, asked now (None where it did not
/// answer with JSON in time).
async fn ask_each(targets: &[Target], path: &str) -> Vec<Option<JsonValue>> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .build()
        .expect("a client");
    let asks = targets.iter().map(|t| {
        let http = http.clone();
        let url = format!("http://{}{path}", t.address);
        async move {
            let resp = http.get(url).send().await.ok()?;
            let body = resp.bytes().await.ok()?;
            if body.len() > MAX_SCRAPE_BYTES {
                return None;
            }
            serde_json::from_slice::<JsonValue>(&body).ok()
        }
    });
    futures_util::future::join_all(asks).await
}

/// `GET /v1/telemetry/resilience`: each process's breakers, bulkheads and balanced instances
/// (its admin listener's `/status/resilience`, asked now) and its resilience counters at the
/// last scrape: retries, retry budget exhausted, breaker and bulkhead rejections, outlier
/// ejections, rate-limit rejections.
pub async fn resilience(
    State(telemetry): State<Telemetry>,
    caller: Caller,
) -> Result<Json<JsonValue>, ApiError> {
    caller.may_inspect()?;
    let targets: Vec<Target> = targets(&telemetry)
        .into_iter()
        .filter(|t| t.service != "control")
        .collect();
    let statuses = ask_each(&targets, "/status/resilience").await;
    let counters = telemetry
        .series
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .counters
        .clone();
    let processes: Vec<JsonValue> = targets
        .into_iter()
        .zip(statuses)
        .map(|(t, status)| {
            json!({
                "service": t.service,
                "instance": t.instance,
                "status": status,
                "counters": counters.get(&t.instance),
            })
        })
        .collect();
    Ok(Json(json!({ "processes": processes })))
}

/// `GET /v1/telemetry/platform`: the processes of the platform that do not register (the
/// gateways, asked on their admin listener's `/status/process` now, and the control plane
/// itself), with whether they answered: the console's services page shows them beside the
/// services' instances.
pub async fn platform(
    State(telemetry): State<Telemetry>,
    caller: Caller,
) -> Result<Json<JsonValue>, ApiError> {
    caller.may_inspect()?;
    let gateways: Vec<Target> = telemetry
        .fixed_targets
        .iter()
        .filter(|t| t.service != "control")
        .cloned()
        .collect();
    let answers = ask_each(&gateways, "/status/process").await;
    let mut processes: Vec<JsonValue> = gateways
        .into_iter()
        .zip(answers)
        .map(|(t, process)| {
            json!({
                "service": t.service,
                "instance": t.instance,
                "admin": t.address,
                "up": process.is_some(),
                "process": process,
            })
        })
        .collect();
    processes.push(json!({
        "service": "control",
        "instance": "control",
        "up": true,
        "process": tessera::admin::Process::get(),
    }));
    Ok(Json(json!({ "processes": processes })))
}

/// The series, shared by the scraper and the API.
pub type Shared = Arc<Mutex<Series>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(requests_ok: u64, requests_5xx: u64, fast: u64, slow: u64) -> String {
        let total = fast + slow;
        format!(
            r#"http_server_requests_total{{route="/api/x",method="GET",status="200"}} {requests_ok}
http_server_requests_total{{route="/api/x",method="GET",status="503"}} {requests_5xx}
http_server_request_duration_seconds_bucket{{route="/api/x",method="GET",status="200",le="0.001"}} {fast}
http_server_request_duration_seconds_bucket{{route="/api/x",method="GET",status="200",le="0.01"}} {total}
http_server_request_duration_seconds_bucket{{route="/api/x",method="GET",status="200",le="+Inf"}} {total}
"#
        )
    }

    fn target(instance: &str) -> Target {
        Target {
            service: "catalog".into(),
            instance: instance.into(),
            address: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn points_are_differences_summed_over_instances_with_quantiles_from_buckets() {
        let mut s = Series::default();
        let every = Duration::from_secs(5);
        s.add(1, every, vec![(target("a"), exposition(100, 0, 50, 50))]);
        assert!(s.points.is_empty(), "one scrape is no interval");
        s.add(
            2,
            every,
            vec![
                (target("a"), exposition(150, 10, 100, 60)),
                (target("b"), exposition(7, 0, 7, 0)),
            ],
        );
        let p = s.points[&("catalog".to_string(), "/api/x".to_string())]
            .back()
            .unwrap()
            .clone();
        // a: 60 more requests (50 + 10 failed), in 5 s; b's first scrape counts from its next.
        assert_eq!((p.t, p.rate, p.errors), (2, 12.0, 2.0));
        // 50 of 60 under 1 ms: the median within the first bucket, the 99th in the second.
        let p50 = p.p50_ms.unwrap();
        assert!(p50 > 0.0 && p50 <= 1.0, "{p50}");
        let p99 = p.p99_ms.unwrap();
        assert!(p99 > 1.0 && p99 <= 10.0, "{p99}");
        // a restarts (its counters fall): counted from zero, never negative.
        s.add(3, every, vec![(target("a"), exposition(5, 0, 5, 0))]);
        let p = s.points[&("catalog".to_string(), "/api/x".to_string())]
            .back()
            .unwrap()
            .clone();
        assert_eq!((p.t, p.rate), (3, 1.0));
    }

    #[test]
    fn an_admin_address_is_scraped_only_on_the_instances_own_host() {
        assert_eq!(
            admin_address("127.0.0.1:4000", "127.0.0.1:4001").as_deref(),
            Some("127.0.0.1:4001")
        );
        for bad in [
            "169.254.169.254:80",
            "127.0.0.1:80/latest?x=",
            "example.com:80",
            "",
        ] {
            assert_eq!(admin_address("127.0.0.1:4000", bad), None, "{bad}");
        }
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_they_fall_in() {
        let buckets: BTreeMap<OrderedBound, f64> =
            [(0.1, 0.0), (0.2, 100.0), (f64::INFINITY, 100.0)]
                .into_iter()
                .map(|(b, c)| (OrderedBound(b), c))
                .collect();
        let median = quantile(0.5, &buckets).unwrap();
        assert!((median - 0.15).abs() < 1e-9, "{median}");
        assert_eq!(quantile(0.5, &BTreeMap::new()), None);
    }
}
