//! Why opening a database or running a statement failed, whatever the backend.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database URL {0} is not supported (expected sqlite://<file> or postgres://<user>@<host>/<database>)"
    )]
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
    #[error("{}", postgres_message(.0))]
    Postgres(tokio_postgres::Error),
    /// The database cannot be reached (or is shutting down): nothing was done.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Unsupported(String),
    /// A statement of the transaction failed, and the server rolled the whole transaction back.
    #[error("a statement of this transaction failed, so the transaction was rolled back")]
    RolledBack,
    /// The connection was lost while committing: the transaction may or may not have
    /// committed.
    #[error("the outcome of the commit is unknown (the connection was lost): {0}")]
    Ambiguous(String),
    #[error(
        "the database stayed busy (locked by another writer, or every connection in use) for {0:?}"
    )]
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

    /// Whether trying again may help: the database is locked by another writer, or the
    /// transaction conflicted with a concurrent one (and was rolled back).
    pub fn is_busy(&self) -> bool {
        match self {
            DbError::Busy(_) => true,
            DbError::Sqlite(e) => crate::sqlite::is_busy(e),
            DbError::Postgres(e) => crate::postgres::is_conflict(e),
            _ => false,
        }
    }

    /// Whether the transaction lost a race with a concurrent one (a serialization failure or
    /// a deadlock) and was rolled back: trying it again at once is the cure. Unlike
    /// [`DbError::is_busy`], not a wait that already took seconds.
    pub fn is_conflict(&self) -> bool {
        match self {
            DbError::Postgres(e) => crate::postgres::is_conflict(e),
            _ => false,
        }
    }

    /// Whether the transaction lost a race: a conflict, or, on PostgreSQL, a duplicate key.
    /// There a transaction reads a snapshot, so a row that a concurrent one inserted is
    /// invisible until an insert of the same key meets it: tried again, the transaction sees
    /// the row and decides again. (Embedded, writers take turns: a duplicate is the caller's.)
    /// A caller that means a duplicate as an answer ("that email is taken") asks
    /// [`is_unique_violation`] first.
    pub fn is_race(&self) -> bool {
        match self {
            DbError::Postgres(e) => {
                crate::postgres::is_conflict(e) || crate::postgres::is_unique_violation(e)
            }
            _ => false,
        }
    }

    /// Whether the database could not be reached: nothing was done, and waiting for it to
    /// come back is all that helps.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }

    /// A PostgreSQL error: one of the connection (or of a server going away) is
    /// [`DbError::Unavailable`].
    pub(crate) fn postgres(e: tokio_postgres::Error) -> Self {
        Self::from_postgres(e, "the database")
    }

    /// As [`DbError::postgres`], naming the database (its URL without the password).
    pub(crate) fn from_postgres(e: tokio_postgres::Error, database: &str) -> Self {
        use std::error::Error;
        let lost = e.is_closed()
            || e.source().is_some_and(|s| s.is::<std::io::Error>())
            || e.code().is_some_and(|c| {
                let c = c.code();
                // connection_exception, operator_intervention (shutdown), cannot_connect_now,
                // insufficient_resources (too many connections, out of disk)
                c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
            })
            || (e.as_db_error().is_none() && e.to_string().contains("timed out"));
        if lost {
            Self::Unavailable(format!("{database}: {}", postgres_message(&e)))
        } else {
            Self::Postgres(e)
        }
    }
}

/// What a PostgreSQL error says: the server's message and its code, or the driver's own
/// message with its cause.
fn postgres_message(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match e.source() {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Whether `err` is a unique-constraint violation (a duplicate).
pub fn is_unique_violation(err: &DbError) -> bool {
    match err {
        DbError::Sqlite(e) => crate::sqlite::is_unique_violation(e),
        DbError::Postgres(e) => crate::postgres::is_unique_violation(e),
        _ => false,
    }
}
