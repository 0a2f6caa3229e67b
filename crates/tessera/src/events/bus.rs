//! The bus seam: what services need from an event log, and the control plane's implementation.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Deserialize;

use super::Event;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Events of one partition handed to a consumer, with their offsets.
#[derive(Debug, Default)]
pub struct Batch {
    /// `None` when nothing arrived within the wait.
    pub partition: Option<u32>,
    pub events: Vec<(i64, Result<Event, String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The log refused the request (a bad event or topic): retrying the same will not help.
    #[error("the event log refused: {0}")]
    Refused(String),
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

    /// Up to `max` events of one partition `consumer` holds in `group`, from the committed
    /// offset, waiting up to `wait` for some.
    fn fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Batch, BusError>>;

    /// Marks everything before `offset` on `partition` as handled by `group`.
    fn commit<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), BusError>>;
}

/// The control plane's embedded log, over HTTP.
#[derive(Clone)]
pub struct ControlBus {
    base: String,
    http: reqwest::Client,
}

impl ControlBus {
    pub fn new(control_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client builds");
        Self {
            base: control_url.trim_end_matches('/').to_string(),
            http,
        }
    }

    async fn post(
        &self,
        path: String,
        body: String,
        timeout: Duration,
    ) -> Result<bytes::Bytes, BusError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Err(match status.as_u16() {
            409 => BusError::Lost(text),
            400..=499 => BusError::Refused(text),
            _ => BusError::Unavailable(text),
        })
    }
}

#[derive(Deserialize)]
struct Fetched<'a> {
    partition: Option<u32>,
    #[serde(borrow)]
    events: Vec<Delivered<'a>>,
}

#[derive(Deserialize)]
struct Delivered<'a> {
    offset: i64,
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
}

impl Bus for ControlBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let body = serde_json::to_string(&serde_json::json!({ "events": events }))
                .map_err(|e| BusError::Refused(e.to_string()))?;
            self.post(
                format!("/v1/topics/{topic}/events"),
                body,
                Duration::from_secs(10),
            )
            .await
            .map(drop)
        })
    }

    fn fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Batch, BusError>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "group": group, "consumer": consumer, "max": max, "waitMs": wait.as_millis() as u64,
            })
            .to_string();
            let bytes = self
                .post(
                    format!("/v1/topics/{topic}/fetch"),
                    body,
                    wait + Duration::from_secs(10),
                )
                .await?;
            let fetched: Fetched<'_> = serde_json::from_slice(&bytes)
                .map_err(|e| BusError::Unavailable(format!("bad fetch answer: {e}")))?;
            Ok(Batch {
                partition: fetched.partition,
                events: fetched
                    .events
                    .into_iter()
                    .map(|d| {
                        (
                            d.offset,
                            serde_json::from_str(d.event.get())
                                .map_err(|e| format!("{e}: {}", d.event.get())),
                        )
                    })
                    .collect(),
            })
        })
    }

    fn commit<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let body = serde_json::json!({ "group": group, "consumer": consumer, "partition": partition, "offset": offset })
                .to_string();
            self.post(
                format!("/v1/topics/{topic}/commit"),
                body,
                Duration::from_secs(10),
            )
            .await
            .map(drop)
        })
    }
}
