//! CloudEvents 1.0, JSON format.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use tessera_trace::{REQUEST, TraceContext};

/// A CloudEvent. `subject` is the aggregate id and orders events: events with the same
/// subject (or `partitionkey`, when set) are delivered in the order they were published.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    /// W3C trace context extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Partitioning extension: overrides `subject` as the ordering key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitionkey: Option<String>,
    /// Any other extension attributes.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// Where the log delivered it from, and who published it: set by the bus on delivery,
    /// never part of the event's JSON (its publisher wrote that, so it proves nothing).
    #[serde(skip)]
    pub delivery: Option<Delivery>,
}

/// How an event reached a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: i64,
    /// The publisher, as the log authenticated it (`service:<name>`); `None` for an event
    /// stored before the log authenticated publishers.
    pub producer: Option<String>,
}

impl Event {
    /// A new event about `subject`, in the current trace (when inside a request or a handler).
    pub fn new(source: &str, ty: &str, subject: &str, data: impl Serialize) -> Self {
        let traceparent = REQUEST.try_with(|r| r.trace.header()).ok();
        Self {
            specversion: "1.0".into(),
            id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            ty: ty.into(),
            subject: Some(subject.into()),
            time: Some(tessera_trace::rfc3339_now()),
            datacontenttype: Some("application/json".into()),
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
            traceparent,
            partitionkey: None,
            extensions: BTreeMap::new(),
            delivery: None,
        }
    }

    /// The data, as `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }

    /// The trace this event belongs to.
    pub fn trace(&self) -> Option<TraceContext> {
        self.traceparent.as_deref().and_then(TraceContext::parse)
    }

    /// The ordering key.
    pub fn key(&self) -> &str {
        self.partitionkey
            .as_deref()
            .or(self.subject.as_deref())
            .unwrap_or(&self.id)
    }
}

/// The partition of `partitions` that events with `key` go to (FNV-1a: stable across builds
/// and platforms, so a key keeps its partition across upgrades and on every bus).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_a_cloudevent() {
        let e = Event::new(
            "/shop/order",
            "shop.order.placed",
            "o-1",
            serde_json::json!({"total": 5}),
        );
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "shop.order.placed");
        assert_eq!(v["subject"], "o-1");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["total"], 5);
        assert!(v.get("traceparent").is_none(), "no trace outside a request");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.key(), "o-1");
    }

    #[test]
    fn numbers_in_the_data_arrive_as_they_were_sent() {
        // Found by fuzzing (cloudevent): serde_json's default float parsing is best-effort, so
        // a number that an event was written with (the shortest text for it) could read back
        // as its neighbour, and a consumer saw other data than the producer sent.
        let e = Event::new(
            "s",
            "t",
            "k",
            serde_json::json!({"total": 1.0888888888888889e105}),
        );
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.data, e.data);
    }

    #[test]
    fn carries_the_current_trace_and_extensions() {
        let trace = TraceContext::new_root();
        let ctx = tessera_trace::RequestContext {
            passport: http::HeaderValue::from_static("p"),
            trace,
            deadline: None,
        };
        let e = REQUEST.sync_scope(ctx, || Event::new("s", "t", "k", ()));
        assert_eq!(e.trace().unwrap().trace_id, trace.trace_id);
        let mut v = serde_json::to_value(&e).unwrap();
        v["deadlettererror"] = "boom".into();
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back.extensions["deadlettererror"], "boom");
    }
}
