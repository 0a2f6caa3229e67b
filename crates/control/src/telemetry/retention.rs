//! Keeping the store within bounds: spans and log lines older than [`Retention::max_age`] are
//! deleted, and when the database holds more than [`Retention::max_bytes`] of live pages, the
//! oldest go: the share it is over by and a tenth more, once per round. Space freed is reused
//! by SQLite, so the file stops growing at about the limit.

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
        tokio::time::sleep(every).await;
        if let Err(e) = telemetry.prune(retention).await {
            tracing::warn!(error = %e, "cannot prune the telemetry store; trying again later");
        }
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
        // Over the size: the oldest go, as large a share as the excess and a tenth more, at
        // most half, once per round (space freed inside pages is reused before the file
        // grows, so the next round sees whether it was enough).
        let pages: i64 = query_scalar(
            "SELECT page_count - freelist_count FROM pragma_page_count(), pragma_freelist_count()",
        )
        .fetch_one(pool)
        .await?;
        let page_size: i64 = query_scalar("SELECT page_size FROM pragma_page_size()")
            .fetch_one(pool)
            .await?;
        let used = (pages.max(0) as u64) * (page_size.max(0) as u64);
        if used > retention.max_bytes {
            let share = ((used - retention.max_bytes) as f64 / used as f64 + 0.1).min(0.5);
            let count: i64 =
                query_scalar("SELECT (SELECT COUNT(*) FROM spans) + (SELECT COUNT(*) FROM logs)")
                    .fetch_one(pool)
                    .await?;
            let cut: Option<i64> = query_scalar(
                "SELECT t FROM (SELECT start_ns AS t FROM spans UNION ALL SELECT ts_ns AS t FROM logs) ORDER BY t LIMIT 1 OFFSET $1",
            )
            .bind(((count as f64 * share) as i64).max(1) - 1)
            .fetch_optional(pool)
            .await?;
            if let Some(cut) = cut {
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
        }
        if gone > 0 {
            tracing::info!(records = gone, "telemetry pruned");
            metrics::counter!("tessera_telemetry_spans_pruned_total").increment(gone);
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::super::receive::Row;
    use super::*;

    fn row(n: i64, start_ns: i64) -> Row {
        Row {
            trace_id: format!("{n:032x}"),
            span_id: format!("{n:016x}"),
            parent_id: None,
            service: "order".into(),
            instance: None,
            name: "x".into(),
            kind: 2,
            start_ns,
            end_ns: start_ns + 1,
            error: false,
            status_message: None,
            http_route: None,
            http_status: None,
            attributes: format!("{{\"pad\":\"{}\"}}", "p".repeat(2000)),
        }
    }

    #[tokio::test]
    async fn over_the_size_the_oldest_go_and_by_age_what_is_too_old() {
        let dir = std::env::temp_dir().join(format!("tessera-telemetry-{}", uuid::Uuid::new_v4()));
        let telemetry = Telemetry::open(&dir, Retention::default(), None, None)
            .await
            .unwrap();
        let now = tessera::unix_now_ms() * 1_000_000;
        // 2,000 spans of about 2 kB, a second apart, the oldest first; and one 9 days old.
        let rows: Vec<Row> = (0..2000)
            .map(|n| row(n, now - (2000 - n) * 1_000_000_000))
            .chain([row(9999, now - 9 * 24 * 3600 * 1_000_000_000)])
            .collect();
        telemetry.store(&rows).await.unwrap();
        let count = || async {
            query_scalar::<i64>("SELECT COUNT(*) FROM spans")
                .fetch_one(telemetry.db().pool())
                .await
                .unwrap()
        };
        assert_eq!(count().await, 2001);
        // A week kept, 2 MB at most: the 9-day-old span goes, and the oldest of the rest.
        let retention = Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 2 * 1024 * 1024,
        };
        let gone = telemetry.prune(retention).await.unwrap();
        let left = count().await;
        assert_eq!(gone as i64, 2001 - left);
        assert!(left < 2000, "over the size, some go: {left}");
        assert!(left >= 1000, "at most half in a round: {left}");
        // What is left is the newest.
        let oldest: i64 = query_scalar("SELECT MIN(start_ns) FROM spans")
            .fetch_one(telemetry.db().pool())
            .await
            .unwrap();
        assert_eq!(oldest, rows[(2000 - left) as usize].start_ns);
        let _ = std::fs::remove_dir_all(dir);
    }
}
