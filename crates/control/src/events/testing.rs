//! Fixtures of the event log's unit tests.

use std::path::PathBuf;

use serde_json::value::RawValue;

use super::config::LogConfig;
use super::log::EventLog;

impl EventLog {
    /// Appends `events` to `topic` as `service:test`.
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<Box<RawValue>>,
    ) -> Result<Vec<(u32, i64)>, super::error::LogError> {
        self.publish_as("service:test", topic, events).await
    }
}

/// A CloudEvent with `id`, keyed by `subject`.
pub fn event(id: &str, subject: &str) -> Box<RawValue> {
    RawValue::from_string(format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"t","subject":"{subject}","data":{{"n":1}}}}"#
    ))
    .unwrap()
}

/// A directory of its own for one test's log.
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tessera-log-{}", uuid::Uuid::new_v4()))
}

/// A log with the default tuning in a directory of its own (returned, to reopen or remove).
pub async fn open_log() -> (PathBuf, EventLog) {
    let dir = temp_dir();
    let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
    (dir, log)
}
