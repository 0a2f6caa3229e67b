//! The server backend: PostgreSQL, through tokio-postgres and a deadpool pool.
//!
//! What differs from the embedded backend, and why:
//! - **Statements are prepared once per connection** and cached (`prepare_cached`): the
//!   parse and plan happen on the first use only, and each later run is one round trip.
//! - **Types come from the server.** PostgreSQL types each parameter from the statement, so a
//!   portable [`Value`] is written as whatever the parameter is (an integer as `int2`, `int4`,
//!   `int8`, `bool` or a float; text as `text` or JSON), and a column comes back as the
//!   portable [`ValueRef`] of its type (`value.rs` here).
//! - **Write transactions are `REPEATABLE READ`.** The embedded backend runs one writer at a
//!   time, so a read-then-write transaction (check the stock, then take it) can never
//!   interleave with another. On a server several replicas write at once; each transaction
//!   works on a snapshot, and of two that change the same row (or insert the same key) one
//!   fails with a serialization failure ([`DbError::is_conflict`]: try again). Every
//!   read-then-write of the platform and the shop writes the rows its decision read (the
//!   stock row it checked, the saga it advanced, the next version of an aggregate), so this
//!   keeps the embedded guarantee. `SERIALIZABLE` would also catch decisions on rows only
//!   read, but its predicate locks sit on index pages, and with keys that grow in order
//!   (UUIDv7, identities) every two concurrent transactions touch the same last page: it
//!   failed more than one transaction per checkout, for no decision of ours
//!   (docs/BENCHMARKS.md §3).
//! - **A transaction's `BEGIN` travels with its first statement** (pipelined, one round trip
//!   for both), and a transaction that ran no statement ends without a word to the server:
//!   every round trip is a wake-up of two processes, and a checkout runs about seven
//!   transactions.
//! - **Connections can be lost.** A database that cannot be reached is
//!   [`DbError::Unavailable`] (answered 503 `database_unavailable`), found within the pool's
//!   connect timeout instead of hanging a request.
//!
//! Migrations run under a PostgreSQL advisory lock, so that replicas starting together
//! migrate once (`postgres/migrate.rs`).

mod migrate;
pub(crate) mod replica;
mod url;
mod value;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, SimpleQueryMessage};

pub(crate) use url::{PgUrl, is_postgres, redact};

use crate::{DbError, FromRow, Migration, StoreError, Value};

pub(crate) use replica::Replicas;

/// How long a request waits for a connection of the pool, or for a new one to be made.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// How long a database that could not be reached is not tried again.
const DOWN_FOR: Duration = Duration::from_millis(500);

/// Milliseconds on a clock that only goes forward.
fn epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// The connections to one database.
pub(crate) struct Pool {
    pool: deadpool_postgres::Pool,
    /// The URL without its password, for logs and errors.
    pub(crate) shown: String,
    /// Whether writes record where they reached the log (the database has read replicas, and
    /// reads after a write must wait for it: `crate::session`).
    track: AtomicBool,
    /// Until when (`epoch_ms`) the database counts as unreachable.
    down_until: AtomicU64,
}

impl Pool {
    /// Connects to the database `url` names and migrates it.
    pub(crate) async fn open(url: &PgUrl, migrations: &[Migration]) -> Result<Self, StoreError> {
        let pool = Self::connect(url)?;
        let conn = pool.connection().await?;
        migrate::migrate(conn, migrations).await?;
        Ok(pool)
    }

    /// A pool of connections to `url`, made as they are needed.
    pub(crate) fn connect(url: &PgUrl) -> Result<Self, DbError> {
        let manager = Manager::from_config(
            url.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(url.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_WAIT))
            .create_timeout(Some(CONNECT_WAIT))
            .recycle_timeout(Some(CONNECT_WAIT))
            .build()
            .map_err(|e| DbError::Unsupported(format!("{}: {e}", url.shown)))?;
        Ok(Pool {
            pool,
            shown: url.shown.clone(),
            track: AtomicBool::new(false),
            down_until: AtomicU64::new(0),
        })
    }

    /// From now on, writes record where they reached the log.
    pub(crate) fn track_writes(&self) {
        self.track.store(true, Ordering::Relaxed);
    }

    pub(crate) fn tracks_writes(&self) -> bool {
        self.track.load(Ordering::Relaxed)
    }

    /// Whether a write now should read its position: the pool has replicas and the write
    /// serves a request.
    fn tracks_session(&self) -> bool {
        self.tracks_writes() && crate::session::active()
    }

    /// A connection of the pool.
    ///
    /// A breaker in front: once the database could not be reached, every request for a
    /// connection in the next [`DOWN_FOR`] fails at once with the same error, instead of each
    /// waiting for its own connect attempt to fail; after that, the next request tries again.
    pub(crate) async fn connection(&self) -> Result<Object, DbError> {
        let now = epoch_ms();
        if now < self.down_until.load(Ordering::Relaxed) {
            return Err(DbError::Unavailable(format!(
                "{}: unreachable a moment ago; not tried again yet",
                self.shown
            )));
        }
        let got = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => DbError::from_postgres(e, &self.shown),
            // Every connection busy for that long: the database is slow, not gone.
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => DbError::Busy(CONNECT_WAIT),
            other => DbError::Unavailable(format!("{}: {other}", self.shown)),
        });
        if let Err(e) = &got
            && e.is_unavailable()
        {
            self.down_until
                .store(epoch_ms() + DOWN_FOR.as_millis() as u64, Ordering::Relaxed);
        }
        got
    }

    /// Closes the idle connections.
    pub(crate) fn close(&self) {
        self.pool.close();
    }

    pub(crate) async fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
        let conn = self.connection().await?;
        let changed = execute(&conn, sql, args).await?;
        if changed > 0 && self.tracks_session() {
            record_written(&conn).await;
        }
        Ok(changed)
    }

    pub(crate) async fn rows<T: FromRow>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        limit: usize,
    ) -> Result<Vec<T>, DbError> {
        let conn = self.connection().await?;
        let rows = rows(&conn, sql, args, limit).await?;
        // `INSERT … RETURNING` and the like write too.
        if self.tracks_session() && !is_read(sql) {
            record_written(&conn).await;
        }
        Ok(rows)
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("url", &self.shown).finish()
    }
}

/// Runs a statement that returns no rows on `conn`; the rows it changed.
pub(crate) async fn execute(conn: &Object, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
    let stmt = conn.prepare_cached(sql).await.map_err(DbError::postgres)?;
    let params = value::params(args, stmt.params().len())?;
    conn.execute(&stmt, &params)
        .await
        .map_err(DbError::postgres)
}

/// Runs a query on `conn`; at most `limit` of its rows.
pub(crate) async fn rows<T: FromRow>(
    conn: &Object,
    sql: &str,
    args: &[Value<'_>],
    limit: usize,
) -> Result<Vec<T>, DbError> {
    let stmt = conn.prepare_cached(sql).await.map_err(DbError::postgres)?;
    let params = value::params(args, stmt.params().len())?;
    let rows = conn
        .query(&stmt, &params)
        .await
        .map_err(DbError::postgres)?;
    rows.iter().take(limit).map(T::from_row).collect()
}

/// Runs a transaction's first statement, `first`, with its `BEGIN` sent just before it in the
/// same round trip (tokio-postgres pipelines requests polled together): a transaction
/// costs its statements and its `COMMIT`, not one exchange more. `BEGIN` fails only with
/// the connection, and then the statement cannot run either; `BEGIN`'s error is told.
pub(crate) async fn begin_with<T>(
    conn: &Object,
    first: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    let (begun, done) = tokio::join!(conn.batch_execute(BEGIN), first);
    begun.map_err(DbError::postgres)?;
    done
}

/// How a write transaction starts: on a snapshot (see the module's docs).
const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";

/// Ends a transaction on `conn` with `COMMIT`; with `track` (and a request to hand it to),
/// records where it reached the log, read in the same exchange as the commit.
///
/// A connection lost during `COMMIT` leaves the outcome unknown: that is
/// [`DbError::Ambiguous`], never "unavailable" (which promises nothing was done). Once the
/// commit is through, nothing fails it: a position that cannot be read, or a connection lost
/// before its answer, is not recorded (the commit's own answer is read apart from it).
pub(crate) async fn commit(conn: Object, track: bool) -> Result<(), DbError> {
    let conn = InTransaction(Some(conn));
    let track = track && crate::session::active();
    // One round trip either way: the position is asked in the same message as the commit
    // (a statement after a failed COMMIT does not run).
    let sql = if track { COMMIT_THEN_WRITTEN } else { "COMMIT" };
    let mut answers = match conn.as_ref().simple_query_raw(sql).await {
        Ok(answers) => std::pin::pin!(answers),
        Err(e) => return Err(commit_failed(e)),
    };
    // The first statement's completion is the commit's: an error before it failed the
    // commit (or left it unknown); one after it is the position's, which the commit outlives.
    let mut committed = false;
    let mut lsn = None;
    loop {
        match futures_util::StreamExt::next(&mut answers).await {
            None => break,
            Some(Ok(SimpleQueryMessage::CommandComplete(_))) => committed = true,
            Some(Ok(SimpleQueryMessage::Row(row))) => {
                lsn = row.get(0).and_then(|text| text.parse::<u64>().ok());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) if committed => {
                tracing::warn!(error = %e, "no log position after a commit; a read right after it may come from a replica");
                // The connection may be in any state: closed rather than pooled.
                drop(Object::take(conn.keep()));
                return Ok(());
            }
            Some(Err(e)) => return Err(commit_failed(e)),
        }
    }
    // Back to the pool: the transaction is over.
    drop(conn.keep());
    if track {
        match lsn {
            Some(lsn) => crate::session::wrote(lsn),
            None => tracing::warn!(
                "no log position after a commit; a read right after it may come from a replica"
            ),
        }
    }
    Ok(())
}

/// A `COMMIT` that did not go through: a lost connection leaves its outcome unknown.
fn commit_failed(e: tokio_postgres::Error) -> DbError {
    let e = DbError::postgres(e);
    if e.is_unavailable() {
        DbError::Ambiguous(e.to_string())
    } else {
        e
    }
}

/// `COMMIT`, then where the primary's log ends: at or past that commit.
const COMMIT_THEN_WRITTEN: &str =
    "COMMIT; SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";

/// Records where the primary's log is, after a write on `conn`; best effort (the write is
/// done whatever happens here).
async fn record_written(conn: &Object) {
    match replica::written(conn).await {
        Ok(lsn) => crate::session::wrote(lsn),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the log position after a write; a read right after it may come from a replica")
        }
    }
}

/// A connection inside a transaction: dropped before [`InTransaction::keep`], it is rolled
/// back before it goes back to the pool.
struct InTransaction(Option<Object>);

impl InTransaction {
    fn as_ref(&self) -> &Object {
        self.0.as_ref().expect("held until kept or dropped")
    }

    fn keep(mut self) -> Object {
        self.0.take().expect("held until kept or dropped")
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            abandon(conn);
        }
    }
}

/// Rolls back what `conn` has not committed, off the caller's path (a transaction dropped
/// cannot wait); the connection goes back to the pool once that is done. Without a runtime
/// (a process ending), the connection is closed instead, which rolls back as well.
pub(crate) fn abandon(conn: Object) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                if conn.batch_execute("ROLLBACK").await.is_err() {
                    drop(Object::take(conn));
                }
            });
        }
        Err(_) => drop(Object::take(conn)),
    }
}

/// Whether `sql` only reads (a `SELECT`, or `WITH … SELECT` without a writing clause).
fn is_read(sql: &str) -> bool {
    let start = sql.trim_start();
    let head = |word: &str| {
        start
            .get(..word.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(word))
    };
    if head("SELECT") {
        return true;
    }
    if head("WITH") {
        let upper = sql.to_ascii_uppercase();
        return !["INSERT", "UPDATE", "DELETE"]
            .iter()
            .any(|w| upper.contains(w));
    }
    false
}

/// Whether `e` asks for the transaction to be tried again: a serialization failure or a
/// deadlock. (A duplicate key can be a race too, on a snapshot: the loops that retry a
/// read-then-insert count [`is_unique_violation`] as one where it is.)
pub(crate) fn is_conflict(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Whether `e` is a unique-constraint violation (a duplicate).
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}
