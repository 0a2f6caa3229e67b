//! Dead letters: the events a consumer group gave up on, which its consumers publish to the
//! group's dead-letter topic (`tessera::events::dead_letter_topic`) with `deadletter*`
//! attributes saying where they came from and why. Here they are listed and replayed.
//!
//! Replay reads the dead-letter topic as a group of its own (`tessera-replay`), so each
//! dead letter is published again once, even across calls.

use std::time::Duration;

use serde_json::value::RawValue;
use tessera::events::dead_letter_topic;

use super::error::LogError;
use super::fetch::Stored;
use super::log::EventLog;

impl EventLog {
    /// Every dead letter of `group`, with its partition.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<(u32, Stored)>, LogError> {
        let topic = dead_letter_topic(group);
        let mut all = Vec::new();
        for partition in 0..self.partitions(&topic).unwrap_or(0) as u32 {
            let events = self.read(&topic, partition, 0, 10_000).await?;
            all.extend(events.into_iter().map(|s| (partition, s)));
        }
        Ok(all)
    }

    /// Publishes every not yet replayed dead letter of `group` again to the topic it came
    /// from (without its dead-letter attributes); returns how many.
    pub async fn replay_dead_letters(&self, group: &str) -> Result<usize, LogError> {
        let topic = dead_letter_topic(group);
        let mut replayed = 0;
        while let Some((partition, events)) = self
            .fetch(&topic, "tessera-replay", "replayer", 500, Duration::ZERO)
            .await?
        {
            let Some(last) = events.last().map(|s| s.offset) else {
                break;
            };
            for stored in events {
                let mut event: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(stored.event.get()).map_err(|e| {
                        LogError::Storage(format!("dead letter is not an object: {e}"))
                    })?;
                let Some(serde_json::Value::String(original)) = event.remove("deadlettertopic")
                else {
                    tracing::warn!(
                        offset = stored.offset,
                        "dead letter without its topic; skipped"
                    );
                    continue;
                };
                event.retain(|k, _| !k.starts_with("deadletter"));
                let raw = RawValue::from_string(serde_json::Value::Object(event).to_string())
                    .map_err(|e| LogError::Storage(e.to_string()))?;
                self.publish(&original, vec![raw]).await?;
                replayed += 1;
            }
            self.commit(&topic, "tessera-replay", "replayer", partition, last + 1)
                .await?;
        }
        Ok(replayed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::open_log;
    use super::*;

    fn dead_letter(id: &str, from: &str) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"t","subject":"k","deadlettergroup":"g","deadlettertopic":"{from}","deadlettererror":"boom","deadletterattempts":3}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn dead_letters_are_listed_and_replayed_once_without_their_attributes() {
        let (dir, log) = open_log().await;
        let without_topic = RawValue::from_string(
            r#"{"specversion":"1.0","id":"x","source":"/test","type":"t","subject":"k"}"#.into(),
        )
        .unwrap();
        log.publish(
            &dead_letter_topic("g"),
            vec![
                dead_letter("a", "orders"),
                dead_letter("b", "orders"),
                without_topic,
            ],
        )
        .await
        .unwrap();
        assert_eq!(log.dead_letters("g").await.unwrap().len(), 3);
        assert!(log.dead_letters("other").await.unwrap().is_empty());

        assert_eq!(log.replay_dead_letters("g").await.unwrap(), 2);
        let replayed = log
            .fetch("orders", "c", "c1", 10, Duration::ZERO)
            .await
            .unwrap()
            .unwrap()
            .1;
        assert_eq!(replayed.len(), 2);
        for s in &replayed {
            assert!(!s.event.get().contains("deadletter"), "{}", s.event.get());
        }
        // Replayed once: a second replay finds nothing new, and the list keeps them.
        assert_eq!(log.replay_dead_letters("g").await.unwrap(), 0);
        assert_eq!(log.dead_letters("g").await.unwrap().len(), 3);
        let _ = std::fs::remove_dir_all(dir);
    }
}
