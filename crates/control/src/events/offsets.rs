//! A consumer group's committed offsets on disk: loaded into the group bookkeeping
//! (`groups.rs`) the first time a group reads a topic, and committed through the appender,
//! either waiting for the disk or carried by the next appends.
//!
//! `groups.rs` decides whether a commit may be made; this file is where one is made.

use tokio::sync::oneshot;

use super::appender::{CommitOffset, Write};
use super::error::LogError;
use super::groups::GroupError;
use super::log::EventLog;

impl EventLog {
    /// Commits `offset` (the next to read) on `partition` for `group`; returns once it is on
    /// disk.
    pub async fn commit(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), LogError> {
        self.commit_with(topic, group, consumer, partition, offset, true)
            .await
    }

    /// Commits `offset` for `group` at once and writes it to disk with the next appends
    /// (within [`OFFSETS_LINGER`](super::appender::OFFSETS_LINGER) if none
    /// come): the commit a fetch carries. The group reads on
    /// from it straight away; if the log stops before it is written, the group reads again
    /// from the last commit on disk, and the events in between are delivered again, which
    /// consumers' inboxes make harmless (delivery is at least once either way).
    pub async fn commit_lazily(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), LogError> {
        self.commit_with(topic, group, consumer, partition, offset, false)
            .await
    }

    async fn commit_with(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
        durable: bool,
    ) -> Result<(), LogError> {
        let t = self
            .topic(topic)
            .ok_or(GroupError::NoPartition(partition))?;
        let end = t.end(partition).ok_or(GroupError::NoPartition(partition))?;
        self.load_group(group, topic, t.partitions()).await?;
        self.groups()
            .check_commit(group, topic, consumer, partition, offset, end)?;
        let write = |reply| {
            Write::Commit(CommitOffset {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
                offset,
                reply,
            })
        };
        let committed = || self.groups().committed(group, topic, partition, offset);
        if durable {
            // Written with the appends in flight: one commit to disk for all of them.
            self.inner.appender.write(write).await?;
            committed();
        } else {
            committed();
            let (reply, _) = oneshot::channel();
            self.inner.appender.send(write(reply)).await?;
        }
        Ok(())
    }

    /// Installs `group`'s committed offsets on `topic` from disk, unless it has them.
    pub(super) async fn load_group(
        &self,
        group: &str,
        topic: &str,
        partitions: usize,
    ) -> Result<(), LogError> {
        if self.groups().is_loaded(group, topic) {
            return Ok(());
        }
        let rows: Vec<(i64, i64)> = tessera::store::query_as(
            "SELECT partition, committed FROM offsets WHERE grp = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(self.inner.db.pool())
        .await?;
        let mut committed = vec![0i64; partitions];
        for (p, c) in rows {
            if let Some(slot) = committed.get_mut(p as usize) {
                *slot = c;
            }
        }
        self.groups().load(group, topic, committed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::appender::OFFSETS_LINGER;
    use super::super::config::LogConfig;
    use super::super::testing::{event, open_log};
    use super::*;

    #[tokio::test]
    async fn a_lazy_commit_counts_at_once_and_reaches_the_disk_without_appends() {
        let (dir, log) = open_log().await;
        let offsets = log
            .publish(
                "orders",
                (0..6).map(|i| event(&format!("e{i}"), "order-1")).collect(),
            )
            .await
            .unwrap();
        let p = offsets[0].0;
        let (_, got) = log
            .fetch("orders", "g", "c1", 3, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 3);
        log.commit_lazily("orders", "g", "c1", p, 3).await.unwrap();
        // The group reads on from it at once...
        let (_, next) = log
            .fetch("orders", "g", "c1", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.first().unwrap().offset, 3);
        // ...and with no append to carry it, it reaches the disk after the linger.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let on_disk: Vec<(i64,)> = tessera::store::query_as(
                "SELECT committed FROM offsets WHERE grp = 'g' AND topic = 'orders'",
            )
            .fetch_all(log.inner.db.pool())
            .await
            .unwrap();
            if on_disk == [(3,)] {
                break;
            }
            assert!(Instant::now() < deadline, "not on disk: {on_disk:?}");
            tokio::time::sleep(OFFSETS_LINGER).await;
        }
        // A commit it cannot make is refused at once, lazily or not.
        assert!(matches!(
            log.commit_lazily("orders", "g", "other", p, 4).await,
            Err(LogError::Group(GroupError::NotHolder(_)))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn publish_fetch_commit_and_reopen() {
        let (dir, log) = open_log().await;
        let offsets = log
            .publish(
                "orders",
                (0..10)
                    .map(|i| event(&format!("e{i}"), "order-1"))
                    .collect(),
            )
            .await
            .unwrap();
        let p = offsets[0].0;
        assert!(
            offsets.iter().all(|(q, _)| *q == p),
            "one key, one partition"
        );
        assert_eq!(
            offsets.iter().map(|o| o.1).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );

        let (part, got) = log
            .fetch("orders", "g", "c1", 4, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(part, p);
        assert_eq!(
            got.iter().map(|s| s.offset).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // Not committed: the same events again.
        let (_, again) = log
            .fetch("orders", "g", "c1", 4, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again[0].offset, 0);
        log.commit("orders", "g", "c1", p, 4).await.unwrap();
        let (_, next) = log
            .fetch("orders", "g", "c1", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.first().unwrap().offset, 4);
        assert!(next.last().unwrap().event.get().contains("\"e9\""));
        assert!(matches!(
            log.commit("orders", "g", "other", p, 5).await,
            Err(LogError::Group(GroupError::NotHolder(_)))
        ));
        assert!(matches!(
            log.commit("orders", "g", "c1", p, 99).await,
            Err(LogError::Group(GroupError::PastEnd { .. }))
        ));
        drop(log);

        // Reopened: the events and the commit are still there, and offsets continue.
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        let (_, got) = log
            .fetch("orders", "g", "c2", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.first().unwrap().offset, 4);
        let more = log
            .publish("orders", vec![event("e10", "order-1")])
            .await
            .unwrap();
        assert_eq!(more[0], (p, 10));
        let _ = std::fs::remove_dir_all(dir);
    }
}
