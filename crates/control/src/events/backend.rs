//! Which log the event API stands in front of: the embedded one ([`EventLog`]), or NATS
//! JetStream when the system's events are there (`system.bus`, `docs/scale-out.md`).
//!
//! The API is the same either way, so that services in other languages, the CLI and an
//! operator's scripts (publish, fetch, browse, dead letters and their replay) do not change
//! when the system moves to NATS. On NATS the control plane publishes as the service that
//! called it (which it authenticated), and is a group member on behalf of HTTP consumers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tessera::events::{Bus, BusError, NatsBus, dead_letter_topic};

use super::dead_letters::{Origin, origin_of, same_id};
use super::error::LogError;
use super::fetch::Stored;
use super::groups::GroupError;
use super::log::{EventLog, TopicState};

#[derive(Clone)]
pub enum Log {
    Embedded(EventLog),
    Nats(Arc<NatsBus>),
}

impl From<BusError> for LogError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Refused(m) | BusError::Forbidden(m) | BusError::TooLarge(m) => {
                LogError::Invalid(m)
            }
            BusError::Lost(m) => LogError::Storage(format!("partition moved: {m}")),
            BusError::Unavailable(m) => LogError::Storage(m),
        }
    }
}

fn raw(json: String) -> Result<Box<RawValue>, LogError> {
    RawValue::from_string(json).map_err(|e| LogError::Storage(format!("not JSON: {e}")))
}

fn from_nats(s: tessera::events::Stored) -> Result<Stored, LogError> {
    Ok(Stored {
        offset: s.offset,
        producer: s.producer,
        event: raw(s.event)?,
    })
}

/// The service name in `service:<name>`.
fn token(producer: &str) -> Result<&str, LogError> {
    producer
        .strip_prefix("service:")
        .ok_or_else(|| LogError::Invalid(format!("{producer} is not a service")))
}

impl Log {
    pub async fn publish_as(
        &self,
        producer: &str,
        topic: &str,
        events: Vec<Box<RawValue>>,
    ) -> Result<Vec<(u32, i64)>, LogError> {
        match self {
            Log::Embedded(log) => log.publish_as(producer, topic, events).await,
            Log::Nats(bus) => {
                let json: Vec<&str> = events.iter().map(|e| e.get()).collect();
                // A dead letter's message id is the delivery it comes from (a replayed event
                // that fails again is a new dead letter, not a duplicate).
                let ids: Option<Vec<String>> = topic.starts_with("deadletter.").then(|| {
                    json.iter()
                        .map(|j| {
                            serde_json::from_str::<tessera::events::Event>(j)
                                .map(|e| tessera::events::nats::message_id(&e))
                                .unwrap_or_default()
                        })
                        .collect()
                });
                Ok(bus
                    .publish_as(token(producer)?, topic, &json, ids.as_deref())
                    .await?)
            }
        }
    }

    pub async fn commit(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), LogError> {
        match self {
            Log::Embedded(log) => log.commit(topic, group, consumer, partition, offset).await,
            Log::Nats(bus) => nats_commit(bus, topic, group, consumer, partition, offset).await,
        }
    }

    /// A commit that travels with a fetch.
    pub async fn commit_lazily(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), LogError> {
        match self {
            Log::Embedded(log) => {
                log.commit_lazily(topic, group, consumer, partition, offset)
                    .await
            }
            Log::Nats(bus) => nats_commit(bus, topic, group, consumer, partition, offset).await,
        }
    }

    pub async fn fetch_parts(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
        all: bool,
    ) -> Result<Vec<(u32, Vec<Stored>)>, LogError> {
        match self {
            Log::Embedded(log) => {
                log.fetch_parts(topic, group, consumer, max, wait, all)
                    .await
            }
            Log::Nats(bus) => {
                let batch = bus.fetch(topic, group, consumer, max, wait).await?;
                let mut parts = Vec::with_capacity(batch.parts.len());
                for part in batch.parts {
                    let mut events = Vec::with_capacity(part.events.len());
                    for (offset, event) in part.events {
                        let (producer, json) = match event {
                            Ok(e) => (
                                e.delivery.as_ref().and_then(|d| d.producer.clone()),
                                serde_json::to_string(&e).expect("an event serializes"),
                            ),
                            // Not a CloudEvent: handed out as it is, if it is JSON at all.
                            Err(why) => (
                                None,
                                why.split_once('\n').map_or("null", |(_, t)| t).to_string(),
                            ),
                        };
                        events.push(Stored {
                            offset,
                            producer,
                            event: raw(json).or_else(|_| raw("null".into()))?,
                        });
                    }
                    parts.push((part.partition, events));
                }
                Ok(parts)
            }
        }
    }

    pub fn lease(&self) -> Duration {
        match self {
            Log::Embedded(log) => log.lease(),
            Log::Nats(bus) => bus.lease(),
        }
    }

    pub async fn renew(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Vec<u32>, LogError> {
        match self {
            Log::Embedded(log) => log.renew(topic, group, consumer),
            Log::Nats(bus) => Ok(bus.renew(topic, group, consumer).await?),
        }
    }

    /// How many partitions `topic` has; `None` when the log has no such topic.
    pub async fn partitions(&self, topic: &str) -> Option<usize> {
        match self {
            Log::Embedded(log) => log.partitions(topic),
            Log::Nats(bus) => Some(bus.partitions() as usize),
        }
    }

    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<Stored>, LogError> {
        match self {
            Log::Embedded(log) => log.read(topic, partition, from, limit).await,
            Log::Nats(bus) => bus
                .read(topic, partition, from, limit)
                .await?
                .into_iter()
                .map(from_nats)
                .collect(),
        }
    }

    pub async fn dead_letters(&self, group: &str) -> Result<Vec<(u32, Stored)>, LogError> {
        match self {
            Log::Embedded(log) => log.dead_letters(group).await,
            Log::Nats(bus) => {
                let topic = dead_letter_topic(group);
                let mut all = Vec::new();
                for partition in 0..bus.partitions() {
                    for s in bus.read(&topic, partition, 0, 10_000).await? {
                        all.push((partition, from_nats(s)?));
                    }
                }
                Ok(all)
            }
        }
    }

    pub async fn replay_dead_letters(&self, group: &str) -> Result<(usize, usize), LogError> {
        match self {
            Log::Embedded(log) => log.replay_dead_letters(group).await,
            Log::Nats(bus) => nats_replay(bus, group).await,
        }
    }

    pub async fn describe(&self) -> Result<Vec<TopicState>, LogError> {
        match self {
            Log::Embedded(log) => Ok(log.describe()),
            // JetStream keeps the consumers' positions; its own tools show them (`nats
            // consumer report`). Here: each topic, and the offset after its last event (its
            // partitions share one sequence).
            Log::Nats(bus) => Ok(bus
                .topics()
                .await?
                .into_iter()
                .map(|(name, _, end)| (name, vec![end], Vec::new()))
                .collect()),
        }
    }
}

async fn nats_commit(
    bus: &NatsBus,
    topic: &str,
    group: &str,
    consumer: &str,
    partition: u32,
    offset: i64,
) -> Result<(), LogError> {
    match bus.commit(topic, group, consumer, partition, offset).await {
        Err(BusError::Lost(_)) => Err(LogError::Group(GroupError::NotHolder(partition))),
        other => Ok(other?),
    }
}

/// Replays every dead letter of `group` not yet replayed: the original, read where the dead
/// letter says it was and checked to be the same event, published again as its producer
/// (the subject it was stored under says who), under a message id of its own (the
/// original's would be taken for a duplicate). How far each partition of the dead-letter
/// topic was replayed is a record beside the consumer groups, moved on by compare-and-set
/// after each dead letter, so a dead letter is replayed once even across calls; one that
/// two calls replay at once is one event, by its message id.
async fn nats_replay(bus: &NatsBus, group: &str) -> Result<(usize, usize), LogError> {
    let topic = dead_letter_topic(group);
    let record = format!("replay.{group}");
    let (mut replayed, mut skipped) = (0, 0);
    for partition in 0..bus.partitions() {
        let key = partition.to_string();
        let from = bus
            .update_record(&record, |r| r.get(&key).copied().unwrap_or(0))
            .await?;
        for dead in bus.read(&topic, partition, from, 10_000).await? {
            let original = match origin_of(&dead.event, group) {
                Some(Origin {
                    topic: original,
                    partition: at,
                    offset,
                    id,
                }) => match bus.get(&original, offset).await? {
                    Some((p, s)) if p == at && same_id(&s.event, &id) => Some((original, s)),
                    _ => None,
                },
                None => None,
            };
            match original {
                Some((original, s)) => {
                    let producer = s.producer.as_deref().map(token).transpose()?;
                    let Some(producer) = producer else {
                        skipped += 1;
                        continue;
                    };
                    let id = format!("{}.replay.{}", dead.offset, s.offset);
                    bus.publish_as(producer, &original, &[&s.event], Some(&[id]))
                        .await?;
                    replayed += 1;
                }
                None => {
                    tracing::warn!(
                        group,
                        offset = dead.offset,
                        "dead letter does not match an original event; skipped"
                    );
                    skipped += 1;
                }
            }
            let next = dead.offset + 1;
            bus.update_record(&record, |r| {
                let at = r.entry(key.clone()).or_insert(0);
                *at = (*at).max(next);
            })
            .await?;
        }
    }
    Ok((replayed, skipped))
}
