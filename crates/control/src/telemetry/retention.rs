//! Keeping the store within bounds: spans and log lines older than [`Retention::max_age`] are
//! deleted, and while the database holds more than [`Retention::max_bytes`] of live pages, the
//! oldest tenth goes. Space freed is reused by SQLite, so the file stops growing at about the limit.

use std::time::Duration;

use tessera::store::{query, query_scalar};

use super::Telemetry;

/// How long, and how much, telemetry is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for Retention {
    /// A week, and 512 MiB.
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

pub(super) async fn run(telemetry: Telemetry, retention: Retention, every: Duration) {
    loop {
        if let Err(e) = telemetry.prune(retention).await {
            tracing::warn!(error = %e, "cannot prune the telemetry store; trying again later");
        }
        tokio::time::sleep(every).await;
    }
}

impl Telemetry {
    /// Deletes what `retention` no longer keeps; how many spans went.
    pub async fn prune(&self, retention: Retention) -> Result<u64, tessera::DbError> {
        let pool = self.db().pool();
        let oldest_kept = (tessera::unix_now_ms() - retention.max_age.as_millis() as i64)
            .saturating_mul(1_000_000);
        let mut gone = query("DELETE FROM spans WHERE start_ns < $1")
            .bind(oldest_kept)
            .execute(pool)
            .await?
            .rows_affected();
        gone += query("DELETE FROM logs WHERE ts_ns < $1")
            .bind(oldest_kept)
            .execute(pool)
            .await?
            .rows_affected();
        loop {
            let pages: i64 = query_scalar("SELECT page_count - freelist_count FROM pragma_page_count(), pragma_freelist_count()")
                .fetch_one(pool)
                .await?;
            let page_size: i64 = query_scalar("SELECT page_size FROM pragma_page_size()")
                .fetch_one(pool)
                .await?;
            if (pages.max(0) as u64) * (page_size.max(0) as u64) <= retention.max_bytes {
                break;
            }
            // The oldest tenth of spans and log lines together, by time.
            let count: i64 =
                query_scalar("SELECT (SELECT COUNT(*) FROM spans) + (SELECT COUNT(*) FROM logs)")
                    .fetch_one(pool)
                    .await?;
            if count == 0 {
                break;
            }
            let cut: Option<i64> = query_scalar(
                "SELECT t FROM (SELECT start_ns AS t FROM spans UNION ALL SELECT ts_ns AS t FROM logs) ORDER BY t LIMIT 1 OFFSET $1",
            )
            .bind((count / 10).max(1) - 1)
            .fetch_optional(pool)
            .await?;
            let Some(cut) = cut else { break };
            gone += query("DELETE FROM spans WHERE start_ns <= $1")
                .bind(cut)
                .execute(pool)
                .await?
                .rows_affected();
            gone += query("DELETE FROM logs WHERE ts_ns <= $1")
                .bind(cut)
                .execute(pool)
                .await?
                .rows_affected();
        }
        if gone > 0 {
            tracing::info!(records = gone, "telemetry pruned");
            metrics::counter!("tessera_telemetry_spans_pruned_total").increment(gone);
        }
        Ok(gone)
    }
}
