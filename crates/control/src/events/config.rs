//! The log's tuning, with the defaults the control plane runs with.

use std::time::Duration;

/// Tuning of the log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Partitions of a new topic.
    pub partitions: u32,
    /// How long a consumer holds its partitions without fetching.
    pub lease: Duration,
    /// Most events written in one transaction.
    pub max_batch: usize,
    /// Whether an append is acknowledged only once it is synced to disk (each group commit
    /// syncs the WAL): what survives an OS crash or a power loss. Off, an acknowledged event
    /// survives a crash of the control plane but not of the machine.
    pub sync: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            partitions: 4,
            lease: Duration::from_secs(10),
            max_batch: 5000,
            sync: true,
        }
    }
}
