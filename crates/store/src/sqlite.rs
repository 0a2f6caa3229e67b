//! The embedded backend: a SQLite file per service, in WAL mode, shared by the service's
//! replicas on one machine as they would share a server database.
//!
//! Statements run on the calling task. A statement on a local SQLite file in WAL mode takes microseconds, less than handing it to
//! another thread and back (which is what a general-purpose async driver does, twice per
//! statement). So statements run right where they are awaited, and nothing here ever blocks
//! for long:
//! - Writers never wait inside SQLite. One write transaction at a time per process is queued on
//!   an async lock; a writer in another process (a replica) makes `BEGIN IMMEDIATE` fail at
//!   once with `SQLITE_BUSY`, and it is retried after an async pause (for up to 10 s).
//! - Commits do not sync (`synchronous=NORMAL`, the WAL is synced at checkpoints: a commit
//!   survives a crash of the process, and a power loss takes the last ones with it, the state
//!   change and its outbox events together), unless the URL asks for `synchronous=full` (each
//!   commit syncs the WAL before it returns: what the event log needs to acknowledge only what
//!   is on disk); and
//!   checkpoints run on a blocking thread (once a second after a write) instead of inside
//!   whichever commit crosses SQLite's threshold. A checkpoint racing a steady stream of
//!   commits never quite catches up, and the WAL would grow without bound under load; so when
//!   the WAL holds more than 32 MiB, the checkpoint runs once more at once (copying only what
//!   was committed during the first pass), then once holding this process's writers off until
//!   it is done, and the next commit starts the WAL over. The pass in between keeps that last
//!   one, and the writers' stall, short: it has little to copy and little to sync.
//!   Checkpoints are few on purpose: each syncs the disk twice, and on a busy disk a sync can
//!   take a hundred milliseconds.
//!
//! Migrations run at start-up, before the service reports ready, under an exclusive file lock
//! so that two replicas starting at once do not race (`sqlite/migrate.rs`).

mod checkpoint;
mod migrate;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef as SqliteValue};
use rusqlite::{ErrorCode, OpenFlags};

use crate::{DbError, FromRow, Migration, Row, StoreError, Value, ValueRef};

/// How long a statement or transaction waits for another process's writer.
const BUSY_WAIT: Duration = Duration::from_secs(10);
/// Idle connections kept per database.
const IDLE: usize = 8;
/// Prepared statements cached per connection.
const STATEMENTS: usize = 64;
/// How often the WAL is checkpointed, when something was written.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// WAL frames (pages) beyond which a checkpoint holds the writers off to finish.
pub(crate) const WAL_FRAMES_HELD: i64 = 8192; // 32 MiB of 4 KiB pages
/// Checkpoint passes, the second right after the first, before the one that holds writers
/// off (when the WAL is long).
const UNHELD_PASSES: u32 = 2;

/// The connections of one database file.
pub(crate) struct Pool {
    path: PathBuf,
    sync: Synchronous,
    idle: Mutex<Vec<rusqlite::Connection>>,
    /// One write transaction at a time in this process.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Commits since the last checkpoint.
    written: AtomicU64,
}

/// A write transaction's hold on its pool: the writer lock, until it ends.
pub(crate) struct TxHold {
    pool: Arc<Pool>,
    _writer: tokio::sync::OwnedMutexGuard<()>,
}

impl Pool {
    /// Opens (creating if needed) and migrates the database file at `path`, and starts its
    /// checkpoints.
    pub(crate) async fn open(
        path: PathBuf,
        sync: Synchronous,
        migrations: &[Migration],
        checkpoint_every: Duration,
        wal_frames_held: i64,
    ) -> Result<Arc<Self>, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        }
        let migrations = migrations.to_vec();
        let at = path.clone();
        tokio::task::spawn_blocking(move || migrate::migrate(&at, &migrations))
            .await
            .expect("migrations do not panic")?;
        let pool = Arc::new(Pool {
            idle: Mutex::new(vec![open_connection(&path, sync)?]),
            path,
            sync,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            written: AtomicU64::new(0),
        });
        tokio::spawn(checkpoint::checkpoints(
            Arc::downgrade(&pool),
            checkpoint_every,
            wal_frames_held,
        ));
        Ok(pool)
    }

    /// A write transaction: this process's writer lock, then the file's (`BEGIN IMMEDIATE`),
    /// so that a read-then-write transaction never fails to upgrade.
    pub(crate) async fn begin(self: &Arc<Self>) -> Result<(rusqlite::Connection, TxHold), DbError> {
        let deadline = Instant::now() + BUSY_WAIT;
        // Bounded: a task that already holds a transaction and asks for another (or writes
        // through the pool) would otherwise wait for itself forever.
        let writer = tokio::time::timeout_at(deadline.into(), self.writer.clone().lock_owned())
            .await
            .map_err(|_| DbError::Busy(BUSY_WAIT))?;
        let conn = self.checkout()?;
        let mut pause = Duration::from_millis(1);
        loop {
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => break,
                Err(e) => {
                    let e = DbError::from(e);
                    if !e.is_busy() {
                        self.checkin(conn);
                        return Err(e);
                    }
                    if Instant::now() >= deadline {
                        self.checkin(conn);
                        return Err(DbError::Busy(BUSY_WAIT));
                    }
                    tracing::debug!(?pause, "database busy; BEGIN retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
        Ok((
            conn,
            TxHold {
                pool: self.clone(),
                _writer: writer,
            },
        ))
    }

    /// Checkpoints the WAL into the database file and closes the idle connections.
    pub(crate) async fn close(self: &Arc<Self>) {
        let pool = self.clone();
        let idle = std::mem::take(&mut *pool.idle.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            drop(idle);
            if let Ok(conn) = open_connection(&pool.path, pool.sync) {
                let _ = conn.busy_timeout(Duration::from_secs(1));
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            }
        })
        .await;
    }

    /// Runs a statement that returns no rows in its own transaction; the rows it changed.
    pub(crate) async fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
        self.run(sql, args, |stmt| Ok(stmt.raw_execute()? as u64))
            .await
    }

    /// Runs a query in its own transaction; at most `limit` of its rows.
    pub(crate) async fn rows<T: FromRow>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        limit: usize,
    ) -> Result<Vec<T>, DbError> {
        self.run(sql, args, |stmt| read_rows(stmt, limit)).await
    }

    pub(crate) fn checkout(&self) -> Result<rusqlite::Connection, DbError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, self.sync),
        }
    }

    /// Counts a commit, for the checkpoint task.
    fn wrote(&self) {
        self.written.fetch_add(1, Ordering::Relaxed);
    }

    fn checkin(&self, conn: rusqlite::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE {
            idle.push(conn);
        }
    }

    /// Runs one statement in its own transaction: writes take the process's writer lock, and
    /// a database locked by another process is retried after a pause.
    async fn run<R>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: impl Fn(&mut rusqlite::Statement<'_>) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        let deadline = Instant::now() + BUSY_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let conn = self.checkout()?;
            let writes = conn.prepare_cached(sql).map(|stmt| !stmt.readonly());
            let writes = match writes {
                Ok(w) => w,
                Err(e) => {
                    self.checkin(conn);
                    return Err(e.into());
                }
            };
            let writer = if writes {
                let lock = tokio::time::timeout_at(deadline.into(), self.writer.lock()).await;
                match lock {
                    Ok(guard) => Some(guard),
                    Err(_) => {
                        self.checkin(conn);
                        return Err(DbError::Busy(BUSY_WAIT));
                    }
                }
            } else {
                None
            };
            let result = run(&conn, sql, args, &f);
            self.checkin(conn);
            drop(writer);
            match result {
                Err(e) if e.is_busy() => {
                    if Instant::now() >= deadline {
                        return Err(DbError::Busy(BUSY_WAIT));
                    }
                    tracing::debug!(?pause, %e, "database busy; statement retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(r) => {
                    if writes {
                        self.wrote();
                    }
                    return Ok(r);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("path", &self.path).finish()
    }
}

impl TxHold {
    /// Commits the transaction on `conn`, and gives the connection back.
    pub(crate) fn commit(self, conn: rusqlite::Connection) -> Result<(), DbError> {
        let done = conn.execute_batch("COMMIT");
        if done.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.pool.checkin(conn);
        self.pool.wrote();
        done.map_err(Into::into)
    }

    /// Rolls back what `conn` has not committed, and gives the connection back.
    pub(crate) fn abandon(self, conn: rusqlite::Connection) {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.pool.checkin(conn);
    }
}

/// Runs a statement that returns no rows on a transaction's connection.
pub(crate) fn execute(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Value<'_>],
) -> Result<u64, DbError> {
    run(conn, sql, args, &|stmt| Ok(stmt.raw_execute()? as u64))
}

/// Runs a query on a transaction's connection; at most `limit` of its rows.
pub(crate) fn rows<T: FromRow>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Value<'_>],
    limit: usize,
) -> Result<Vec<T>, DbError> {
    run(conn, sql, args, &|stmt| read_rows(stmt, limit))
}

fn read_rows<T: FromRow>(
    stmt: &mut rusqlite::Statement<'_>,
    limit: usize,
) -> Result<Vec<T>, DbError> {
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while out.len() < limit {
        match rows.next()? {
            Some(row) => out.push(T::from_row(row)?),
            None => break,
        }
    }
    Ok(out)
}

impl Row for rusqlite::Row<'_> {
    fn value(&self, index: usize) -> Result<ValueRef<'_>, DbError> {
        Ok(match self.get_ref(index)? {
            SqliteValue::Null => ValueRef::Null,
            SqliteValue::Integer(i) => ValueRef::Int(i),
            SqliteValue::Real(r) => ValueRef::Real(r),
            SqliteValue::Text(t) => ValueRef::Text(t),
            SqliteValue::Blob(b) => ValueRef::Blob(b),
        })
    }
}

fn run<R>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Value<'_>],
    f: &impl Fn(&mut rusqlite::Statement<'_>) -> Result<R, DbError>,
) -> Result<R, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    bind(&mut stmt, args)?;
    f(&mut stmt)
}

/// Binds `$n` (or `?n`, or a bare `?` by position) to `args[n - 1]`.
fn bind(stmt: &mut rusqlite::Statement<'_>, args: &[Value<'_>]) -> Result<(), DbError> {
    let count = stmt.parameter_count();
    for index in 1..=count {
        let n = match stmt.parameter_name(index) {
            None => index,
            Some(name) => name
                .strip_prefix(['$', '?'])
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    DbError::Bind(format!("parameter {name} is not of the form $1, $2, …"))
                })?,
        };
        let value = n
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .ok_or_else(|| DbError::Bind(format!("${n} is not bound ({} given)", args.len())))?;
        stmt.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => SqliteValue::Null,
            Value::Int(i) => SqliteValue::Integer(*i),
            Value::Real(r) => SqliteValue::Real(*r),
            Value::Text(t) => SqliteValue::Text(t.as_bytes()),
            Value::Blob(b) => SqliteValue::Blob(b),
        }))
    }
}

/// Whether waiting may help: the database is locked by another writer.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Whether `e` is a unique-constraint violation (a duplicate).
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(e, _) => matches!(
            e.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        ),
        _ => false,
    }
}

/// When a commit returns: `Normal` once it is in the WAL (synced at checkpoints), `Full` once
/// the WAL is synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Synchronous {
    Normal,
    Full,
}

/// The `synchronous` a URL asks for (`?synchronous=full`), `Normal` by default.
pub(crate) fn synchronous(url: &str) -> Result<Synchronous, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("synchronous=") {
            return match value.to_ascii_lowercase().as_str() {
                "normal" => Ok(Synchronous::Normal),
                "full" => Ok(Synchronous::Full),
                other => Err(format!("synchronous={other}: normal or full")),
            };
        }
    }
    Ok(Synchronous::Normal)
}

pub(crate) fn open_connection(
    path: &Path,
    sync: Synchronous,
) -> Result<rusqlite::Connection, DbError> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A connection opened while another process recovers the WAL index waits (briefly) for it.
    conn.busy_timeout(Duration::from_secs(1))?;
    conn.execute_batch(match sync {
        Synchronous::Normal => "PRAGMA synchronous=NORMAL",
        Synchronous::Full => "PRAGMA synchronous=FULL",
    })?;
    conn.execute_batch(
        "PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;",
    )?;
    // From then on, never wait inside SQLite (the caller waits asynchronously); never
    // checkpoint inside a commit (the checkpoint task does).
    conn.busy_timeout(Duration::ZERO)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

/// The file a `sqlite://` URL names (`None` for any other URL, or an in-memory one).
pub(crate) fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}
