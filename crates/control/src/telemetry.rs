//! The collector: the control plane's OpenTelemetry receiver and the store behind the
//! console's and the CLI's trace views.
//!
//! Any process of the system sends its spans and log records here as OTLP/HTTP (`POST
//! /v1/traces`, `POST /v1/logs`, protobuf or JSON, `receive.rs`): Tessera's own processes
//! through `tessera-telemetry`, a service in another language through its OpenTelemetry SDK's
//! OTLP exporter pointed at the control plane with its credential. Like every control-plane
//! call, a post proves who makes it, and a service's telemetry is stored under its own name
//! whatever its resource claims, so no process can write another's.
//!
//! Both are kept on disk (an SQLite database beside the event log, `telemetry.db`), so they
//! outlive a restart, and pruned by age and by size (`retention.rs`). Queries
//! (`GET /v1/telemetry/traces`, `…/traces/{id}` with the trace's log lines, `…/logs`,
//! `query.rs`) are the supervisor's and an admin's: spans by service, route, status,
//! duration, time and trace id; log lines by service, level, text, trace and time, or those
//! after the last one seen (a live tail).

mod exposition;
pub mod metrics;
mod query;
mod receive;
mod retention;

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tessera::{Db, Migration};

pub use retention::Retention;

// The collector's store is embedded only: beyond it, point the exporters at Tempo or Jaeger.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "spans",
        sqlite: include_str!("../migrations/telemetry/0001_spans.sql"),
        postgres: None,
    },
    Migration {
        version: 2,
        description: "logs",
        sqlite: include_str!("../migrations/telemetry/0002_logs.sql"),
        postgres: None,
    },
];

/// What a post may carry at most.
pub const MAX_POST_BYTES: usize = 16 * 1024 * 1024;

/// The collector's store, and the metrics it scrapes.
#[derive(Clone)]
pub struct Telemetry {
    db: Db,
    /// Whose instances are scraped (none: only `fixed_targets`).
    registry: Option<crate::Registry>,
    /// Processes scraped that do not register (the gateways, the control plane itself).
    fixed_targets: Vec<metrics::Target>,
    series: metrics::Shared,
    system: String,
}

/// What the collector scrapes for metrics, and how often.
#[derive(Clone, Debug)]
pub struct Scraping {
    /// The gateways the manifest runs, and the control plane: they do not register.
    pub fixed: Vec<metrics::Target>,
    pub system: String,
    pub every: Duration,
}

impl Telemetry {
    /// Opens (creating) the store in `dir`, and prunes it by `retention` from now on; with
    /// `scraping`, scrapes the registry's instances and the fixed targets too.
    pub async fn open(
        dir: &Path,
        retention: Retention,
        registry: Option<crate::Registry>,
        scraping: Option<Scraping>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Db::open(&Db::default_url(dir, "telemetry"), MIGRATIONS).await?;
        let (fixed, system, every) = match &scraping {
            Some(s) => (s.fixed.clone(), s.system.clone(), Some(s.every)),
            None => (Vec::new(), String::new(), None),
        };
        let telemetry = Self {
            db,
            registry,
            fixed_targets: fixed,
            series: metrics::Shared::default(),
            system,
        };
        // Pruned once before the store answers anything, so that what retention no longer
        // keeps is never served after a restart; then every 30 s.
        if let Err(e) = telemetry.prune(retention).await {
            tracing::warn!(error = %e, "cannot prune the telemetry store; trying again later");
        }
        tokio::spawn(retention::run(
            telemetry.clone(),
            retention,
            Duration::from_secs(30),
        ));
        if let Some(every) = every {
            tokio::spawn(metrics::run(telemetry.clone(), every));
        }
        Ok(telemetry)
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

/// The collector's routes (behind the credential check).
pub fn routes(telemetry: Telemetry) -> Router {
    Router::new()
        .route(
            "/v1/traces",
            post(receive::traces).layer(axum::extract::DefaultBodyLimit::max(MAX_POST_BYTES)),
        )
        .route(
            "/v1/logs",
            post(receive::logs).layer(axum::extract::DefaultBodyLimit::max(MAX_POST_BYTES)),
        )
        .route("/v1/telemetry/traces", get(query::traces))
        .route("/v1/telemetry/traces/{trace_id}", get(query::trace))
        .route("/v1/telemetry/logs", get(query::logs))
        .route("/v1/telemetry/metrics", get(metrics::series))
        .route("/v1/telemetry/prometheus", get(metrics::prometheus))
        .route("/v1/telemetry/resilience", get(metrics::resilience))
        .route("/v1/telemetry/platform", get(metrics::platform))
        .with_state(telemetry)
}

/// Lowercase hex of `bytes` (the trace crate's encoding, which trace ids are written in
/// everywhere else).
fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    tessera::trace::hex(bytes, &mut out).to_string()
}
