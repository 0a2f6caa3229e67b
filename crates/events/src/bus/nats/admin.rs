//! What the control plane needs of JetStream to keep its event API (`docs/events.md`) in
//! front of it: reading a partition as it is stored (browsing, dead letters, the original of
//! a dead letter), the topics there are, and a small record of how far something (a replay)
//! got, kept beside the consumer groups.

use std::collections::BTreeMap;

use async_nats::jetstream::stream;
use futures_util::StreamExt;

use super::{NatsBus, check_topic, escape};
use crate::BusError;

/// An event as JetStream stores it.
#[derive(Debug)]
pub struct Stored {
    /// The offset consumers see (its stream sequence less one).
    pub offset: i64,
    /// `service:<name>`, from the subject it was published under.
    pub producer: Option<String>,
    /// The event's JSON, as published.
    pub event: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

impl NatsBus {
    /// Makes sure the streams of `topics` (and the groups bucket) are there: the control
    /// plane declares a system's topics at start, so that services, whose NATS users may not
    /// make streams, find them.
    /// A topic whose name cannot be a stream's is skipped and said; anything else stops the
    /// declaration, to be tried again.
    pub async fn declare(&self, topics: &[String]) -> Result<(), BusError> {
        let conn = self.conn().await?;
        for topic in topics {
            if let Err(e) = check_topic(topic) {
                tracing::error!(topic, error = %e, "not declared on NATS");
                continue;
            }
            self.stream(conn, topic).await?;
        }
        Ok(())
    }

    /// Makes sure each `(topic, group)` has its durable consumer of every partition: the
    /// control plane declares the groups named after the services that consume a topic.
    pub async fn declare_groups(&self, groups: &[(String, String)]) -> Result<(), BusError> {
        let conn = self.conn().await?;
        for (topic, group) in groups {
            if check_topic(topic).is_err() {
                continue; // said by `declare`
            }
            for p in 0..self.settings.partitions {
                self.durable(conn, topic, group, p, None).await?;
            }
        }
        Ok(())
    }

    /// The topic's stream, if it has one yet.
    async fn existing(&self, topic: &str) -> Result<Option<stream::Stream>, BusError> {
        check_topic(topic)?;
        let conn = self.conn().await?;
        match conn.js.get_stream(self.stream_name(topic)).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(unavailable("cannot read the stream", e)),
        }
    }

    /// Up to `limit` events of `partition` of `topic`, from offset `from` on; none if the
    /// topic has no stream yet.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<Stored>, BusError> {
        let Some(stream) = self.existing(topic).await? else {
            return Ok(Vec::new());
        };
        let subject = format!("{}.{topic}.*.{partition}", self.settings.prefix);
        let mut next = from.max(0) as u64 + 1;
        let mut out = Vec::new();
        while out.len() < limit {
            let found = stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let message = match found {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(unavailable("cannot read the stream", e)),
            };
            next = message.sequence + 1;
            out.push(stored(message));
        }
        Ok(out)
    }

    /// The event at `offset` of `topic`, if there is one there.
    pub async fn get(&self, topic: &str, offset: i64) -> Result<Option<(u32, Stored)>, BusError> {
        let Some(stream) = self.existing(topic).await? else {
            return Ok(None);
        };
        let Some(seq) = offset.checked_add(1).and_then(|s| u64::try_from(s).ok()) else {
            return Ok(None);
        };
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(super::partition_of_subject(&m.subject).map(|p| (p, stored(m)))),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable("cannot read the stream", e)),
        }
    }

    /// Every topic with a stream under this bus's prefix, with its events' count and the
    /// offset after its last.
    pub async fn topics(&self) -> Result<Vec<(String, u64, i64)>, BusError> {
        let conn = self.conn().await?;
        let mut streams = conn.js.streams();
        let head = format!("{}-", self.settings.prefix);
        let mut out = Vec::new();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| unavailable("cannot list streams", e))?;
            let Some(escaped) = info.config.name.strip_prefix(&head) else {
                continue;
            };
            let topic = unescape(escaped);
            if escape(&topic) == escaped {
                out.push((topic, info.state.messages, info.state.last_sequence as i64));
                // (`last_sequence` is the next offset: offsets are sequences less one.)
            }
        }
        out.sort();
        Ok(out)
    }

    /// The partitions of each topic.
    pub fn partitions(&self) -> u32 {
        self.settings.partitions
    }

    /// How long a member holds its partitions without fetching or renewing.
    pub fn lease(&self) -> std::time::Duration {
        self.settings.lease
    }

    /// A record kept beside the consumer groups, changed by compare-and-set: `change` gets
    /// the record under `name` (empty if none) and says what to keep; its other result comes
    /// back once the record is written.
    pub async fn update_record<T>(
        &self,
        name: &str,
        change: impl FnMut(&mut BTreeMap<String, i64>) -> T,
    ) -> Result<T, BusError> {
        let conn = self.conn().await?;
        let key = format!("record.{}", escape(name));
        super::group::compare_and_set(&conn.groups, &key, change).await
    }
}

fn stored(m: async_nats::jetstream::message::StreamMessage) -> Stored {
    Stored {
        offset: super::offset_of(m.sequence),
        producer: super::producer_of(&m.subject).map(|p| format!("service:{p}")),
        event: String::from_utf8_lossy(&m.payload).into_owned(),
    }
}

/// The inverse of [`escape`]; a name that is not an escape's comes back different from what
/// escaping it again gives, and is not taken for a topic.
fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match (c, c == '_') {
            (_, true) => match chars.next() {
                Some('_') => out.push('_'),
                Some('-') => out.push('.'),
                Some(other) => {
                    out.push('_');
                    out.push(other);
                }
                None => out.push('_'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unescape_to_their_topics() {
        for topic in ["shop.orders", "a_b", "a._-b", "deadletter.payment"] {
            assert_eq!(unescape(&escape(topic)), topic);
        }
    }
}
