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
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            partitions: 4,
            lease: Duration::from_secs(10),
            max_batch: 5000,
        }
    }
}
