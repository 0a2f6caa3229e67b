//! The event log's HTTP API (`docs/events.md`).
//!
//! | call | body → answer |
//! |---|---|
//! | `POST /v1/topics/{topic}/events` | `{"events": [CloudEvent…]}` → `{"offsets": [{"partition","offset"}…]}`, once on disk |
//! | `POST /v1/topics/{topic}/fetch` | `{"group","consumer","max","waitMs"}` → `{"partition", "events": [{"offset","event"}…]}` |
//! | `POST /v1/topics/{topic}/commit` | `{"group","consumer","partition","offset"}` → 200, or 409 when the partition moved |
//! | `GET /v1/topics` | topics, partition ends, groups' committed offsets |
//! | `GET /v1/topics/{topic}/events?partition=&from=&limit=` | browse a partition |
//! | `GET /v1/deadletters/{group}` | the group's dead letters, each with its error |
//! | `POST /v1/deadletters/{group}/replay` | publish them again to their topics → `{"replayed": n}` |

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::GroupError;
use super::store::{EventLog, LogError};

pub fn routes(log: EventLog) -> Router {
    Router::new()
        .route("/v1/topics", get(describe))
        .route("/v1/topics/{topic}/events", post(publish).get(browse))
        .route("/v1/topics/{topic}/fetch", post(fetch))
        .route("/v1/topics/{topic}/commit", post(commit))
        .route("/v1/deadletters/{group}", get(dead_letters))
        .route("/v1/deadletters/{group}/replay", post(replay))
        .with_state(log)
}

#[derive(Deserialize)]
struct PublishBody {
    events: Vec<Box<RawValue>>,
}

#[derive(Serialize)]
struct Position {
    partition: u32,
    offset: i64,
}

async fn publish(
    State(log): State<EventLog>,
    Path(topic): Path<String>,
    tessera::Json(body): tessera::Json<PublishBody>,
) -> Response {
    match log.publish(&topic, body.events).await {
        Ok(offsets) => Json(serde_json::json!({
            "offsets": offsets.into_iter().map(|(partition, offset)| Position { partition, offset }).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => log_error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FetchBody {
    group: String,
    consumer: String,
    #[serde(default = "default_max")]
    max: usize,
    #[serde(default)]
    wait_ms: u64,
}

fn default_max() -> usize {
    100
}

#[derive(Serialize)]
struct Delivered<'a> {
    offset: i64,
    event: &'a RawValue,
}

async fn fetch(
    State(log): State<EventLog>,
    Path(topic): Path<String>,
    tessera::Json(body): tessera::Json<FetchBody>,
) -> Response {
    if body.group.is_empty() || body.consumer.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "group and consumer must not be empty",
        );
    }
    let wait = Duration::from_millis(body.wait_ms.min(30_000));
    match log
        .fetch(&topic, &body.group, &body.consumer, body.max, wait)
        .await
    {
        Ok(Some((partition, events))) => {
            let delivered: Vec<Delivered<'_>> = events
                .iter()
                .map(|s| Delivered {
                    offset: s.offset,
                    event: &s.event,
                })
                .collect();
            Json(serde_json::json!({ "partition": partition, "events": delivered })).into_response()
        }
        Ok(None) => Json(serde_json::json!({ "partition": null, "events": [] })).into_response(),
        Err(e) => log_error(e),
    }
}

#[derive(Deserialize)]
struct CommitBody {
    group: String,
    consumer: String,
    partition: u32,
    offset: i64,
}

async fn commit(
    State(log): State<EventLog>,
    Path(topic): Path<String>,
    tessera::Json(b): tessera::Json<CommitBody>,
) -> Response {
    match log
        .commit(&topic, &b.group, &b.consumer, b.partition, b.offset)
        .await
    {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => log_error(e),
    }
}

#[derive(Deserialize)]
struct BrowseQuery {
    #[serde(default)]
    partition: u32,
    #[serde(default)]
    from: i64,
    #[serde(default = "default_max")]
    limit: usize,
}

async fn browse(
    State(log): State<EventLog>,
    Path(topic): Path<String>,
    query: Result<Query<BrowseQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "partition, from and limit are whole numbers",
        );
    };
    match log.partitions(&topic) {
        None => return Json(serde_json::json!({ "events": [] })).into_response(),
        Some(n) if q.partition as usize >= n => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                &format!("topic has {n} partitions"),
            );
        }
        Some(_) => {}
    }
    match log.read(&topic, q.partition, q.from, q.limit).await {
        Ok(events) => {
            let delivered: Vec<Delivered<'_>> = events
                .iter()
                .map(|s| Delivered {
                    offset: s.offset,
                    event: &s.event,
                })
                .collect();
            Json(serde_json::json!({ "partition": q.partition, "events": delivered }))
                .into_response()
        }
        Err(e) => log_error(e),
    }
}

async fn dead_letters(State(log): State<EventLog>, Path(group): Path<String>) -> Response {
    let topic = format!("deadletter.{group}");
    let mut all = Vec::new();
    for partition in 0..log.partitions(&topic).unwrap_or(0) as u32 {
        match log.read(&topic, partition, 0, 10_000).await {
            Ok(events) => all.extend(events.into_iter().map(|s| (partition, s))),
            Err(e) => return log_error(e),
        }
    }
    let items: Vec<serde_json::Value> = all
        .iter()
        .map(|(partition, s)| serde_json::json!({ "partition": partition, "offset": s.offset, "event": &s.event }))
        .collect();
    Json(serde_json::json!({ "group": group, "deadLetters": items })).into_response()
}

async fn replay(State(log): State<EventLog>, Path(group): Path<String>) -> Response {
    match log.replay_dead_letters(&group).await {
        Ok(n) => Json(serde_json::json!({ "replayed": n })).into_response(),
        Err(e) => log_error(e),
    }
}

async fn describe(State(log): State<EventLog>) -> Response {
    let topics: Vec<serde_json::Value> = log
        .describe()
        .into_iter()
        .map(|(name, ends, groups)| {
            let groups: serde_json::Map<String, serde_json::Value> = groups
                .into_iter()
                .map(|(g, committed)| {
                    let lag: i64 = ends.iter().zip(&committed).map(|(e, c)| e - c).sum();
                    (g, serde_json::json!({ "committed": committed, "lag": lag }))
                })
                .collect();
            serde_json::json!({ "name": name, "ends": ends, "groups": groups })
        })
        .collect();
    Json(serde_json::json!({ "topics": topics })).into_response()
}

fn log_error(e: LogError) -> Response {
    match e {
        LogError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid_event", &m),
        LogError::Group(g @ GroupError::NotHolder(_)) => {
            error(StatusCode::CONFLICT, "not_holder", &g.to_string())
        }
        LogError::Group(g) => error(StatusCode::BAD_REQUEST, "invalid_commit", &g.to_string()),
        LogError::Storage(m) => {
            tracing::error!(error = %m, "event log storage failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event log cannot store right now",
            )
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}
