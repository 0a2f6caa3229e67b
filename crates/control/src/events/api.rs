//! The event log's HTTP API (`docs/events.md`).
//!
//! | call | body → answer |
//! |---|---|
//! | `POST /v1/topics/{topic}/events` | `{"events": [CloudEvent…]}` → `{"offsets": [{"partition","offset"}…]}`, once on disk |
//! | `POST /v1/topics/{topic}/fetch` | `{"group","consumer","max","waitMs","commit"?: {"partition","offset"}}` → `{"partition", "events": [{"offset","event"}…], "commitError"?: {"status","code","message"}}` (the commit, if any, first) |
//! | `POST /v1/topics/{topic}/commit` | `{"group","consumer","partition","offset"}` → 200, or 409 when the partition moved |
//! | `POST /v1/topics/{topic}/renew` | `{"group","consumer"}` → `{"partitions": [...]}`: the member's partitions, kept for another lease |
//! | `GET /v1/topics` | topics, partition ends, groups' committed offsets |
//! | `GET /v1/topics/{topic}/events?partition=&from=&limit=` | browse a partition |
//! | `GET /v1/deadletters/{group}` | the group's dead letters, each with its error |
//! | `POST /v1/deadletters/{group}/replay` | publish them again to their topics → `{"replayed": n}` |
//!
//! Errors are `tessera::ApiError`s (`{"code","message"}`, as every Tessera server answers); how
//! each [`LogError`] maps to one is decided once, below.

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use tessera::ApiError;
use tessera::events::wire::{
    CommitRequest, Delivered, ErrorBody, FetchAnswer, FetchRequest, MAX_PUBLISH_BYTES, Part,
    Position, PublishAnswer, PublishRequest, RenewAnswer, RenewRequest, default_max,
};

use super::backend::Log;
use super::error::LogError;
use super::fetch::Stored;
use super::groups::GroupError;
use crate::policy::Caller;

pub fn routes(log: Log) -> Router {
    Router::new()
        .route("/v1/topics", get(describe))
        .route(
            "/v1/topics/{topic}/events",
            post(publish)
                .layer(DefaultBodyLimit::max(MAX_PUBLISH_BYTES))
                .get(browse),
        )
        .route("/v1/topics/{topic}/fetch", post(fetch))
        .route("/v1/topics/{topic}/commit", post(commit))
        .route("/v1/topics/{topic}/renew", post(renew))
        .route("/v1/deadletters/{group}", get(dead_letters))
        .route("/v1/deadletters/{group}/replay", post(replay))
        .with_state(log)
}

async fn publish(
    State(log): State<Log>,
    caller: Caller,
    Path(topic): Path<String>,
    tessera::Json(body): tessera::Json<PublishRequest<Vec<Box<RawValue>>>>,
) -> Result<Json<PublishAnswer>, ApiError> {
    caller.may_produce(&topic)?;
    let offsets = log
        .publish_as(&caller.principal.to_string(), &topic, body.events)
        .await?;
    Ok(Json(PublishAnswer {
        offsets: offsets
            .into_iter()
            .map(|(partition, offset)| Position { partition, offset })
            .collect(),
    }))
}

async fn fetch(
    State(log): State<Log>,
    caller: Caller,
    Path(topic): Path<String>,
    tessera::Json(body): tessera::Json<FetchRequest<'static>>,
) -> Result<Response, ApiError> {
    if body.group.is_empty() || body.consumer.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "group and consumer must not be empty",
        ));
    }
    caller.may_consume(&topic, &body.group)?;
    // The first commit the log refuses is reported; the others are still made.
    let mut commit_error = None;
    for c in body.commit.iter().chain(body.commits.iter()) {
        let committed = log
            .commit_lazily(&topic, &body.group, &body.consumer, c.partition, c.offset)
            .await;
        if let (Err(e), None) = (committed, &commit_error) {
            let e = ApiError::from(e);
            commit_error = Some(ErrorBody {
                status: Some(e.status.as_u16()),
                code: e.code.into(),
                message: e.message,
            });
        }
    }
    let wait = Duration::from_millis(body.wait_ms.min(30_000));
    let parts = log
        .fetch_parts(
            &topic,
            &body.group,
            &body.consumer,
            body.max,
            wait,
            body.all,
        )
        .await?;
    // Written straight from the stored events (no JSON tree in between).
    let delivered: Vec<Part<'_>> = parts
        .iter()
        .map(|(partition, events)| Part {
            partition: *partition,
            events: events.iter().map(delivered).collect(),
        })
        .collect();
    let mut more = delivered.into_iter();
    let first = more.next();
    Ok(Json(FetchAnswer {
        partition: first.as_ref().map(|p| p.partition),
        events: first.map_or_else(Vec::new, |p| p.events),
        more: more.collect(),
        commit_error,
        lease_ms: Some(log.lease().as_millis() as u64),
    })
    .into_response())
}

async fn renew(
    State(log): State<Log>,
    caller: Caller,
    Path(topic): Path<String>,
    tessera::Json(b): tessera::Json<RenewRequest<'static>>,
) -> Result<Json<RenewAnswer>, ApiError> {
    caller.may_consume(&topic, &b.group)?;
    let partitions = log.renew(&topic, &b.group, &b.consumer).await?;
    Ok(Json(RenewAnswer { partitions }))
}

/// A stored event as the log hands it out: its producer beside it.
fn delivered(s: &Stored) -> Delivered<'_> {
    Delivered {
        offset: s.offset,
        producer: s.producer.as_deref().map(Into::into),
        event: &s.event,
    }
}

async fn commit(
    State(log): State<Log>,
    caller: Caller,
    Path(topic): Path<String>,
    tessera::Json(b): tessera::Json<CommitRequest<'static>>,
) -> Result<StatusCode, ApiError> {
    caller.may_consume(&topic, &b.group)?;
    log.commit(&topic, &b.group, &b.consumer, b.partition, b.offset)
        .await?;
    Ok(StatusCode::OK)
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
    State(log): State<Log>,
    caller: Caller,
    Path(topic): Path<String>,
    query: Result<Query<BrowseQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.may_inspect()?;
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "invalid_query",
            "partition, from and limit are whole numbers",
        ));
    };
    match log.partitions(&topic).await {
        None => return Ok(Json(serde_json::json!({ "events": [] })).into_response()),
        Some(n) if q.partition as usize >= n => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("topic has {n} partitions"),
            ));
        }
        Some(_) => {}
    }
    let events = log.read(&topic, q.partition, q.from, q.limit).await?;
    let delivered: Vec<Delivered<'_>> = events.iter().map(delivered).collect();
    Ok(Json(serde_json::json!({ "partition": q.partition, "events": delivered })).into_response())
}

async fn dead_letters(
    State(log): State<Log>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.may_inspect()?;
    let all = log.dead_letters(&group).await?;
    let items: Vec<serde_json::Value> = all
        .iter()
        .map(|(partition, s)| serde_json::json!({ "partition": partition, "offset": s.offset, "producer": s.producer, "event": &s.event }))
        .collect();
    Ok(Json(
        serde_json::json!({ "group": group, "deadLetters": items }),
    ))
}

async fn replay(
    State(log): State<Log>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.may_replay()?;
    let (replayed, skipped) = log.replay_dead_letters(&group).await?;
    // An operator's action: audited in the log.
    tracing::info!(target: "audit", who = %caller.principal, group = %group, replayed, skipped, "dead letters replayed");
    Ok(Json(
        serde_json::json!({ "replayed": replayed, "skipped": skipped }),
    ))
}

async fn describe(
    State(log): State<Log>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.may_inspect()?;
    let topics: Vec<serde_json::Value> = log
        .describe()
        .await?
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
    Ok(Json(serde_json::json!({ "topics": topics })))
}

/// What the caller is told when the log refuses or fails: a bad event or topic is theirs, a
/// partition that moved is a conflict, and storage failures are logged and answered without
/// their detail.
impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Invalid(m) => ApiError::bad_request("invalid_event", m),
            LogError::Group(g @ GroupError::NotHolder(_)) => {
                ApiError::conflict("not_holder", g.to_string())
            }
            LogError::Group(g) => ApiError::bad_request("invalid_commit", g.to_string()),
            LogError::Storage(m) => {
                tracing::error!(error = %m, "event log storage failed");
                ApiError::unavailable("the event log cannot store right now")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera::events::{Bus, BusError, ControlBus, Event};

    use super::super::testing::open_log;
    use crate::testing::Served;

    /// The API on a port of its own, behind the credential check, where service `g` produces
    /// and consumes the tests' topics.
    async fn serve_api() -> Served {
        let (_, log) = open_log().await;
        crate::testing::serve(
            super::routes(super::Log::Embedded(log)),
            crate::testing::policy("g", &["t", "t.events", "t.spread"]),
        )
        .await
    }

    /// A bus client of the API, as service `g`.
    async fn serve() -> ControlBus {
        let served = serve_api().await;
        ControlBus::new(&served.url, &served.credential("service:g"))
    }

    /// The status, content type and body of a POST of `body` to `path`, as `who`.
    async fn post(served: &Served, who: &str, path: &str, body: &str) -> (u16, String, String) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", served.url))
            .header("authorization", served.credential(who).authorization())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        (status, kind, response.text().await.unwrap())
    }

    #[tokio::test]
    async fn refusals_are_json_with_a_code_and_a_message() {
        let url = serve_api().await;
        let (status, kind, body) = post(
            &url,
            "service:g",
            "/v1/topics/t/events",
            r#"{"events":[{"specversion":"2.0","id":"a","source":"s","type":"t"}]}"#,
        )
        .await;
        assert_eq!((status, kind.as_str()), (400, "application/json"));
        assert_eq!(
            body,
            r#"{"code":"invalid_event","message":"event 0: specversion must be \"1.0\""}"#
        );
        let (status, _, body) = post(
            &url,
            "service:g",
            "/v1/topics/t/fetch",
            r#"{"group":"","consumer":"c"}"#,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            r#"{"code":"invalid_body","message":"group and consumer must not be empty"}"#
        );
        let (status, _, body) = post(
            &url,
            "service:g",
            "/v1/topics/t/commit",
            r#"{"group":"g","consumer":"c","partition":0,"offset":1}"#,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            r#"{"code":"invalid_commit","message":"no such partition 0"}"#
        );
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
            .commit_and_fetch("t.spread", "g.2", "c1", &[], 7, wait)
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

    #[tokio::test]
    async fn the_log_knows_who_publishes_and_lets_each_only_its_own() {
        let served = serve_api().await;
        let event = r#"{"events":[{"specversion":"1.0","id":"e1","source":"/x","type":"t","subject":"k","producer":"service:admin"}]}"#;
        // Nobody without a credential.
        let anonymous = reqwest::Client::new()
            .post(format!("{}/v1/topics/t/events", served.url))
            .header("content-type", "application/json")
            .body(event)
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status().as_u16(), 401);
        // Only the topics a service produces, and consumes in groups of its own.
        for (who, path, body, status) in [
            ("service:other", "/v1/topics/t/events", event, 403),
            ("gateway", "/v1/topics/t/events", event, 403),
            ("service:g", "/v1/topics/elsewhere/events", event, 403),
            (
                "service:g",
                "/v1/topics/t/fetch",
                r#"{"group":"other","consumer":"c"}"#,
                403,
            ),
            (
                "service:g",
                "/v1/topics/t/fetch",
                r#"{"group":"gx","consumer":"c"}"#,
                403,
            ),
            (
                "service:other",
                "/v1/topics/t/fetch",
                r#"{"group":"other","consumer":"c"}"#,
                403,
            ),
            (
                "service:g",
                "/v1/topics/t/commit",
                r#"{"group":"other","consumer":"c","partition":0,"offset":0}"#,
                403,
            ),
            ("service:g", "/v1/deadletters/g/replay", "", 403),
            ("supervisor", "/v1/deadletters/g/replay", "", 403),
            ("service:g", "/v1/topics/t/events", event, 200),
        ] {
            let (got, _, answer) = post(&served, who, path, body).await;
            assert_eq!(got, status, "{who} {path}: {answer}");
        }
        for (who, status) in [
            ("service:g", 403),
            ("gateway", 403),
            ("supervisor", 200),
            ("admin", 200),
        ] {
            let read = reqwest::Client::new()
                .get(format!("{}/v1/topics", served.url))
                .header("authorization", served.credential(who).authorization())
                .send()
                .await
                .unwrap();
            assert_eq!(read.status().as_u16(), status, "{who}");
        }
        // Delivered with the producer the log authenticated, whatever the event says.
        let bus = ControlBus::new(&served.url, &served.credential("service:g"));
        let batch = bus
            .fetch("t", "g", "c1", 10, Duration::from_millis(200))
            .await
            .unwrap();
        let (_, event) = &batch.parts[0].events[0];
        let event = event.as_ref().unwrap();
        assert_eq!(event.id, "e1");
        assert_eq!(
            event.delivery.as_ref().unwrap().producer.as_deref(),
            Some("service:g")
        );
    }
}
