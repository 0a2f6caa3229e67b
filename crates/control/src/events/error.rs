//! What a call on the log can fail with. The HTTP API matches on it to choose the status: a bad
//! event or topic name is the caller's, a refused commit is the group's, and storage is ours.

use super::groups::GroupError;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("the log is unavailable: {0}")]
    Storage(String),
}

impl From<tessera::store::DbError> for LogError {
    fn from(e: tessera::store::DbError) -> Self {
        LogError::Storage(e.to_string())
    }
}
