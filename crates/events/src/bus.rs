//! The bus seam: what services need from an event log, and the control plane's implementation.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::Event;

mod control;
mod nats;

pub use control::{ControlBus, read_fetch_answer};
pub use nats::{
    Grants, NATS_IDENTITY, NatsBus, NatsSettings, ServerTls, Stored, User, inbox_prefix,
    message_id, permissions, server_config,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Events handed to a consumer: of each partition it holds that had some, with their
/// offsets. Empty when nothing arrived within the wait.
#[derive(Debug, Default)]
pub struct Batch {
    pub parts: Vec<Part>,
    /// How long the consumer holds these partitions without fetching again or renewing
    /// ([`Bus::renew`]); `None` when the log does not say (it holds them until the next fetch).
    pub lease: Option<Duration>,
}

/// The events of one partition, in offset order.
#[derive(Debug)]
pub struct Part {
    pub partition: u32,
    pub events: Vec<(i64, Result<Event, String>)>,
}

impl Batch {
    /// How many events, in all partitions.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.events.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.events.is_empty())
    }
}

/// What a commit-and-fetch exchange gave: the commit's outcome (`None` when there was no
/// commit or its outcome is unknown) and the batch.
pub type Fetched = (Option<Result<(), BusError>>, Result<Batch, BusError>);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The log refused the request (a bad event or topic): retrying the same will not help.
    #[error("the event log refused: {0}")]
    Refused(String),
    /// This process may not do that on that topic (the manifest does not grant it): retrying
    /// will not help until the system's declaration changes.
    #[error("the event log forbids it: {0}")]
    Forbidden(String),
    /// The request was larger than the log takes: split it, or the event alone is too large.
    #[error("too large for the event log: {0}")]
    TooLarge(String),
    /// The partition moved to another consumer (its lease lapsed): fetch again.
    #[error("partition no longer held: {0}")]
    Lost(String),
    /// The log could not be reached or did not answer: retry.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
}

impl BusError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }
}

/// An event log with topics, partitions and consumer groups.
pub trait Bus: Send + Sync + 'static {
    /// Appends `events` to `topic`; returns once the log has stored them.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// The largest publish request the log takes, in bytes (the events' JSON and a few bytes
    /// around them): the outbox relay packs its batches to fit.
    fn max_publish_bytes(&self) -> usize {
        crate::wire::MAX_PUBLISH_BYTES
    }

    /// Appends events already written as CloudEvent JSON (as the outbox stores them), without
    /// reading them into [`Event`]s and writing them again when the log takes JSON anyway.
    fn publish_json<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let events = events
                .iter()
                .map(|json| serde_json::from_str(json))
                .collect::<Result<Vec<Event>, _>>()
                .map_err(|e| BusError::Refused(format!("not a CloudEvent: {e}")))?;
            self.publish(topic, &events).await
        })
    }

    /// Up to `max` events in all of the partitions `consumer` holds in `group`, each from its
    /// committed offset, waiting up to `wait` for some.
    fn fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Batch, BusError>>;

    /// Keeps the partitions `consumer` holds in `group` for another lease while it is still at
    /// work on a batch of them (a handler retrying); the partitions it still holds. A log
    /// without leases holds them anyway.
    fn renew<'a>(
        &'a self,
        _topic: &'a str,
        _group: &'a str,
        _consumer: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u32>, BusError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// `consumer` stops consuming: what it holds in `group` is given to the others at once
    /// rather than when its lease runs out. A log that hands partitions over by itself needs
    /// nothing.
    fn leave<'a>(
        &'a self,
        _topic: &'a str,
        _group: &'a str,
        _consumer: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    /// Marks everything before `offset` on `partition` as handled by `group`.
    fn commit<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// Commits the previous batch (a `(partition, offset)` per partition it had events of),
    /// then fetches: a log that can do both in one exchange saves a round trip per batch. The
    /// commits' outcome (the first failure, if any) comes back with the batch; `None` when
    /// there were none or it is unknown (the exchange failed).
    fn commit_and_fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        commits: &'a [(u32, i64)],
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(async move {
            let mut committed = None;
            for &(partition, offset) in commits {
                let outcome = self.commit(topic, group, consumer, partition, offset).await;
                if !matches!(committed, Some(Err(_))) {
                    committed = Some(outcome);
                }
            }
            (
                committed,
                self.fetch(topic, group, consumer, max, wait).await,
            )
        })
    }
}
