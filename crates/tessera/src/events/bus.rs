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

/// What a commit-and-fetch exchange gave: the commit's outcome (`None` when there was no
/// commit or its outcome is unknown) and the batch.
pub type Fetched = (Option<Result<(), BusError>>, Result<Batch, BusError>);

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

    /// Commits the previous batch (`(partition, offset)`, if any), then fetches: a log that
    /// can do both in one exchange saves a round trip per batch. The commit's outcome comes
    /// back with the batch; `None` when there was none or it is unknown (the exchange failed).
    fn commit_and_fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        commit: Option<(u32, i64)>,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(async move {
            let committed = match commit {
                Some((partition, offset)) => {
                    Some(self.commit(topic, group, consumer, partition, offset).await)
                }
                None => None,
            };
            (
                committed,
                self.fetch(topic, group, consumer, max, wait).await,
            )
        })
    }
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

    /// Appends the events in `body` (`{"events": [...]}`) to `topic`.
    async fn append(&self, topic: &str, body: String) -> Result<(), BusError> {
        self.post(
            format!("/v1/topics/{topic}/events"),
            body,
            Duration::from_secs(10),
        )
        .await
        .map(drop)
    }

    /// One fetch exchange, carrying the previous batch's commit if there is one.
    async fn fetch_with(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        commit: Option<(u32, i64)>,
        max: usize,
        wait: Duration,
    ) -> Fetched {
        let mut body = serde_json::json!({
            "group": group, "consumer": consumer, "max": max, "waitMs": wait.as_millis() as u64,
        });
        if let Some((partition, offset)) = commit {
            body["commit"] = serde_json::json!({ "partition": partition, "offset": offset });
        }
        let bytes = match self
            .post(
                format!("/v1/topics/{topic}/fetch"),
                body.to_string(),
                wait + Duration::from_secs(10),
            )
            .await
        {
            Ok(b) => b,
            Err(e) => return (None, Err(e)),
        };
        let fetched: FetchAnswer<'_> = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => {
                return (
                    None,
                    Err(BusError::Unavailable(format!("bad fetch answer: {e}"))),
                );
            }
        };
        let committed = commit.map(|_| match fetched.commit_error {
            None => Ok(()),
            Some(e) => Err(match e.status {
                409 => BusError::Lost(e.message),
                400..=499 => BusError::Refused(e.message),
                _ => BusError::Unavailable(e.message),
            }),
        });
        let batch = Batch {
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
        };
        (committed, Ok(batch))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FetchAnswer<'a> {
    partition: Option<u32>,
    #[serde(borrow)]
    events: Vec<Delivered<'a>>,
    /// Why the commit sent with the fetch failed.
    #[serde(default)]
    commit_error: Option<CommitError>,
}

#[derive(Deserialize)]
struct CommitError {
    status: u16,
    message: String,
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
            self.append(topic, body).await
        })
    }

    fn publish_json<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let mut body =
                String::with_capacity(16 + events.iter().map(|e| e.len() + 1).sum::<usize>());
            body.push_str("{\"events\":[");
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(event);
            }
            body.push_str("]}");
            self.append(topic, body).await
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
            self.fetch_with(topic, group, consumer, None, max, wait)
                .await
                .1
        })
    }

    fn commit_and_fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        commit: Option<(u32, i64)>,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(self.fetch_with(topic, group, consumer, commit, max, wait))
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
