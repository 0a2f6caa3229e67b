//! Dead letters: an event a consumer gives up on goes to its group's dead-letter topic
//! (`deadletter.<group>`) with why, how often it was tried, and where the original is, so that
//! an operator can see it and replay it (the log takes the producer from the original, not
//! from the dead letter: `docs/security.md`).

use std::time::Duration;

use tokio::sync::watch;

use super::{Consumer, ConsumerEnv};
use crate::{BusError, Delivery, Event, dead_letter_topic};

/// How much of an invalid event's text its dead letter keeps.
const RAW_KEPT: usize = 64 * 1024;

impl Consumer {
    /// Publishes the event, with why it failed, to the group's dead-letter topic.
    pub(super) async fn dead_letter(
        &self,
        env: &ConsumerEnv,
        event: &Event,
        error: &str,
        attempts: u32,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let mut dead = event.clone();
        dead.extensions
            .insert("deadlettergroup".into(), self.group.clone().into());
        dead.extensions
            .insert("deadlettertopic".into(), self.topic.clone().into());
        dead.extensions
            .insert("deadlettererror".into(), error.into());
        dead.extensions
            .insert("deadletterattempts".into(), attempts.into());
        // Where the original is, so that a replay can take its producer from the log rather
        // than from what this consumer says.
        if let Some(d) = &event.delivery {
            dead.extensions
                .insert("deadletterpartition".into(), d.partition.into());
            dead.extensions
                .insert("deadletteroffset".into(), d.offset.into());
        }
        let topic = dead_letter_topic(&self.group);
        let since = tessera_trace::unix_now_ms();
        let mut tries = 0;
        loop {
            tries += 1;
            match env.bus.publish(&topic, std::slice::from_ref(&dead)).await {
                Ok(()) => {
                    env.stuck.clear(&self.topic, &self.group, event);
                    metrics::counter!("tessera_events_dead_lettered_total", "topic" => self.topic.clone()).increment(1);
                    return true;
                }
                // Too large with its attributes: the dead letter goes without the data (a
                // replay publishes the original from the log, not the dead letter).
                Err(BusError::TooLarge(_)) if !dead.data.is_null() => {
                    dead.data = serde_json::Value::Null;
                    dead.extensions
                        .insert("deadletterdatadropped".into(), true.into());
                }
                Err(e) => {
                    if e.is_retryable() {
                        tracing::warn!(error = %e, "cannot dead-letter yet; retrying");
                    } else {
                        // Refused for what it is: it will not pass by itself. Held, and shown.
                        tracing::error!(id = %event.id, error = %e, "the log refuses this dead letter; the event is stuck");
                        env.stuck.failing(
                            &self.topic,
                            &self.group,
                            event,
                            tries,
                            &e.to_string(),
                            since,
                        );
                    }
                    if *stop.borrow() {
                        env.stuck.clear(&self.topic, &self.group, event);
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Dead-letters what the log delivered at `partition`/`offset` that is not a CloudEvent,
    /// wrapped in one (`tessera.invalid`, its text as `data.raw`) with why; `false` if it
    /// stopped first.
    pub(super) async fn dead_letter_invalid(
        &self,
        env: &ConsumerEnv,
        partition: u32,
        offset: i64,
        why: &str,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        // `why` is the parser's message, then the event's text: the message alone goes to the
        // log line and the error, and the text (at most RAW_KEPT bytes of it) into the dead
        // letter, so that neither a log line nor the dead letter can outgrow what takes it.
        let (error, raw) = why.split_once('\n').unwrap_or((why, ""));
        let mut cut = raw.len().min(RAW_KEPT);
        while !raw.is_char_boundary(cut) {
            cut -= 1;
        }
        tracing::error!(topic = %self.topic, partition, offset, error, "not a CloudEvent; dead-lettering");
        let mut wrapper = Event::new(
            "/tessera/consumer",
            "tessera.invalid",
            &format!("{}/{partition}/{offset}", self.topic),
            serde_json::json!({ "raw": &raw[..cut], "rawBytes": raw.len() }),
        );
        wrapper.delivery = Some(Delivery {
            partition,
            offset,
            producer: None,
        });
        self.dead_letter(
            env,
            &wrapper,
            &format!("not a CloudEvent: {error}"),
            1,
            stop,
        )
        .await
    }
}
