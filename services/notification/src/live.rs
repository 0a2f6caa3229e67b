//! The live feed: `GET /api/notifications/live`, a WebSocket on which a signed-in customer
//! receives each new message the moment it is recorded, so that a page needs no polling.
//!
//! Protocol (JSON text frames): the service sends `{"type":"ready"}` once the feed is open,
//! then `{"type":"notification","data":{…}}` per message (the list API's fields); a client may
//! send `{"type":"ping"}` and hears `{"type":"pong"}`. Other text is answered with
//! `{"type":"error","message":…}`; the socket stays open. The gateway authenticates the
//! upgrade like any request, and closes an idle or too-old socket (`docs/gateway.md`).
//!
//! Messages are recorded by whichever replica handled the order event, so the feed does not
//! listen in-process: one task per replica reads what was recorded since it last looked
//! (only while someone is listening, every 200 ms), page by page in (created, id) order so
//! that a burst of any size is read whole, and hands each message to that replica's sockets,
//! each of which keeps its caller's. Reads overlap by a few seconds, since a replica's
//! transaction can commit after a later-stamped one; what was already handed on is
//! remembered for that window and not sent twice. (A replica whose clock runs more than the
//! overlap ahead of the others' would make the feed skip their messages; the list API has
//! them all.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;
use tessera::{ApiError, Caller, Db};
use tokio::sync::broadcast;

use crate::http::View;

/// How often the recorded messages are read while someone listens.
const POLL: Duration = Duration::from_millis(200);
/// How far back each read looks, in seconds (`created` is in seconds).
const OVERLAP: i64 = 5;

/// New messages, to every socket of this replica.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Recorded>>,
}

/// A recorded message and whose it is.
#[derive(Debug)]
pub struct Recorded {
    user_id: String,
    view: View,
}

impl Feed {
    /// Starts reading recorded messages for as long as the service runs.
    pub fn start(db: Db) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let feed = Self { tx };
        let sender = feed.tx.clone();
        tokio::spawn(async move { poll(db, sender).await });
        feed
    }
}

async fn poll(db: Db, tx: broadcast::Sender<Arc<Recorded>>) {
    let mut since = now();
    // Ids handed on, with their `created`: kept while a read may still return them.
    let mut seen: HashSet<(i64, String)> = HashSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.receiver_count() == 0 {
            // Nobody listens: nothing to send, and what is recorded now is not news later.
            since = now();
            seen.clear();
            continue;
        }
        // Page through everything from the window's start, by (created, id): a burst
        // larger than a page is read whole, and the window moves on after it.
        let mut cursor = (since - OVERLAP, String::new());
        loop {
            let rows: Vec<(String, String, String, String, String, String, i64)> =
                match tessera::store::query_as(
                    "SELECT user_id, id, order_id, kind, subject, body, created FROM notifications
                     WHERE created >= $1 AND NOT (created = $1 AND id <= $2)
                     ORDER BY created, id LIMIT 500",
                )
                .bind(cursor.0)
                .bind(&cursor.1)
                .fetch_all(db.pool())
                .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "live feed: cannot read new messages");
                        break;
                    }
                };
            let full = rows.len() == 500;
            for (user_id, id, order_id, kind, subject, body, created) in rows {
                let view = View::from((id, order_id, kind, subject, body, created));
                cursor = (view.created, view.id.clone());
                since = since.max(view.created);
                if !seen.insert((view.created, view.id.clone())) {
                    continue;
                }
                let _ = tx.send(Arc::new(Recorded { user_id, view }));
            }
            if !full {
                break;
            }
            // Let the sockets take this page before the next one is handed to them.
            tokio::task::yield_now().await;
        }
        seen.retain(|(created, _)| *created >= since - OVERLAP);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `GET /api/notifications/live`: the WebSocket handshake, for a signed-in customer only.
pub async fn live(
    State(feed): State<Feed>,
    caller: Caller,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let rx = feed.tx.subscribe();
    Ok(upgrade
        .max_message_size(16 * 1024)
        .on_upgrade(move |socket| session(socket, caller.id, rx)))
}

#[derive(Serialize)]
struct Frame<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

async fn send<T: Serialize>(socket: &mut WebSocket, kind: &str, data: Option<T>) -> bool {
    let text = serde_json::to_string(&Frame { kind, data }).unwrap_or_default();
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// One customer's socket: their new messages out, pings answered.
async fn session(mut socket: WebSocket, user: String, mut rx: broadcast::Receiver<Arc<Recorded>>) {
    if !send::<()>(&mut socket, "ready", None).await {
        return;
    }
    loop {
        tokio::select! {
            recorded = rx.recv() => match recorded {
                Ok(r) if r.user_id == user => {
                    if !send(&mut socket, "notification", Some(&r.view)).await {
                        return;
                    }
                }
                Ok(_) => {}
                // Too slow a reader: it missed some; the list API has them all.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    if !send(&mut socket, "lagged", Some(json!({ "missed": n }))).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let ping = serde_json::from_str::<serde_json::Value>(&text)
                        .is_ok_and(|v| v["type"] == "ping");
                    let sent = if ping {
                        send::<()>(&mut socket, "pong", None).await
                    } else {
                        send(&mut socket, "error", Some(json!({ "message": "send {\"type\":\"ping\"} or nothing" }))).await
                    };
                    if !sent {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // binary, ping and pong frames: nothing to say
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera::store::query;
    use tessera::testing::TempDb;

    use super::*;
    use crate::schema::MIGRATIONS;

    #[tokio::test]
    async fn a_burst_larger_than_a_page_reaches_the_feed_whole_and_once() {
        let db = TempDb::new("notification", MIGRATIONS).await;
        let feed = Feed::start((*db).clone());
        let mut rx = feed.tx.subscribe();
        tokio::time::sleep(POLL * 2).await; // the feed is listening from here
        // 1100 messages in one second (more than two pages of 500, and more than a read of
        // 1000 took before), in one transaction.
        let mut tx = db.write_tx().await.unwrap();
        for i in 0..1100 {
            query(
                "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
                 VALUES ($1, $2, $3, 'order_confirmed', 'recorded', 's', 'b', $4)",
            )
            .bind(format!("n{i:04}"))
            .bind(format!("o{i}"))
            .bind(if i % 2 == 0 { "ann" } else { "bob" })
            .bind(now())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let mut ids = std::collections::HashSet::new();
        while ids.len() < 1100 {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of 1100 came", ids.len()))
                .unwrap();
            assert!(
                ids.insert(got.view.id.clone()),
                "{} came twice",
                got.view.id
            );
        }
        // Nothing more: the overlap of later reads sends none of them again.
        tokio::time::sleep(POLL * 3).await;
        assert!(rx.try_recv().is_err());
    }
}
