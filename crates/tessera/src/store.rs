//! Each service's own database, and the seam between embedded and server engines.
//!
//! Services talk to a [`Db`]: an `sqlx::AnyPool` plus the backend it points at. They write
//! portable SQL with `$1`-style parameters (which SQLite and PostgreSQL both accept) and the
//! portable types (`i64`, `f64`, `String`, `bool`, `Vec<u8>`), so the engine is chosen by a
//! URL and not by service code. The embedded default is a SQLite file under the data dir, in
//! WAL mode; replicas of a service share it, as they would share a PostgreSQL database.
//! PostgreSQL is a later issue: it adds the `postgres` driver feature and the services'
//! PostgreSQL migration files, and nothing else changes.
//!
//! Migrations run at start-up, before the service reports ready, under an exclusive file lock
//! so that two replicas starting at once do not race.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{MigrationType, Migrator};

/// A service's database handle.
#[derive(Clone, Debug)]
pub struct Db {
    pool: sqlx::AnyPool,
    backend: Backend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
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
    #[error("database URL {0:?} is not supported (expected sqlite://...)")]
    UnsupportedUrl(String),
    #[error("cannot prepare {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn open(url: &str, migrations: &[Migration]) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let file = sqlite_file(url);
        if let Some(dir) = file.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    use sqlx::Executor;
                    // WAL lets readers and the one writer proceed together, across processes.
                    // It persists in the file; a replica that finds it locked retries later.
                    let _ = conn.execute("PRAGMA journal_mode=WAL").await;
                    conn.execute("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000")
                        .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let db = Db { pool, backend };

        let migrator = Migrator {
            migrations: Cow::Owned(
                migrations
                    .iter()
                    .map(|m| {
                        sqlx::migrate::Migration::new(
                            m.version,
                            Cow::Borrowed(m.description),
                            MigrationType::Simple,
                            Cow::Borrowed(m.sqlite),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        let _guard = match &file {
            Some(f) => Some(lock_file(f.with_extension("migrate.lock")).await?),
            None => None,
        };
        migrator.run(&db.pool).await?;
        Ok(db)
    }

    /// The default embedded database of `service`.
    pub fn default_url(data_dir: &Path, service: &str) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join(format!("{service}.db")).display()
        )
    }

    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so that a read-then-write transaction waits for a concurrent writer
    /// instead of failing when it tries to upgrade.
    pub async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether `err` is a unique-constraint violation (a duplicate).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Holds an exclusive lock on a file until dropped.
async fn lock_file(path: PathBuf) -> Result<std::fs::File, StoreError> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Io(path.clone(), e))?;
        file.lock().map_err(|e| StoreError::Io(path, e))?;
        Ok(file)
    })
    .await
    .expect("lock task does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[Migration {
        version: 1,
        description: "items",
        sqlite: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);",
    }];

    #[tokio::test]
    async fn migrates_once_even_with_two_openers() {
        let dir = std::env::temp_dir().join(format!("tessera-store-{}", uuid::Uuid::new_v4()));
        let url = Db::default_url(&dir, "t");
        let (a, b) = tokio::join!(Db::open(&url, MIGRATIONS), Db::open(&url, MIGRATIONS));
        let (a, b) = (a.unwrap(), b.unwrap());
        sqlx::query("INSERT INTO items (name) VALUES ($1)")
            .bind("x")
            .execute(a.pool())
            .await
            .unwrap();
        let err = sqlx::query("INSERT INTO items (name) VALUES ($1)")
            .bind("x")
            .execute(b.pool())
            .await
            .unwrap_err();
        assert!(is_unique_violation(&err));
        let mut tx = b.write_tx().await.unwrap();
        sqlx::query("INSERT INTO items (name) VALUES ($1)")
            .bind("y")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(a.pool())
            .await
            .unwrap();
        assert_eq!(n, 2);
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
