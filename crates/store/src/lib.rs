//! Each service's own database: the embedded engine (SQLite) and the query API services use.
//!
//! Services talk to a [`Db`]. They write SQL with `$1`-style parameters and the portable types
//! (`i64`, `f64`, `String`, `bool`, `Vec<u8>`, and `Option`s of them), through [`query`],
//! [`query_as`] and [`query_scalar`], against the pool (`db.pool()`, one statement in its own
//! transaction) or a transaction (`db.write_tx()`). The embedded default is a SQLite file
//! under the data dir, in WAL mode; replicas of a service share it, as they would share a
//! server database.
//!
//! ## Why statements run on the calling task
//! A statement on a local SQLite file in WAL mode takes microseconds, less than handing it to
//! another thread and back (which is what a general-purpose async driver does, twice per
//! statement). So statements run right where they are awaited, and nothing here ever blocks
//! for long:
//! - Writers never wait inside SQLite. One write transaction at a time per process is queued on
//!   an async lock; a writer in another process (a replica) makes `BEGIN IMMEDIATE` fail at
//!   once with `SQLITE_BUSY`, and it is retried after an async pause (for up to 10 s).
//! - Commits do not sync (`synchronous=NORMAL`, the WAL is synced at checkpoints), and
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
//! so that two replicas starting at once do not race.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::types::{FromSql, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, OpenFlags};

/// How long a statement or transaction waits for another process's writer.
const BUSY_WAIT: Duration = Duration::from_secs(10);
/// Idle connections kept per database.
const IDLE: usize = 8;
/// Prepared statements cached per connection.
const STATEMENTS: usize = 64;
/// How often the WAL is checkpointed, when something was written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// WAL frames (pages) beyond which a checkpoint holds the writers off to finish.
const WAL_FRAMES_HELD: i64 = 8192; // 32 MiB of 4 KiB pages
/// Checkpoint passes, the second right after the first, before the one that holds writers
/// off (when the WAL is long).
const UNHELD_PASSES: u32 = 2;

/// A service's database handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Arc<Pool>,
}

/// The connections of one database. Statements run on it directly are each their own
/// transaction.
pub struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
    /// One write transaction at a time in this process.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Commits since the last checkpoint.
    written: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("path", &self.path).finish()
    }
}

/// One schema migration, in the dialect of each backend it supports.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {0:?} is not supported (expected sqlite://<file>)")]
    UnsupportedUrl(String),
    #[error("cannot prepare {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("database error: {0}")]
    Db(#[from] DbError),
    #[error("migration {version} ({description}) failed: {error}")]
    Migrate {
        version: i64,
        description: &'static str,
        error: DbError,
    },
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database stayed locked by another process for {0:?}")]
    Busy(Duration),
    #[error("the query returned no rows")]
    RowNotFound,
    #[error("cannot bind parameters: {0}")]
    Bind(String),
    #[error("cannot encode a value: {0}")]
    Encode(String),
    #[error("cannot decode a value: {0}")]
    Decode(String),
}

impl DbError {
    /// A value that could not be turned into what a column holds (bad JSON, say).
    pub fn encode(e: impl std::fmt::Display) -> Self {
        Self::Encode(e.to_string())
    }

    /// A column that could not be read as what the code expects.
    pub fn decode(e: impl std::fmt::Display) -> Self {
        Self::Decode(e.to_string())
    }

    /// Whether waiting may help: the database is locked by another writer.
    pub fn is_busy(&self) -> bool {
        match self {
            DbError::Busy(_) => true,
            DbError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

/// Whether `err` is a unique-constraint violation (a duplicate).
pub fn is_unique_violation(err: &DbError) -> bool {
    match err {
        DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
            e.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        ),
        _ => false,
    }
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str, migrations: &[Migration]) -> Result<Self, StoreError> {
        Self::open_with(url, migrations, CHECKPOINT_EVERY, WAL_FRAMES_HELD).await
    }

    async fn open_with(
        url: &str,
        migrations: &[Migration],
        checkpoint_every: Duration,
        wal_frames_held: i64,
    ) -> Result<Self, StoreError> {
        let path = sqlite_file(url).ok_or_else(|| StoreError::UnsupportedUrl(url.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        }
        let migrations = migrations.to_vec();
        let at = path.clone();
        tokio::task::spawn_blocking(move || migrate(&at, &migrations))
            .await
            .expect("migrations do not panic")?;
        let pool = Arc::new(Pool {
            idle: Mutex::new(vec![open_connection(&path)?]),
            path,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            written: AtomicU64::new(0),
        });
        tokio::spawn(checkpoints(
            Arc::downgrade(&pool),
            checkpoint_every,
            wal_frames_held,
        ));
        Ok(Db { pool })
    }

    /// The default embedded database of `service`.
    pub fn default_url(data_dir: &Path, service: &str) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join(format!("{service}.db")).display()
        )
    }

    /// The pool: each statement run on it is its own transaction.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A transaction that will write. It takes this process's writer lock, then the file's
    /// (`BEGIN IMMEDIATE`), so a read-then-write transaction never fails to upgrade. Dropped
    /// without [`Tx::commit`], it rolls back.
    pub async fn write_tx(&self) -> Result<Tx, DbError> {
        let deadline = Instant::now() + BUSY_WAIT;
        // Bounded: a task that already holds a transaction and asks for another (or writes
        // through the pool) would otherwise wait for itself forever.
        let writer =
            tokio::time::timeout_at(deadline.into(), self.pool.writer.clone().lock_owned())
                .await
                .map_err(|_| DbError::Busy(BUSY_WAIT))?;
        let conn = self.pool.checkout()?;
        let mut pause = Duration::from_millis(1);
        loop {
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => break,
                Err(e) => {
                    let e = DbError::from(e);
                    if !e.is_busy() {
                        self.pool.checkin(conn);
                        return Err(e);
                    }
                    if Instant::now() >= deadline {
                        self.pool.checkin(conn);
                        return Err(DbError::Busy(BUSY_WAIT));
                    }
                    tracing::debug!(?pause, "database busy; BEGIN retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
        Ok(Tx {
            conn: Some(Conn { raw: conn }),
            pool: self.pool.clone(),
            _writer: writer,
        })
    }

    /// Checkpoints the WAL into the database file and closes the idle connections.
    pub async fn close(&self) {
        let pool = self.pool.clone();
        let idle = std::mem::take(&mut *pool.idle.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            drop(idle);
            if let Ok(conn) = open_connection(&pool.path) {
                let _ = conn.busy_timeout(Duration::from_secs(1));
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            }
        })
        .await;
    }
}

impl Pool {
    fn checkout(&self) -> Result<rusqlite::Connection, DbError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path),
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

/// A write transaction. Statements run on it with `&mut *tx` (or `&mut **tx` through a
/// `&mut Tx`).
pub struct Tx {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    _writer: tokio::sync::OwnedMutexGuard<()>,
}

/// The connection a transaction runs on.
pub struct Conn {
    raw: rusqlite::Connection,
}

impl Tx {
    /// Makes the transaction's writes durable (in the WAL) and visible.
    pub async fn commit(mut self) -> Result<(), DbError> {
        let conn = self.conn.take().expect("a transaction has its connection");
        let done = conn.raw.execute_batch("COMMIT");
        if done.is_err() {
            let _ = conn.raw.execute_batch("ROLLBACK");
        }
        self.pool.checkin(conn.raw);
        self.pool.wrote();
        done.map_err(Into::into)
    }

    /// Undoes the transaction's writes (as dropping it does).
    pub async fn rollback(self) -> Result<(), DbError> {
        drop(self);
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.raw.is_autocommit() {
                let _ = conn.raw.execute_batch("ROLLBACK");
            }
            self.pool.checkin(conn.raw);
        }
    }
}

impl Deref for Tx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a transaction has its connection")
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a transaction has its connection")
    }
}

/// Where a statement runs: the pool or a transaction's connection.
pub trait Executor<'c>: Send {
    #[doc(hidden)]
    fn target(self) -> Target<'c>;
}

#[doc(hidden)]
pub enum Target<'c> {
    Pool(&'c Pool),
    Conn(&'c mut Conn),
}

impl<'c> Executor<'c> for &'c Pool {
    fn target(self) -> Target<'c> {
        Target::Pool(self)
    }
}

impl<'c> Executor<'c> for &'c mut Conn {
    fn target(self) -> Target<'c> {
        Target::Conn(self)
    }
}

impl Target<'_> {
    async fn run<R>(
        self,
        sql: &str,
        args: &[Value<'_>],
        f: impl Fn(&mut rusqlite::Statement<'_>) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        match self {
            Target::Conn(conn) => run(&conn.raw, sql, args, &f),
            Target::Pool(pool) => pool.run(sql, args, f).await,
        }
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

/// A value bound to a parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(Cow<'a, [u8]>),
}

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// What can be bound to a parameter.
pub trait Encode<'a> {
    fn encode(self) -> Value<'a>;
}

macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl<'a> Encode<'a> for $t {
            fn encode(self) -> Value<'a> {
                Value::Int(self as i64)
            }
        }
        impl<'a> Encode<'a> for &$t {
            fn encode(self) -> Value<'a> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
encode_int!(i64, i32, i16, i8, u32, u16, u8);

impl<'a> Encode<'a> for bool {
    fn encode(self) -> Value<'a> {
        Value::Int(self as i64)
    }
}

impl<'a> Encode<'a> for f64 {
    fn encode(self) -> Value<'a> {
        Value::Real(self)
    }
}

impl<'a> Encode<'a> for String {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Owned(self))
    }
}

impl<'a> Encode<'a> for &'a String {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for &'a str {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for &&'a str {
    fn encode(self) -> Value<'a> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for Vec<u8> {
    fn encode(self) -> Value<'a> {
        Value::Blob(Cow::Owned(self))
    }
}

impl<'a> Encode<'a> for &'a [u8] {
    fn encode(self) -> Value<'a> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl<'a> Encode<'a> for &'a Vec<u8> {
    fn encode(self) -> Value<'a> {
        Value::Blob(Cow::Borrowed(self))
    }
}

impl<'a, T: Encode<'a>> Encode<'a> for Option<T> {
    fn encode(self) -> Value<'a> {
        self.map_or(Value::Null, Encode::encode)
    }
}

impl<'a> Encode<'a> for &'a Option<String> {
    fn encode(self) -> Value<'a> {
        self.as_deref().map_or(Value::Null, Encode::encode)
    }
}

/// A row read as a tuple of columns.
pub trait FromRow: Sized {
    #[doc(hidden)]
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

macro_rules! tuple_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: FromSql),+> FromRow for ($($t,)+) {
            fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get::<_, $t>($i)?,)+))
            }
        }
    };
}
tuple_row!(A 0);
tuple_row!(A 0, B 1);
tuple_row!(A 0, B 1, C 2);
tuple_row!(A 0, B 1, C 2, D 3);
tuple_row!(A 0, B 1, C 2, D 3, E 4);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

/// A statement whose rows are not read: `execute` it.
pub fn query(sql: &str) -> Query<'_> {
    Query {
        sql,
        args: Vec::new(),
    }
}

/// A statement whose rows are read as tuples `T`.
pub fn query_as<T: FromRow>(sql: &str) -> QueryAs<'_, T> {
    QueryAs {
        query: query(sql),
        row: PhantomData,
    }
}

/// A statement whose rows are read as their first column `T`.
pub fn query_scalar<T: FromSql>(sql: &str) -> QueryScalar<'_, T> {
    QueryScalar {
        query: query(sql),
        row: PhantomData,
    }
}

#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query<'q> {
    sql: &'q str,
    args: Vec<Value<'q>>,
}

/// What a statement that is not a query did.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    rows_affected: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

impl<'q> Query<'q> {
    /// Binds the next parameter (`$1`, then `$2`, …).
    pub fn bind(mut self, value: impl Encode<'q>) -> Self {
        self.args.push(value.encode());
        self
    }

    pub async fn execute<'c>(self, on: impl Executor<'c>) -> Result<Done, DbError> {
        on.target()
            .run(self.sql, &self.args, |stmt| {
                Ok(Done {
                    rows_affected: stmt.raw_execute()? as u64,
                })
            })
            .await
    }

    async fn rows<'c, T>(
        self,
        on: impl Executor<'c>,
        limit: usize,
        read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbError> {
        on.target()
            .run(self.sql, &self.args, |stmt| {
                let mut rows = stmt.raw_query();
                let mut out = Vec::new();
                while out.len() < limit {
                    match rows.next()? {
                        Some(row) => out.push(read(row)?),
                        None => break,
                    }
                }
                Ok(out)
            })
            .await
    }
}

#[must_use = "a query does nothing until it is fetched"]
pub struct QueryAs<'q, T> {
    query: Query<'q>,
    row: PhantomData<fn() -> T>,
}

impl<'q, T: FromRow> QueryAs<'q, T> {
    pub fn bind(mut self, value: impl Encode<'q>) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub async fn fetch_all<'c>(self, on: impl Executor<'c>) -> Result<Vec<T>, DbError> {
        self.query.rows(on, usize::MAX, T::from_row).await
    }

    pub async fn fetch_optional<'c>(self, on: impl Executor<'c>) -> Result<Option<T>, DbError> {
        Ok(self.query.rows(on, 1, T::from_row).await?.pop())
    }

    pub async fn fetch_one<'c>(self, on: impl Executor<'c>) -> Result<T, DbError> {
        self.fetch_optional(on).await?.ok_or(DbError::RowNotFound)
    }
}

#[must_use = "a query does nothing until it is fetched"]
pub struct QueryScalar<'q, T> {
    query: Query<'q>,
    row: PhantomData<fn() -> T>,
}

impl<'q, T: FromSql> QueryScalar<'q, T> {
    pub fn bind(mut self, value: impl Encode<'q>) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub async fn fetch_all<'c>(self, on: impl Executor<'c>) -> Result<Vec<T>, DbError> {
        self.query.rows(on, usize::MAX, |row| row.get(0)).await
    }

    pub async fn fetch_optional<'c>(self, on: impl Executor<'c>) -> Result<Option<T>, DbError> {
        Ok(self.query.rows(on, 1, |row| row.get(0)).await?.pop())
    }

    pub async fn fetch_one<'c>(self, on: impl Executor<'c>) -> Result<T, DbError> {
        self.fetch_optional(on).await?.ok_or(DbError::RowNotFound)
    }
}

fn open_connection(path: &Path) -> Result<rusqlite::Connection, DbError> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A connection opened while another process recovers the WAL index waits (briefly) for it.
    conn.busy_timeout(Duration::from_secs(1))?;
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=0;
         PRAGMA journal_size_limit=67108864;",
    )?;
    // From then on, never wait inside SQLite (the caller waits asynchronously); never
    // checkpoint inside a commit (the checkpoint task does).
    conn.busy_timeout(Duration::ZERO)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

/// Checkpoints the WAL on a blocking thread when something was written, until the pool is
/// gone; when the WAL has grown long, once more while holding this process's writers off.
async fn checkpoints(pool: Weak<Pool>, every: Duration, frames_held: i64) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<rusqlite::Connection> = None;
    loop {
        tick.tick().await;
        let Some(p) = pool.upgrade() else { return };
        if p.written.swap(0, Ordering::Relaxed) == 0 {
            continue;
        }
        let (path, writer) = (p.path.clone(), p.writer.clone());
        drop(p);
        let mut held = None;
        let mut unheld = 0;
        loop {
            let (c, path) = (conn.take(), path.clone());
            let held_now = held.take();
            let last = held_now.is_some();
            let done = tokio::task::spawn_blocking(move || {
                let held = held_now.is_some();
                let _writers = held_now;
                let started = Instant::now();
                let c = match c {
                    Some(c) => c,
                    None => {
                        let c = open_connection(&path).ok()?;
                        c.busy_timeout(Duration::from_secs(1)).ok()?;
                        c
                    }
                };
                // PASSIVE: never waits for readers (or another process's writer). Its answer
                // is (busy, frames in the WAL, frames copied).
                let frames = c
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                    .inspect_err(|e| tracing::warn!(error = %e, "WAL checkpoint failed"))
                    .unwrap_or(0);
                tracing::debug!(
                    held,
                    frames,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "WAL checkpoint"
                );
                Some((c, frames))
            })
            .await
            .ok()
            .flatten();
            let Some((c, frames)) = done else { break };
            conn = Some(c);
            if frames <= frames_held || last {
                break;
            }
            // The WAL is long: finish it, so that the next commit starts it over. Passes
            // right after one another copy less each time (only what was committed during
            // the one before) and leave less to sync; the last holds the writers off, so
            // that nothing is committed while it runs, and is short.
            unheld += 1;
            if unheld >= UNHELD_PASSES {
                held = Some(writer.clone().lock_owned().await);
            }
        }
    }
}

/// Applies what `migrations` has that the database has not, each in its own transaction.
fn migrate(path: &Path, migrations: &[Migration]) -> Result<(), StoreError> {
    let _lock = lock_file(path.with_extension("migrate.lock"))?;
    let conn = rusqlite::Connection::open(path).map_err(DbError::from)?;
    conn.busy_timeout(BUSY_WAIT).map_err(DbError::from)?;
    // WAL lets readers and the one writer proceed together, across processes; it persists
    // in the file.
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .map_err(DbError::from)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tessera_migrations (
             version INTEGER PRIMARY KEY,
             description TEXT NOT NULL,
             installed INTEGER NOT NULL
         )",
    )
    .map_err(DbError::from)?;
    // Databases created by earlier versions recorded their migrations in sqlx's table.
    let earlier: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
            [],
            |r| r.get(0),
        )
        .map_err(DbError::from)?;
    if earlier {
        conn.execute_batch(
            "INSERT OR IGNORE INTO tessera_migrations (version, description, installed)
             SELECT version, description, 0 FROM _sqlx_migrations WHERE success",
        )
        .map_err(DbError::from)?;
    }
    for m in migrations {
        let applied: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM tessera_migrations WHERE version = ?1)",
                [m.version],
                |r| r.get(0),
            )
            .map_err(DbError::from)?;
        if applied {
            continue;
        }
        let failed = |e: rusqlite::Error| StoreError::Migrate {
            version: m.version,
            description: m.description,
            error: e.into(),
        };
        conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
        let done = conn.execute_batch(m.sqlite).and_then(|()| {
            conn.execute(
                "INSERT INTO tessera_migrations (version, description, installed) VALUES (?1, ?2, ?3)",
                (m.version, m.description, unix_now()),
            )
        });
        match done {
            Ok(_) => conn.execute_batch("COMMIT").map_err(failed)?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(failed(e));
            }
        }
    }
    Ok(())
}

fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Holds an exclusive lock on a file until dropped.
fn lock_file(path: PathBuf) -> Result<std::fs::File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Io(path.clone(), e))?;
    file.lock().map_err(|e| StoreError::Io(path, e))?;
    Ok(file)
}

/// Seconds since the Unix epoch, as migrations record when they ran.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[Migration {
        version: 1,
        description: "items",
        sqlite: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, note TEXT);",
    }];

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("tessera-store-{}", uuid::Uuid::new_v4()))
    }

    #[tokio::test]
    async fn migrates_once_even_with_two_openers() {
        let dir = temp_dir();
        let url = Db::default_url(&dir, "t");
        let (a, b) = tokio::join!(Db::open(&url, MIGRATIONS), Db::open(&url, MIGRATIONS));
        let (a, b) = (a.unwrap(), b.unwrap());
        query("INSERT INTO items (name) VALUES ($1)")
            .bind("x")
            .execute(a.pool())
            .await
            .unwrap();
        let err = query("INSERT INTO items (name) VALUES ($1)")
            .bind("x")
            .execute(b.pool())
            .await
            .unwrap_err();
        assert!(is_unique_violation(&err), "{err}");
        let mut tx = b.write_tx().await.unwrap();
        query("INSERT INTO items (name) VALUES ($1)")
            .bind("y")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let n: i64 = query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(a.pool())
            .await
            .unwrap();
        assert_eq!(n, 2);
        // Opening again applies nothing twice.
        drop((a, b));
        Db::open(&url, MIGRATIONS).await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn binds_by_number_and_reads_tuples_options_and_scalars() {
        let dir = temp_dir();
        let db = Db::open(&Db::default_url(&dir, "t"), MIGRATIONS)
            .await
            .unwrap();
        // $2 before $1, and $1 twice: parameters are matched by number, not position.
        query("INSERT INTO items (note, name) VALUES ($2, $1 || '-' || $1)")
            .bind(String::from("a"))
            .bind(None::<&str>)
            .execute(db.pool())
            .await
            .unwrap();
        let note = Some("n".to_string());
        let done = query("INSERT INTO items (name, note) VALUES ($1, $2)")
            .bind("b")
            .bind(&note)
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        let rows: Vec<(i64, String, Option<String>)> =
            query_as("SELECT id, name, note FROM items ORDER BY id")
                .fetch_all(db.pool())
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "a-a".to_string(), None),
                (2, "b".to_string(), Some("n".to_string()))
            ]
        );
        let none: Option<(String,)> = query_as("SELECT name FROM items WHERE id = $1")
            .bind(9_i64)
            .fetch_optional(db.pool())
            .await
            .unwrap();
        assert!(none.is_none());
        let missing = query_scalar::<String>("SELECT name FROM items WHERE id = 9")
            .fetch_one(db.pool())
            .await;
        assert!(matches!(missing, Err(DbError::RowNotFound)));
        let unbound = query("INSERT INTO items (name, note) VALUES ($1, $2)")
            .bind("c")
            .execute(db.pool())
            .await;
        assert!(matches!(unbound, Err(DbError::Bind(_))), "{unbound:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_dropped_transaction_rolls_back_and_writers_take_turns() {
        let dir = temp_dir();
        let db = Db::open(&Db::default_url(&dir, "t"), MIGRATIONS)
            .await
            .unwrap();
        {
            let mut tx = db.write_tx().await.unwrap();
            query("INSERT INTO items (name) VALUES ('gone')")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let n: i64 = query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(n, 0);
        // Many concurrent read-then-write transactions: none fails, none is lost.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.write_tx().await?;
                let n: i64 = query_scalar("SELECT COUNT(*) FROM items")
                    .fetch_one(&mut *tx)
                    .await?;
                tokio::task::yield_now().await;
                query("INSERT INTO items (name) VALUES ($1)")
                    .bind(format!("{i}-{n}"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let names: Vec<String> = query_scalar("SELECT name FROM items")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(names.len(), 20);
        let mut seen: Vec<i64> = names
            .iter()
            .map(|n| n.split('-').nth(1).unwrap().parse().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>(), "each saw the one before");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_writer_in_another_process_is_waited_for_not_failed() {
        let dir = temp_dir();
        let url = Db::default_url(&dir, "t");
        let db = Db::open(&url, MIGRATIONS).await.unwrap();
        // Another "process": a plain connection holding the write lock for a while.
        let other = rusqlite::Connection::open(sqlite_file(&url).unwrap()).unwrap();
        other
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO items (name) VALUES ('other');")
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            other.execute_batch("COMMIT").unwrap();
        });
        let started = Instant::now();
        let mut tx = db.write_tx().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        query("INSERT INTO items (name) VALUES ('mine')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        release.join().unwrap();
        let n: i64 = query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(n, 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_a_steady_stream_of_commits() {
        let dir = temp_dir();
        let url = Db::default_url(&dir, "t");
        // Checkpoints more often than by default, so that 20,000 commits see several.
        let db = Db::open_with(&url, MIGRATIONS, Duration::from_millis(100), 2048)
            .await
            .unwrap();
        let wal = sqlite_file(&url).unwrap().with_extension("db-wal");
        // 20,000 commits of two pages or more: 160 MB of WAL if it were never started over.
        let mut tasks = Vec::new();
        for w in 0..2 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut commits = 0u64;
                while commits < 10_000 {
                    let mut tx = db.write_tx().await.unwrap();
                    query("INSERT INTO items (name, note) VALUES ($1, $2)")
                        .bind(format!("{w}-{commits}"))
                        .bind("x".repeat(500))
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    // And a reader, always somewhere in the WAL.
                    let _: i64 = query_scalar("SELECT COUNT(*) FROM items WHERE id < 10")
                        .fetch_one(db.pool())
                        .await
                        .unwrap();
                    commits += 1;
                }
                commits
            }));
        }
        let mut largest = 0;
        while !tasks.iter().all(|t| t.is_finished()) {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut commits = 0;
        for t in tasks {
            commits += t.await.unwrap();
        }
        assert_eq!(commits, 20_000);
        assert!(
            largest < 64 << 20,
            "the WAL reached {largest} bytes over {commits} commits"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(start_paused = true)]
    async fn writing_beside_ones_own_transaction_fails_instead_of_hanging() {
        let dir = temp_dir();
        let db = Db::open(&Db::default_url(&dir, "t"), MIGRATIONS)
            .await
            .unwrap();
        let tx = db.write_tx().await.unwrap();
        let pool_write = query("INSERT INTO items (name) VALUES ('x')")
            .execute(db.pool())
            .await;
        assert!(
            matches!(pool_write, Err(DbError::Busy(_))),
            "{pool_write:?}"
        );
        assert!(matches!(db.write_tx().await, Err(DbError::Busy(_))));
        // Reads do not need the writer.
        let n: i64 = query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(n, 0);
        drop(tx);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn finds_the_file() {
        assert_eq!(
            sqlite_file("sqlite://a/b.db?mode=rwc"),
            Some(PathBuf::from("a/b.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }
}
