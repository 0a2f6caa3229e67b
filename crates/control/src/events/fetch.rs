//! Reading: a consumer's fetch (from the partitions its group lets it hold, long-polling for
//! new events) and the plain read of one partition beneath it.
//!
//! A fetch always starts at the group's committed offset, so whatever is not committed is
//! delivered again: at least once, in order per key. It reads only up to the ends the
//! appender has published, never rows of a batch whose offsets are not yet out.

use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use tessera::events::wire::MAX_FETCH_BYTES;

use super::error::LogError;
use super::groups::Fetched;
use super::log::EventLog;
use super::topic::check_name;

/// One stored event.
#[derive(Debug)]
pub struct Stored {
    pub offset: i64,
    /// Who published it (`service:<name>`); `None` if it was stored before the log
    /// authenticated publishers.
    pub producer: Option<String>,
    pub event: Box<RawValue>,
}

impl EventLog {
    /// Keeps the partitions `consumer` of `group` holds for another lease, without taking or
    /// giving any back; the ones it still holds.
    pub fn renew(&self, topic: &str, group: &str, consumer: &str) -> Result<Vec<u32>, LogError> {
        check_name(topic)?;
        Ok(self.groups().renew(
            group,
            topic,
            consumer,
            self.inner.config.lease,
            Instant::now(),
        ))
    }

    /// How long a member holds its partitions without fetching or renewing.
    pub fn lease(&self) -> Duration {
        self.inner.config.lease
    }

    /// Up to `max` events for `consumer` of `group`, from a partition it holds, waiting up to
    /// `wait` for some to arrive.
    pub async fn fetch(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Option<(u32, Vec<Stored>)>, LogError> {
        let parts = self
            .fetch_parts(topic, group, consumer, max, wait, false)
            .await?;
        Ok(parts.into_iter().next())
    }

    /// Up to `max` events in all for `consumer` of `group`, from every partition it holds that
    /// has some (or from the first, unless `all`), waiting up to `wait` for some to arrive.
    /// Empty when none arrived.
    pub async fn fetch_parts(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
        all: bool,
    ) -> Result<Vec<(u32, Vec<Stored>)>, LogError> {
        check_name(topic)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut woken = self.inner.appender.subscribe();
        loop {
            woken.borrow_and_update();
            if let Some(t) = self.topic(topic) {
                self.load_group(group, topic, t.partitions()).await?;
                let claimed = self.groups().claim(
                    group,
                    topic,
                    consumer,
                    self.inner.config.lease,
                    Instant::now(),
                );
                // Only what the appender has published as the end: rows of a batch can be
                // visible a moment before their offsets are, and a consumer must never be
                // handed an offset it could not commit.
                // The claim hands the partitions out in turns (each fetch starts from the
                // next), so a busy one cannot take every fetch's whole `max`.
                let ready = claimed.into_iter().filter_map(|f| {
                    let end = t.end(f.partition)?;
                    (f.from < end).then_some((f, end))
                });
                let mut parts = Vec::new();
                let mut left = max.max(1);
                // The answer's size is bounded too (a client takes MAX_FETCH_BYTES): events
                // past the budget wait for the next fetch; the first one always goes.
                let mut bytes_left = MAX_FETCH_BYTES;
                for (Fetched { partition, from }, end) in ready {
                    let mut events = self
                        .read(topic, partition, from, left.min((end - from) as usize))
                        .await?;
                    let mut keep = 0;
                    for s in &events {
                        let size = s.event.get().len() + 64;
                        if size > bytes_left && !(parts.is_empty() && keep == 0) {
                            break;
                        }
                        bytes_left = bytes_left.saturating_sub(size);
                        keep += 1;
                    }
                    let full = keep < events.len();
                    events.truncate(keep);
                    left = left.saturating_sub(events.len());
                    if !events.is_empty() {
                        parts.push((partition, events));
                    }
                    if !all || left == 0 || full {
                        break;
                    }
                }
                if !parts.is_empty() {
                    return Ok(parts);
                }
            }
            if tokio::time::timeout_at(deadline, woken.changed())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    /// Events of one partition from `from`, in order.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: i64,
        max: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let rows: Vec<(i64, Option<String>, String)> = tessera::store::query_as(
            r#"SELECT "offset", producer, event FROM events WHERE topic = $1 AND partition = $2 AND "offset" >= $3 ORDER BY "offset" LIMIT $4"#,
        )
        .bind(topic)
        .bind(i64::from(partition))
        .bind(from)
        .bind(max.clamp(1, 10_000) as i64)
        .fetch_all(self.inner.db.pool())
        .await?;
        rows.into_iter()
            .map(|(offset, producer, event)| {
                RawValue::from_string(event)
                    .map(|event| Stored {
                        offset,
                        producer,
                        event,
                    })
                    .map_err(|e| LogError::Storage(format!("stored event is not JSON: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{event, open_log};
    use super::*;

    #[tokio::test]
    async fn a_fetch_answer_stays_within_its_byte_budget() {
        let (dir, log) = open_log().await;
        // 40 events of a megabyte, one key: more than one answer may carry.
        let pad = "x".repeat(1024 * 1024);
        let big: Vec<Box<RawValue>> = (0..40)
            .map(|i| {
                RawValue::from_string(format!(
                    r#"{{"specversion":"1.0","id":"e{i}","source":"/t","type":"t","subject":"k","data":"{pad}"}}"#
                ))
                .unwrap()
            })
            .collect();
        log.publish("big", big).await.unwrap();
        let (partition, first) = log
            .fetch("big", "g", "c", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let bytes: usize = first.iter().map(|s| s.event.get().len()).sum();
        assert!(
            !first.is_empty() && first.len() < 40,
            "{} events",
            first.len()
        );
        assert!(bytes <= MAX_FETCH_BYTES, "{bytes} bytes");
        let next = first.last().unwrap().offset + 1;
        log.commit("big", "g", "c", partition, next).await.unwrap();
        let (_, rest) = log
            .fetch("big", "g", "c", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest[0].offset, next, "the rest follows, in order");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_busy_partition_cannot_take_every_fetch() {
        let (dir, log) = open_log().await;
        // A backlog on every partition, each longer than a fetch's `max`.
        log.publish(
            "orders",
            (0..400)
                .map(|i| event(&format!("e{i}"), &format!("order-{i}")))
                .collect(),
        )
        .await
        .unwrap();
        let mut first = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let parts = log
                .fetch_parts("orders", "g", "c1", 10, Duration::ZERO, true)
                .await
                .unwrap();
            assert_eq!(parts.iter().map(|p| p.1.len()).sum::<usize>(), 10);
            first.insert(parts[0].0);
        }
        assert_eq!(
            first.len(),
            4,
            "each partition is read first in turn: {first:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn fetch_waits_for_new_events() {
        let (dir, log) = open_log().await;
        assert!(
            log.fetch("t", "g", "c", 10, Duration::from_millis(20))
                .await
                .unwrap()
                .is_none()
        );
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.fetch("t", "g", "c", 10, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.publish("t", vec![event("x", "k")]).await.unwrap();
        let (_, got) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
