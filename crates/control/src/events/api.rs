//! The event log's HTTP API (`docs/events.md`).
//!
//! | call | body → answer |
//! |---|---|
//! | `POST /v1/topics/{topic}/events` | `{"events": [CloudEvent…]}` → `{"offsets": [{"partition","offset"}…]}`, once on disk |
//! | `POST /v1/topics/{topic}/fetch` | `{"group","consumer","max","waitMs","commit"?: {"partition","offset"}}` → `{"partition", "events": [{"offset","event"}…], "commitError"?: {"status","code","message"}}` (the commit, if any, first) |
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
use serde::Deserialize;
use serde_json::value::RawValue;
use tessera::events::wire::{
    CommitRequest, Delivered, ErrorBody, FetchAnswer, FetchRequest, Part, Position, PublishAnswer,
    PublishRequest, default_max,
};

use super::error::LogError;
use super::groups::GroupError;
use super::log::EventLog;

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

async fn publish(
    State(log): State<EventLog>,
    Path(topic): Path<String>,
    tessera::Json(body): tessera::Json<PublishRequest<Vec<Box<RawValue>>>>,
) -> Response {
    match log.publish(&topic, body.events).await {
        Ok(offsets) => Json(PublishAnswer {
            offsets: offsets
                .into_iter()
                .map(|(partition, offset)| Position { partition, offset })
                .collect(),
        })
        .into_response(),
        Err(e) => log_error(e),
    }
}

async fn fetch(
    State(log): State<EventLog>,
    Path(topic): Path<String>,
    tessera::Json(body): tessera::Json<FetchRequest<'static>>,
) -> Response {
    if body.group.is_empty() || body.consumer.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "group and consumer must not be empty",
        );
    }
    // The first commit the log refuses is reported; the others are still made.
    let mut commit_error = None;
    for c in body.commit.iter().chain(body.commits.iter()) {
        let committed = log
            .commit_lazily(&topic, &body.group, &body.consumer, c.partition, c.offset)
            .await;
        if let (Err(e), None) = (committed, &commit_error) {
            let (status, code, message) = error_parts(e);
            commit_error = Some(ErrorBody {
                status: Some(status.as_u16()),
                code: code.into(),
                message,
            });
        }
    }
    let wait = Duration::from_millis(body.wait_ms.min(30_000));
    let parts = match log
        .fetch_parts(
            &topic,
            &body.group,
            &body.consumer,
            body.max,
            wait,
            body.all,
        )
        .await
    {
        Ok(parts) => parts,
        Err(e) => return log_error(e),
    };
    // Written straight from the stored events (no JSON tree in between).
    let delivered: Vec<Part<'_>> = parts
        .iter()
        .map(|(partition, events)| Part {
            partition: *partition,
            events: events
                .iter()
                .map(|s| Delivered {
                    offset: s.offset,
                    event: &s.event,
                })
                .collect(),
        })
        .collect();
    let mut more = delivered.into_iter();
    let first = more.next();
    Json(FetchAnswer {
        partition: first.as_ref().map(|p| p.partition),
        events: first.map_or_else(Vec::new, |p| p.events),
        more: more.collect(),
        commit_error,
    })
    .into_response()
}

async fn commit(
    State(log): State<EventLog>,
    Path(topic): Path<String>,
    tessera::Json(b): tessera::Json<CommitRequest<'static>>,
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
    let all = match log.dead_letters(&group).await {
        Ok(all) => all,
        Err(e) => return log_error(e),
    };
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
    let (status, code, message) = error_parts(e);
    error(status, code, &message)
}

fn error_parts(e: LogError) -> (StatusCode, &'static str, String) {
    match e {
        LogError::Invalid(m) => (StatusCode::BAD_REQUEST, "invalid_event", m),
        LogError::Group(g @ GroupError::NotHolder(_)) => {
            (StatusCode::CONFLICT, "not_holder", g.to_string())
        }
        LogError::Group(g) => (StatusCode::BAD_REQUEST, "invalid_commit", g.to_string()),
        LogError::Storage(m) => {
            tracing::error!(error = %m, "event log storage failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event log cannot store right now".to_string(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera::events::{Bus, BusError, ControlBus, Event};

    use super::super::testing::open_log;

    async fn serve() -> ControlBus {
        let (_, log) = open_log().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, super::routes(log)).await });
        ControlBus::new(&url)
    }

    fn offsets(batch: &tessera::events::Batch) -> Vec<(u32, i64)> {
        batch
            .parts
            .iter()
            .flat_map(|p| p.events.iter().map(|e| (p.partition, e.0)))
            .collect()
    }

    #[tokio::test]
    async fn a_commit_travels_with_the_next_fetch() {
        let bus = serve().await;
        let events: Vec<Event> = (0..3).map(|i| Event::new("t", "x", "key", i)).collect();
        bus.publish("t.events", &events).await.unwrap();
        let wait = Duration::from_millis(200);

        let (committed, batch) = bus
            .commit_and_fetch("t.events", "g", "c1", &[], 2, wait)
            .await;
        assert!(committed.is_none());
        let batch = batch.unwrap();
        let partition = batch.parts[0].partition;
        assert_eq!(offsets(&batch), [(partition, 0), (partition, 1)]);

        // Committing 2 and fetching in one exchange hands out what follows.
        let (committed, batch) = bus
            .commit_and_fetch("t.events", "g", "c1", &[(partition, 2)], 10, wait)
            .await;
        assert!(matches!(committed, Some(Ok(()))));
        assert_eq!(offsets(&batch.unwrap()), [(partition, 2)]);

        // A commit the log refuses comes back with the batch, which is still served.
        let (committed, batch) = bus
            .commit_and_fetch("t.events", "g", "c1", &[(partition, 99)], 10, wait)
            .await;
        assert!(
            matches!(committed, Some(Err(BusError::Refused(_)))),
            "{committed:?}"
        );
        assert!(batch.is_ok());
        let (committed, _) = bus
            .commit_and_fetch("t.events", "g", "someone-else", &[(partition, 3)], 10, wait)
            .await;
        assert!(
            matches!(committed, Some(Err(BusError::Lost(_)))),
            "{committed:?}"
        );

        // Everything is committed now: nothing is left to hand out.
        let (_, batch) = bus
            .commit_and_fetch("t.events", "g", "c1", &[(partition, 3)], 10, wait)
            .await;
        assert!(batch.unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_fetch_carries_every_held_partition_and_commits_them_all() {
        let bus = serve().await;
        // Keys spread over the topic's partitions.
        let events: Vec<Event> = (0..40)
            .map(|i| Event::new("t", "x", &format!("key-{i}"), i))
            .collect();
        bus.publish("t.spread", &events).await.unwrap();
        let wait = Duration::from_millis(200);

        let (_, batch) = bus
            .commit_and_fetch("t.spread", "g", "c1", &[], 1000, wait)
            .await;
        let batch = batch.unwrap();
        assert!(batch.parts.len() > 1, "{} partition(s)", batch.parts.len());
        assert_eq!(
            batch.len(),
            40,
            "every held partition's events in one answer"
        );
        for part in &batch.parts {
            let got: Vec<i64> = part.events.iter().map(|e| e.0).collect();
            assert_eq!(got, (0..got.len() as i64).collect::<Vec<_>>(), "in order");
        }
        // The total is bounded by `max`, across partitions.
        let (_, capped) = bus
            .commit_and_fetch("t.spread", "g2", "c1", &[], 7, wait)
            .await;
        assert_eq!(capped.unwrap().len(), 7);

        // One commit per partition, in the next exchange: nothing is handed out again.
        let commits: Vec<(u32, i64)> = batch
            .parts
            .iter()
            .map(|p| (p.partition, p.events.last().unwrap().0 + 1))
            .collect();
        let (committed, next) = bus
            .commit_and_fetch("t.spread", "g", "c1", &commits, 1000, wait)
            .await;
        assert!(matches!(committed, Some(Ok(()))), "{committed:?}");
        assert!(next.unwrap().is_empty());
    }
}
