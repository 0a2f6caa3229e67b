//! Why opening a database or running a statement failed, whatever the backend.

use std::path::PathBuf;
use std::time::Duration;

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
            DbError::Sqlite(e) => crate::sqlite::is_busy(e),
            _ => false,
        }
    }
}

/// Whether `err` is a unique-constraint violation (a duplicate).
pub fn is_unique_violation(err: &DbError) -> bool {
    match err {
        DbError::Sqlite(e) => crate::sqlite::is_unique_violation(e),
        _ => false,
    }
}
