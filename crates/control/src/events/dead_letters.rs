//! Dead letters: the events a consumer group gave up on, which its consumers publish to the
//! group's dead-letter topic (`tessera::events::dead_letter_topic`) with `deadletter*`
//! attributes saying where they came from and why. Here they are listed and replayed.
//!
//! Replay reads the dead-letter topic as a group of its own (`tessera-replay`), so each
//! dead letter is published again once, even across calls. A dead letter is the consumer's
//! word, so its producer is not taken from it: replay finds the original where the dead
//! letter says it was (`deadlettertopic`, `deadletterpartition`, `deadletteroffset`, in a
//! dead letter of the group being replayed), checks
//! that it is the same event, and publishes the original, as the log stored it (not the
//! consumer's copy), again as its producer. One that
//! cannot be matched to its original is left, logged and counted as skipped.

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
    /// from (without its dead-letter attributes), as its original producer; returns how many
    /// were replayed and how many skipped.
    pub async fn replay_dead_letters(&self, group: &str) -> Result<(usize, usize), LogError> {
        let topic = dead_letter_topic(group);
        let mut replayed = 0;
        let mut skipped = 0;
        while let Some((partition, events)) = self
            .fetch(&topic, "tessera-replay", "replayer", 500, Duration::ZERO)
            .await?
        {
            let Some(last) = events.last().map(|s| s.offset) else {
                break;
            };
            for stored in events {
                let found = match origin_of(stored.event.get(), group) {
                    Some(origin) => self.original_of(origin).await?,
                    None => None,
                };
                let Some((original, producer, raw)) = found else {
                    tracing::warn!(
                        group,
                        offset = stored.offset,
                        "dead letter does not match an original event; skipped"
                    );
                    skipped += 1;
                    continue;
                };
                // The original as the log stored it, not the consumer's copy of it.
                self.publish_as(&producer, &original, vec![raw]).await?;
                replayed += 1;
            }
            self.commit(&topic, "tessera-replay", "replayer", partition, last + 1)
                .await?;
        }
        Ok((replayed, skipped))
    }

    /// The topic, producer and stored event of the original of a dead letter, if the log has
    /// an event with its id where the dead letter says the original was.
    async fn original_of(
        &self,
        origin: Origin,
    ) -> Result<Option<(String, String, Box<RawValue>)>, LogError> {
        if self
            .partitions(&origin.topic)
            .is_none_or(|n| origin.partition as usize >= n)
        {
            return Ok(None);
        }
        let found = self
            .read(&origin.topic, origin.partition, origin.offset, 1)
            .await?;
        let Some(original) = found
            .into_iter()
            .next()
            .filter(|s| s.offset == origin.offset)
        else {
            return Ok(None);
        };
        let same = same_id(original.event.get(), &origin.id);
        Ok(match (same, original.producer) {
            (true, Some(producer)) => Some((origin.topic, producer, original.event)),
            _ => None,
        })
    }
}

/// Whether `event` (JSON) has id `id`.
pub(super) fn same_id(event: &str, id: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Id<'_>>(event).is_ok_and(|o| o.id == id)
}

/// Where a dead letter says its original is.
pub(super) struct Origin {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub id: String,
}

/// Where the original of dead letter `dead` (its JSON) is, if it is a dead letter of `group`
/// that says so (on either log).
pub(super) fn origin_of(dead: &str, group: &str) -> Option<Origin> {
    let dead: serde_json::Map<String, serde_json::Value> = serde_json::from_str(dead).ok()?;
    if dead.get("deadlettergroup").and_then(|v| v.as_str()) != Some(group) {
        return None;
    }
    Some(Origin {
        topic: dead.get("deadlettertopic")?.as_str()?.to_string(),
        partition: u32::try_from(dead.get("deadletterpartition")?.as_u64()?).ok()?,
        offset: dead.get("deadletteroffset")?.as_i64()?,
        id: dead.get("id")?.as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{event, open_log};
    use super::*;

    /// The dead letter of event `id` that was at `partition`/`offset` of `from`.
    fn dead_letter(id: &str, from: &str, (partition, offset): (u32, i64)) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"t","subject":"k","deadlettergroup":"g","deadlettertopic":"{from}","deadletterpartition":{partition},"deadletteroffset":{offset},"deadlettererror":"boom","deadletterattempts":3}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn dead_letters_are_listed_and_replayed_once_as_their_originals_producer() {
        let (dir, log) = open_log().await;
        let at = log
            .publish_as(
                "service:order",
                "orders",
                vec![event("a", "k"), event("b", "k")],
            )
            .await
            .unwrap();
        let without_topic = RawValue::from_string(
            r#"{"specversion":"1.0","id":"x","source":"/test","type":"t","subject":"k"}"#.into(),
        )
        .unwrap();
        // What a consumer made up: an event "forged" said to be where "a" is.
        log.publish_as(
            "service:consumer",
            &dead_letter_topic("g"),
            vec![
                dead_letter("a", "orders", at[0]),
                // The consumer's copy of "b" with its own subject: the original goes out.
                RawValue::from_string(
                    dead_letter("b", "orders", at[1])
                        .get()
                        .replace(r#""subject":"k""#, r#""subject":"evil""#),
                )
                .unwrap(),
                dead_letter("forged", "orders", at[0]),
                without_topic,
            ],
        )
        .await
        .unwrap();
        assert_eq!(log.dead_letters("g").await.unwrap().len(), 4);
        assert!(log.dead_letters("other").await.unwrap().is_empty());

        assert_eq!(log.replay_dead_letters("g").await.unwrap(), (2, 2));
        let replayed = log.read("orders", at[0].0, at[1].1 + 1, 10).await.unwrap();
        assert_eq!(replayed.len(), 2);
        for s in &replayed {
            assert!(!s.event.get().contains("deadletter"), "{}", s.event.get());
            assert!(!s.event.get().contains("forged"), "{}", s.event.get());
            assert!(!s.event.get().contains("evil"), "{}", s.event.get());
            assert_eq!(s.producer.as_deref(), Some("service:order"));
        }
        // Replayed once: a second replay finds nothing new, and the list keeps them.
        assert_eq!(log.replay_dead_letters("g").await.unwrap(), (0, 0));
        assert_eq!(log.dead_letters("g").await.unwrap().len(), 4);
        let _ = std::fs::remove_dir_all(dir);
    }
}
