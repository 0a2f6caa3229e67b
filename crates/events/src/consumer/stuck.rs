//! Events a consumer will not give up on and cannot get through: a saga's compensations, and
//! dead letters the log refuses (say, a topic the service may not dead-letter to).
//!
//! A compensation undoes what a saga did (stock reserved, a payment authorized); dead-lettered,
//! it would leave that in place until someone replays it by hand. So a consumer retries one
//! until it is done, however long that takes (backing off to a few seconds between tries, and
//! holding its partition: order per key holds). Past the consumer's `max_attempts` it is
//! **stuck**: logged as an error on every try, counted (`tessera_events_stuck`, a gauge to
//! alert on) and listed by the service's `GET /status/events`, until it goes through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::Event;

/// Whether `event` must be retried until it is done rather than dead-lettered.
pub fn retried_until_done(event: &Event) -> bool {
    event
        .extensions
        .get("sagacompensation")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}

/// Topic, group and event id.
type Key = (String, String, String);

/// The stuck events of a service's consumers.
#[derive(Clone, Default)]
pub struct Stuck {
    events: Arc<Mutex<BTreeMap<Key, StuckEvent>>>,
}

/// One stuck event.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StuckEvent {
    pub topic: String,
    pub group: String,
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub attempts: u32,
    /// The last failure.
    pub error: String,
    /// When it was first tried (unix ms).
    pub since: i64,
}

impl Stuck {
    /// Records that `event` failed again after `attempts` tries.
    pub(super) fn failing(
        &self,
        topic: &str,
        group: &str,
        event: &Event,
        attempts: u32,
        error: &str,
        since: i64,
    ) {
        let mut events = self.lock();
        events.insert(
            (topic.to_string(), group.to_string(), event.id.clone()),
            StuckEvent {
                topic: topic.to_string(),
                group: group.to_string(),
                id: event.id.clone(),
                ty: event.ty.clone(),
                attempts,
                error: error.to_string(),
                since,
            },
        );
        metrics::gauge!("tessera_events_stuck").set(events.len() as f64);
    }

    /// `event` went through (or the consumer stopped working on it).
    pub(super) fn clear(&self, topic: &str, group: &str, event: &Event) {
        let mut events = self.lock();
        if events
            .remove(&(topic.to_string(), group.to_string(), event.id.clone()))
            .is_some()
        {
            metrics::gauge!("tessera_events_stuck").set(events.len() as f64);
        }
    }

    /// Every stuck event.
    pub fn list(&self) -> Vec<StuckEvent> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, StuckEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}
