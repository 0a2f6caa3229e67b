//! Read replicas of a PostgreSQL primary: which one may serve a read, and how far each has
//! replayed the primary's log.
//!
//! A watcher asks each replica how far it has replayed every [`WATCH_EVERY`] while reads
//! are asking for replicas, and every [`WATCH_IDLE`] otherwise; and the primary where its
//! log ends (for the lag) every [`WATCH_IDLE`]: the primary is the busy server, and a
//! position read for every replica of every service each tenth of a second was a tenth of
//! its statements under load (docs/BENCHMARKS.md). A replica serves a read only when it answered the last time, is no
//! more than [`MAX_LAG_BYTES`] behind, and has replayed past what the request must see
//! ([`crate::session`]); otherwise the read goes to the primary. A replica that fails a read
//! is left out until the watcher hears from it again, so one that is down or far behind costs
//! reads nothing and comes back by itself. Its lag is a metric
//! (`tessera_db_replica_lag_bytes`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{PgUrl, Pool};
use crate::DbError;

/// How often the replicas' positions are read while reads want a replica.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// How often they are read when none does, and the primary's (for the lag) at any rate.
const WATCH_IDLE: Duration = Duration::from_secs(1);
/// How far behind the primary a replica may be and still serve reads.
const MAX_LAG_BYTES: u64 = 16 << 20;

/// Where a server's log is, in bytes from its start: the end of what it has written (a
/// primary), or of what it has replayed (a replica; NULL on a primary).
const WRITTEN: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";
const REPLAYED: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

/// One read replica.
pub(crate) struct Replica {
    pub(crate) pool: Pool,
    /// Answered the watcher last time, and was not too far behind.
    usable: AtomicBool,
    /// How far it had replayed when last asked.
    replayed: AtomicU64,
}

/// The read replicas of one database.
pub(crate) struct Replicas {
    list: Vec<Replica>,
    /// Where the primary's log was once this service had migrated its schema: a replica that
    /// has not replayed that far may not even have the tables, and serves nothing yet.
    floor: u64,
    /// Round robin among the usable ones.
    next: AtomicUsize,
    /// A read asked for a replica since the watcher last looked.
    wanted: AtomicBool,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|r| &r.pool.shown))
            .finish()
    }
}

impl Replicas {
    /// Connects to `urls` (lazily: a replica down now is left out until it answers) and
    /// starts watching them against `primary`.
    pub(crate) async fn open(urls: &[PgUrl], primary: Arc<Pool>) -> Result<Arc<Self>, DbError> {
        let floor = written(&primary.connection().await?).await?;
        let list = urls
            .iter()
            .map(|url| {
                Ok(Replica {
                    pool: Pool::connect(url)?,
                    usable: AtomicBool::new(false),
                    replayed: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        let replicas = Arc::new(Replicas {
            list,
            floor,
            next: AtomicUsize::new(0),
            wanted: AtomicBool::new(false),
        });
        tokio::spawn(watch(Arc::downgrade(&replicas), primary));
        Ok(replicas)
    }

    /// A replica that may serve a read that must see the log up to `read_after`.
    pub(crate) fn pick(&self, read_after: u64) -> Option<&Replica> {
        if !self.wanted.load(Ordering::Relaxed) {
            self.wanted.store(true, Ordering::Relaxed);
        }
        let read_after = read_after.max(self.floor);
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &self.list[(start + i) % n]).find(|r| {
            r.usable.load(Ordering::Relaxed) && r.replayed.load(Ordering::Relaxed) >= read_after
        })
    }
}

impl Replica {
    /// Leaves this replica out until the watcher hears from it again.
    pub(crate) fn failed(&self, e: &DbError) {
        // Until it answers again, nothing is known of how far it is.
        self.replayed.store(0, Ordering::Relaxed);
        if self.usable.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "read replica failed; reading from the primary");
        }
    }
}

/// Reads the primary's and each replica's position until the replicas are dropped.
async fn watch(replicas: Weak<Replicas>, primary: Arc<Pool>) {
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_ticks = (WATCH_IDLE.as_millis() / WATCH_EVERY.as_millis()) as u64;
    let mut written = None;
    for tick in 0u64.. {
        ticks.tick().await;
        let Some(replicas) = replicas.upgrade() else {
            return;
        };
        let due = tick % idle_ticks == 0;
        if !due && !replicas.wanted.swap(false, Ordering::Relaxed) {
            continue;
        }
        if due {
            // A primary that does not answer now keeps the last position it gave: a lag
            // measured against nothing would let any replica serve.
            if let Ok(Some(now)) = position(&primary, WRITTEN).await {
                written = Some(now);
            }
        }
        for replica in &replicas.list {
            let shown = replica.pool.shown.as_str();
            match position(&replica.pool, REPLAYED).await {
                Ok(Some(replayed)) => {
                    // As it is now: a replica restarted from an older copy is behind what
                    // it said before.
                    replica.replayed.store(replayed, Ordering::Relaxed);
                    let lag = written.map_or(0, |w| w.saturating_sub(replayed));
                    metrics::gauge!("tessera_db_replica_lag_bytes", "replica" => shown.to_string())
                        .set(lag as f64);
                    let usable = lag <= MAX_LAG_BYTES;
                    if replica.usable.swap(usable, Ordering::Relaxed) != usable {
                        if usable {
                            tracing::info!(replica = shown, lag, "read replica serving reads");
                        } else {
                            tracing::warn!(
                                replica = shown,
                                lag,
                                "read replica too far behind; reading from the primary"
                            );
                        }
                    }
                }
                Ok(None) => {
                    if replica.usable.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            replica = shown,
                            "not a replica (it replays no log); not reading from it"
                        );
                    }
                }
                Err(e) => replica.failed(&e),
            }
        }
    }
}

/// A server's position in its log, by `sql` (one of [`WRITTEN`], [`REPLAYED`]).
async fn position(pool: &Pool, sql: &str) -> Result<Option<u64>, DbError> {
    let conn = pool.connection().await?;
    let stmt = conn.prepare_cached(sql).await.map_err(DbError::postgres)?;
    let row = conn
        .query_one(&stmt, &[])
        .await
        .map_err(DbError::postgres)?;
    let lsn: Option<i64> = row.try_get(0).map_err(DbError::postgres)?;
    Ok(lsn.map(|l| l as u64))
}

/// Where the primary's log ends now, read on `conn` right after a commit on it: at or past
/// that commit.
pub(crate) async fn written(conn: &deadpool_postgres::Object) -> Result<u64, DbError> {
    let stmt = conn
        .prepare_cached(WRITTEN)
        .await
        .map_err(DbError::postgres)?;
    let row = conn
        .query_one(&stmt, &[])
        .await
        .map_err(DbError::postgres)?;
    let lsn: i64 = row.try_get(0).map_err(DbError::postgres)?;
    Ok(lsn as u64)
}
