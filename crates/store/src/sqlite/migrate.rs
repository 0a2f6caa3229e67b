//! Schema migrations of a SQLite file: each in its own transaction, recorded in
//! `tessera_migrations`, under an exclusive file lock so that replicas starting together
//! migrate once.

use std::path::{Path, PathBuf};

use super::BUSY_WAIT;
use crate::{DbError, Migration, StoreError};

/// Applies what `migrations` has that the database has not, each in its own transaction.
pub(super) fn migrate(path: &Path, migrations: &[Migration]) -> Result<(), StoreError> {
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
