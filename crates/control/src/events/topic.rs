//! A topic: the rule for its name, the end of each of its partitions, and the partition a key
//! goes to; and the map of every topic the log holds.
//!
//! The ends are what the appender has published as written (atomics, so a fetch reads them
//! without a lock): a fetch never reads past them, so a consumer is never handed an offset it
//! could not commit. The map is loaded from disk once, at open, and afterwards only the
//! appender changes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tessera::Db;

use super::error::LogError;

pub struct Topic {
    /// The next offset of each partition.
    end: Vec<AtomicI64>,
}

impl Topic {
    fn new(ends: impl IntoIterator<Item = i64>) -> Self {
        Self {
            end: ends.into_iter().map(AtomicI64::new).collect(),
        }
    }

    pub fn partitions(&self) -> usize {
        self.end.len()
    }

    /// The next offset of `partition`, if the topic has it.
    pub fn end(&self, partition: u32) -> Option<i64> {
        self.end
            .get(partition as usize)
            .map(|e| e.load(Ordering::Acquire))
    }

    /// The next offset of each partition.
    pub fn ends(&self) -> Vec<i64> {
        self.end.iter().map(|e| e.load(Ordering::Acquire)).collect()
    }
}

/// Every topic of the log, by name.
#[derive(Default)]
pub struct Topics(RwLock<HashMap<String, Arc<Topic>>>);

impl Topics {
    /// Every topic on disk, each partition ending after its last stored event.
    pub async fn load(db: &Db) -> Result<Self, tessera::store::DbError> {
        let rows: Vec<(String, i64)> =
            tessera::store::query_as("SELECT name, partitions FROM topics")
                .fetch_all(db.pool())
                .await?;
        let mut topics = HashMap::new();
        for (name, partitions) in rows {
            let mut end = Vec::new();
            for p in 0..partitions {
                let (next,): (i64,) = tessera::store::query_as(
                    r#"SELECT COALESCE(MAX("offset") + 1, 0) FROM events WHERE topic = $1 AND partition = $2"#,
                )
                .bind(&name)
                .bind(p)
                .fetch_one(db.pool())
                .await?;
                end.push(next);
            }
            topics.insert(name, Arc::new(Topic::new(end)));
        }
        Ok(Self(RwLock::new(topics)))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().get(name).cloned()
    }

    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes what a batch wrote: the topics it created (with their partition counts) and
    /// the new end of each partition it appended to.
    pub fn advance(&self, created: Vec<(String, u32)>, ends: HashMap<(String, u32), i64>) {
        let mut topics = self.0.write().unwrap_or_else(|e| e.into_inner());
        for (name, partitions) in created {
            topics
                .entry(name)
                .or_insert_with(|| Arc::new(Topic::new((0..partitions).map(|_| 0))));
        }
        for ((topic, p), next) in ends {
            if let Some(t) = topics.get(&topic) {
                t.end[p as usize].store(next, Ordering::Release);
            }
        }
    }
}

/// A topic's name is 1 to 200 of a-z, A-Z, 0-9, '.', '-', '_'.
pub fn check_name(topic: &str) -> Result<(), LogError> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(LogError::Invalid(
            "a topic name is 1 to 200 of a-z, A-Z, 0-9, '.', '-', '_'".into(),
        ))
    }
}

pub use tessera::events::partition_of;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioning_is_stable() {
        assert_eq!(partition_of("order-1", 4), partition_of("order-1", 4));
        let spread: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_of(&format!("k{i}"), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
