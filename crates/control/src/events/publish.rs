//! Publishing: checking that each event is a CloudEvent, choosing its key, and handing the
//! batch to the appender.
//!
//! The key decides the partition, so events of one aggregate stay in order: the CloudEvent's
//! `partitionkey`, else its `subject`, else its `id`. Only the attributes the log needs are
//! parsed; the event is stored as it came.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::appender::{Append, Write};
use super::error::LogError;
use super::log::EventLog;
use super::topic::check_name;

/// The attributes of a CloudEvent the log looks at. Each is borrowed from the event unless it
/// has an escape (which any JSON string may have): the log reads them as its consumers do.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partitionkey: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    _type: Cow<'a, str>,
    #[serde(borrow, rename = "source")]
    _source: Cow<'a, str>,
}

impl EventLog {
    /// Appends `events` (CloudEvents, JSON) to `topic` as published by `producer` (who the
    /// caller authenticated as, `service:<name>`); returns once they are on disk, with the
    /// partition and offset of each.
    pub async fn publish_as(
        &self,
        producer: &str,
        topic: &str,
        events: Vec<Box<RawValue>>,
    ) -> Result<Vec<(u32, i64)>, LogError> {
        check_name(topic)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut keyed = Vec::with_capacity(events.len());
        for (i, raw) in events.into_iter().enumerate() {
            keyed.push((event_key(i, &raw)?, raw));
        }
        self.inner
            .appender
            .write(|reply| {
                Write::Append(Append {
                    topic: topic.to_string(),
                    producer: producer.to_string(),
                    events: keyed,
                    reply,
                })
            })
            .await
    }
}

/// The key of the `i`th event of a publish, once it is known to be a CloudEvent; what the log
/// checks of every event it appends (public for the fuzz targets).
pub fn event_key(i: usize, raw: &RawValue) -> Result<String, LogError> {
    let head: Head<'_> = serde_json::from_str(raw.get())
        .map_err(|e| LogError::Invalid(format!("event {i} is not a CloudEvent: {e}")))?;
    if head.specversion != "1.0" {
        return Err(LogError::Invalid(format!(
            "event {i}: specversion must be \"1.0\""
        )));
    }
    if head.id.is_empty() {
        return Err(LogError::Invalid(format!(
            "event {i}: id must not be empty"
        )));
    }
    Ok(head
        .partitionkey
        .or(head.subject)
        .unwrap_or(head.id)
        .into_owned())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{event, open_log};
    use super::*;

    #[test]
    fn attributes_with_escapes_are_read_as_the_consumer_reads_them() {
        // Found by fuzzing (cloudevent): the attributes were read as borrowed text, which
        // refused a CloudEvent whose specversion, type or source has an escape (`\/`,
        // `\u00e9`, `\\`), as JSON writers may write any string, though consumers read it.
        let json = r#"{"specversion":"1\u002e0","id":"a\"b","source":"\/shop\/order","type":"shop.order\\x","subject":"o-\u00e9"}"#;
        let raw = RawValue::from_string(json.into()).unwrap();
        let event: tessera::events::Event = serde_json::from_str(json).unwrap();
        assert_eq!(event_key(0, &raw).unwrap(), event.key());
        assert_eq!(event.key(), "o-\u{e9}");
    }

    #[tokio::test]
    async fn bad_input_is_refused() {
        let (dir, log) = open_log().await;
        let not_ce = RawValue::from_string(r#"{"hello":1}"#.into()).unwrap();
        assert!(matches!(
            log.publish("t", vec![not_ce]).await,
            Err(LogError::Invalid(_))
        ));
        let v2 = RawValue::from_string(
            r#"{"specversion":"2.0","id":"a","source":"s","type":"t"}"#.into(),
        )
        .unwrap();
        assert!(matches!(
            log.publish("t", vec![v2]).await,
            Err(LogError::Invalid(_))
        ));
        assert!(matches!(
            log.publish("bad topic!", vec![event("a", "k")]).await,
            Err(LogError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
