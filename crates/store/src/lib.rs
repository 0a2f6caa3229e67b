//! Each service's own database: the seam between services and a database engine, the
//! embedded backend (SQLite), migrations and checkpoints.
//!
//! Services talk to a [`Db`]. They write SQL with `$1`-style parameters and the portable types
//! (`i64`, `f64`, `String`, `bool`, `Vec<u8>`, and `Option`s of them), through [`query`],
//! [`query_as`] and [`query_scalar`], against the pool (`db.pool()`, one statement in its own
//! transaction) or a transaction (`db.write_tx()`).
//!
//! ## The seam
//! Which engine holds a service's data is decided by its database URL, once, in [`Db::open`];
//! everything after dispatches on it: [`Pool`], [`Tx`] and [`Conn`] each hold the backend's
//! own handle, parameters go in as [`Value`]s and columns come out as [`ValueRef`]s, so no
//! driver type appears in a service's code. A backend is a module (`sqlite.rs` today) that
//! runs statements, reads rows through [`Row`], begins, commits and rolls back transactions,
//! and migrates; a server database (PostgreSQL) is another variant of the same enums, and the
//! same services and the same test suite run on either. Dispatch is a `match`, not a trait
//! object: the embedded backend runs statements on the calling task in microseconds, and an
//! allocation or a virtual call per statement would show.
//!
//! The embedded default is a SQLite file under the data dir, in WAL mode; replicas of a
//! service share it, as they would share a server database (`sqlite.rs` says how it stays
//! fast and bounded).

mod error;
mod postgres;
mod query;
pub mod session;
mod sqlite;
mod value;

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use error::{DbError, StoreError, is_unique_violation};
pub use query::{
    Done, Executor, Query, QueryAs, QueryScalar, Target, query, query_as, query_scalar,
};
pub use value::{Decode, Encode, FromRow, Row, Value, ValueRef};

/// One schema migration, in the dialect of each backend it supports.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
    /// The same change on PostgreSQL; `None` for a schema that exists only embedded (opening
    /// it on PostgreSQL fails, naming the migration).
    pub postgres: Option<&'static str>,
}

/// A service's database handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Pool,
    reader: Reader,
}

/// Where reads that may be served by a read replica go ([`Db::read`]): a replica that has
/// replayed what the request must see ([`session`]), else the primary. Statements that write
/// go to the primary.
#[derive(Clone, Debug)]
pub struct Reader {
    primary: Pool,
    replicas: Option<Arc<postgres::Replicas>>,
}

/// The connections of one database. Statements run on it directly are each their own
/// transaction.
#[derive(Clone, Debug)]
pub struct Pool {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(Arc<sqlite::Pool>),
    Postgres(Arc<postgres::Pool>),
}

/// The SQL dialect of a database, for the few statements that must differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `url`: `sqlite://<file>`
    /// (embedded) or `postgres://<user>[:<password>]@<host>[:<port>]/<database>[?pool=<n>]`.
    pub async fn open(url: &str, migrations: &[Migration]) -> Result<Self, StoreError> {
        Self::open_replicated(url, &[], migrations).await
    }

    /// As [`Db::open`], with read replicas of it (PostgreSQL streaming replicas, by URL) that
    /// serve the reads sent through [`Db::read`]. A replica need not be up: it serves once it
    /// answers.
    pub async fn open_replicated(
        url: &str,
        replicas: &[String],
        migrations: &[Migration],
    ) -> Result<Self, StoreError> {
        if postgres::is_postgres(url) {
            let url = postgres::PgUrl::parse(url).map_err(StoreError::UnsupportedUrl)?;
            let replica_urls = replicas
                .iter()
                .map(|r| postgres::PgUrl::parse(r))
                .collect::<Result<Vec<_>, String>>()
                .map_err(StoreError::UnsupportedUrl)?;
            let pool = Arc::new(postgres::Pool::open(&url, migrations).await?);
            let replicas = if replica_urls.is_empty() {
                None
            } else {
                pool.track_writes();
                Some(postgres::Replicas::open(&replica_urls, pool.clone()).await?)
            };
            let pool = Pool {
                backend: Backend::Postgres(pool),
            };
            return Ok(Db {
                reader: Reader {
                    primary: pool.clone(),
                    replicas,
                },
                pool,
            });
        }
        if !replicas.is_empty() {
            return Err(StoreError::UnsupportedUrl(
                "read replicas are PostgreSQL's: the embedded database has none".into(),
            ));
        }
        Self::open_with(
            url,
            migrations,
            sqlite::CHECKPOINT_EVERY,
            sqlite::WAL_FRAMES_HELD,
        )
        .await
    }

    async fn open_with(
        url: &str,
        migrations: &[Migration],
        checkpoint_every: Duration,
        wal_frames_held: i64,
    ) -> Result<Self, StoreError> {
        let path = sqlite::sqlite_file(url)
            .ok_or_else(|| StoreError::UnsupportedUrl(postgres::redact(url)))?;
        let sync = sqlite::synchronous(url).map_err(|why| {
            StoreError::UnsupportedUrl(format!("{}: {why}", postgres::redact(url)))
        })?;
        let pool =
            sqlite::Pool::open(path, sync, migrations, checkpoint_every, wal_frames_held).await?;
        let pool = Pool {
            backend: Backend::Sqlite(pool),
        };
        Ok(Db {
            reader: Reader {
                primary: pool.clone(),
                replicas: None,
            },
            pool,
        })
    }

    /// The default embedded database of `service`.
    pub fn default_url(data_dir: &Path, service: &str) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join(format!("{service}.db")).display()
        )
    }

    /// `url` as it may be logged: a password in it replaced by `***`.
    pub fn redact_url(url: &str) -> String {
        postgres::redact(url)
    }

    /// The pool: each statement run on it is its own transaction.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Where reads that a read replica may serve go: list and detail queries that can be a
    /// moment behind the primary, but never behind the caller's own writes
    /// ([`session`]). Without replicas, the pool.
    pub fn read(&self) -> &Reader {
        &self.reader
    }

    /// The SQL dialect of this database.
    pub fn dialect(&self) -> Dialect {
        match &self.pool.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// A transaction that will write. Embedded, one runs at a time per process; on
    /// PostgreSQL, it reads a snapshot (repeatable read), and changing a row (or inserting a
    /// key) that a concurrent one changed fails it with an error that
    /// [`DbError::is_conflict`]: decide on rows the transaction also writes (`postgres.rs`).
    /// Dropped without [`Tx::commit`], it rolls back.
    pub async fn write_tx(&self) -> Result<Tx, DbError> {
        match &self.pool.backend {
            Backend::Sqlite(pool) => {
                let span = Statements::open("sqlite");
                let (raw, hold) = pool.begin().await?;
                Ok(Tx {
                    conn: Some(Conn(RawConn::Sqlite(raw), span)),
                    hold: Some(Hold::Sqlite(hold)),
                })
            }
            Backend::Postgres(pool) => {
                let span = Statements::open("postgresql");
                Ok(Tx {
                    conn: Some(Conn(
                        RawConn::Postgres {
                            conn: pool.connection().await?,
                            begun: false,
                            failed: false,
                        },
                        span,
                    )),
                    hold: Some(Hold::Postgres {
                        track: pool.tracks_writes(),
                    }),
                })
            }
        }
    }

    /// Flushes what the backend holds (the embedded one checkpoints its WAL into the
    /// database file) and closes the idle connections.
    pub async fn close(&self) {
        match &self.pool.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pool) => pool.close(),
        }
    }
}

impl Pool {
    async fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
        match &self.backend {
            Backend::Sqlite(pool) => pool.execute(sql, args).await,
            Backend::Postgres(pool) => pool.execute(sql, args).await,
        }
    }

    async fn rows<T: FromRow>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        limit: usize,
    ) -> Result<Vec<T>, DbError> {
        match &self.backend {
            Backend::Sqlite(pool) => pool.rows(sql, args, limit).await,
            Backend::Postgres(pool) => pool.rows(sql, args, limit).await,
        }
    }
}

impl Reader {
    async fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
        self.primary.execute(sql, args).await
    }

    async fn rows<T: FromRow>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        limit: usize,
    ) -> Result<Vec<T>, DbError> {
        if let Some(replica) = self
            .replicas
            .as_ref()
            .and_then(|r| r.pick(session::read_after()))
        {
            match replica.pool.rows(sql, args, limit).await {
                // A lookup of one row that the replica does not have may be of a row written
                // a moment ago by a caller that did not say so (no `tessera-read-after`): the
                // primary is asked before answering "not found". Lists are not: an empty page
                // is an answer.
                Ok(rows) if rows.is_empty() && limit == 1 => {}
                Ok(rows) => {
                    metrics::counter!("tessera_db_reads_total", "from" => "replica").increment(1);
                    return Ok(rows);
                }
                // Down or going away: the primary answers, and the replica is left out until
                // it answers again.
                Err(e) if e.is_unavailable() => replica.failed(&e),
                // A query cancelled by the replica's replay (a recovery conflict): the
                // primary answers this one.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        if self.replicas.is_some() {
            metrics::counter!("tessera_db_reads_total", "from" => "primary").increment(1);
        }
        self.primary.rows(sql, args, limit).await
    }
}

/// A write transaction. Statements run on it with `&mut *tx` (or `&mut **tx` through a
/// `&mut Tx`).
pub struct Tx {
    conn: Option<Conn>,
    hold: Option<Hold>,
}

/// What a transaction holds of its backend until it ends.
enum Hold {
    Sqlite(sqlite::TxHold),
    /// A PostgreSQL transaction holds nothing but its connection; `track`: its commit
    /// records where it reached the log.
    Postgres {
        track: bool,
    },
}

/// The connection a transaction runs on, and the span recording the transaction.
pub struct Conn(RawConn, Statements);

/// A transaction's span (a client span of the request or event being handled, when its trace
/// is recorded), and the kinds of statement it ran: counted, never their text or values.
pub(crate) struct Statements {
    span: tessera_trace::Span,
    /// SELECT, INSERT, UPDATE, DELETE, other.
    kinds: [u16; 5],
}

impl Statements {
    fn open(system: &'static str) -> Statements {
        let parent = tessera_trace::REQUEST.try_with(|r| r.trace).ok();
        let mut span = match parent {
            Some(p) => {
                tessera_trace::Span::child_of(&p, "db transaction", tessera_trace::Kind::Client).0
            }
            None => tessera_trace::Span::NONE,
        };
        span.set("db.system.name", system);
        Statements {
            span,
            kinds: [0; 5],
        }
    }

    pub(crate) fn count(&mut self, sql: &str) {
        if !self.span.is_recording() {
            return;
        }
        let word = sql
            .trim_start()
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or_default();
        let kind = ["SELECT", "INSERT", "UPDATE", "DELETE"]
            .iter()
            .position(|k| word.eq_ignore_ascii_case(k))
            .unwrap_or(if word.eq_ignore_ascii_case("WITH") {
                0
            } else {
                4
            });
        self.kinds[kind] = self.kinds[kind].saturating_add(1);
    }

    /// Ends the span: `outcome` is how the transaction ended.
    fn end(&mut self, outcome: Result<(), &DbError>) {
        if !self.span.is_recording() {
            return;
        }
        let mut summary = String::new();
        for (name, n) in ["SELECT", "INSERT", "UPDATE", "DELETE", "OTHER"]
            .iter()
            .zip(self.kinds)
        {
            if n > 0 {
                if !summary.is_empty() {
                    summary.push(' ');
                }
                summary.push_str(name);
                if n > 1 {
                    summary.push_str(&format!(" x{n}"));
                }
            }
        }
        self.span.set("db.operation.summary", summary);
        self.span.set(
            "tessera.db.statements",
            i64::from(self.kinds.iter().sum::<u16>()),
        );
        match outcome {
            Ok(()) => self.span.set("tessera.db.outcome", "commit"),
            Err(DbError::RolledBack) => self.span.set("tessera.db.outcome", "rollback"),
            Err(e) => {
                self.span.set("tessera.db.outcome", "failed");
                self.span.fail(e.to_string());
            }
        }
        drop(std::mem::replace(&mut self.span, tessera_trace::Span::NONE));
    }
}

enum RawConn {
    Sqlite(rusqlite::Connection),
    /// `failed`: a statement failed, and PostgreSQL has aborted the transaction (a `COMMIT`
    /// would roll it back and say nothing): committing it is an error.
    /// `begun`: its `BEGIN` went out (with the transaction's first statement, in the same
    /// round trip: `postgres::begin_with`).
    Postgres {
        conn: deadpool_postgres::Object,
        begun: bool,
        failed: bool,
    },
}

impl Conn {
    async fn execute(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
        match &mut self.0 {
            RawConn::Sqlite(raw) => sqlite::execute(raw, sql, args),
            RawConn::Postgres {
                conn,
                begun,
                failed,
            } => in_transaction(begun, failed, conn, postgres::execute(conn, sql, args)).await,
        }
    }

    async fn rows<T: FromRow>(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        limit: usize,
    ) -> Result<Vec<T>, DbError> {
        match &mut self.0 {
            RawConn::Sqlite(raw) => sqlite::rows(raw, sql, args, limit),
            RawConn::Postgres {
                conn,
                begun,
                failed,
            } => {
                let rows = postgres::rows(conn, sql, args, limit);
                in_transaction(begun, failed, conn, rows).await
            }
        }
    }
}

/// Runs `statement` in a PostgreSQL transaction on `conn`: with the transaction's `BEGIN`
/// the first time, and remembering a failure (PostgreSQL has aborted the transaction then).
async fn in_transaction<T>(
    begun: &mut bool,
    failed: &mut bool,
    conn: &deadpool_postgres::Object,
    statement: impl Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    let done = if *begun {
        statement.await
    } else {
        *begun = true;
        postgres::begin_with(conn, statement).await
    };
    *failed |= done.is_err();
    done
}

impl Tx {
    /// Makes the transaction's writes durable and visible.
    pub async fn commit(mut self) -> Result<(), DbError> {
        match (self.conn.take(), self.hold.take()) {
            (Some(Conn(RawConn::Sqlite(raw), mut span)), Some(Hold::Sqlite(hold))) => {
                let done = hold.commit(raw);
                span.end(done.as_ref().map(|_| ()));
                done
            }
            (
                Some(Conn(
                    RawConn::Postgres {
                        conn,
                        begun,
                        failed,
                    },
                    mut span,
                )),
                Some(Hold::Postgres { track }),
            ) => {
                if !begun {
                    return Ok(()); // no statement ran: nothing to commit
                }
                if failed {
                    postgres::abandon(conn);
                    span.end(Err(&DbError::RolledBack));
                    return Err(DbError::RolledBack);
                }
                let done = postgres::commit(conn, track).await;
                span.end(done.as_ref().map(|_| ()));
                done
            }
            _ => unreachable!("a transaction has its connection until it ends"),
        }
    }

    /// Undoes the transaction's writes (as dropping it does).
    pub async fn rollback(self) -> Result<(), DbError> {
        drop(self);
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(Conn(_, span)) = &mut self.conn {
            span.end(Err(&DbError::RolledBack));
        }
        match (self.conn.take(), self.hold.take()) {
            (Some(Conn(RawConn::Sqlite(raw), _)), Some(Hold::Sqlite(hold))) => hold.abandon(raw),
            // Nothing was sent: the connection goes back as it came.
            (Some(Conn(RawConn::Postgres { begun: false, .. }, _)), _) => {}
            (Some(Conn(RawConn::Postgres { conn, .. }, _)), _) => postgres::abandon(conn),
            _ => {}
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;
    use crate::sqlite::sqlite_file;

    const MIGRATIONS: &[Migration] = &[Migration {
        version: 1,
        description: "items",
        sqlite: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, note TEXT);",
        postgres: Some(
            "CREATE TABLE items (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name TEXT NOT NULL UNIQUE, note TEXT);",
        ),
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

    #[tokio::test]
    async fn a_url_may_ask_for_every_commit_on_disk() {
        let dir = std::env::temp_dir().join(format!("tessera-store-{}", uuid::Uuid::new_v4()));
        let normal = Db::default_url(&dir, "normal");
        let full = format!("{}&synchronous=full", Db::default_url(&dir, "full"));
        for (url, expected) in [(normal, 1), (full, 2)] {
            let db = Db::open(&url, &[]).await.unwrap();
            // What every connection of the pool runs with: NORMAL is 1, FULL is 2.
            let sync: i64 = query_scalar("PRAGMA synchronous")
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert_eq!(sync, expected, "{url}");
            db.close().await;
        }
        let bad = format!("{}&synchronous=sometimes", Db::default_url(&dir, "bad"));
        assert!(matches!(
            Db::open(&bad, &[]).await,
            Err(StoreError::UnsupportedUrl(m)) if m.contains("normal or full")
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
