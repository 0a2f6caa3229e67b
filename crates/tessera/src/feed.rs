//! Live feeds: a signed-in user's new rows (a notification, an alert), pushed on a WebSocket
//! the moment they are recorded, so that a page needs no polling. One mechanism for every
//! service that keeps such rows: the service says how to read a page of them ([`Rows`]), and
//! gets the feed and its handler.
//!
//! Protocol (JSON text frames): the service sends `{"type":"ready"}` once the feed is open,
//! then `{"type":"<Rows::KIND>","data":{…}}` per row; a client may send `{"type":"ping"}` and
//! hears `{"type":"pong"}`. Other text is answered with `{"type":"error","message":…}`; the
//! socket stays open. A reader too slow for the feed hears `{"type":"lagged","data":{"missed":
//! n}}` (the service's list API has every row). The gateway authenticates the upgrade like any
//! request (a route with `websocket = true`), and closes an idle or too-old socket
//! (`docs/gateway.md`). A browser, which cannot set `Authorization` on a WebSocket, offers its
//! token as a subprotocol: `new WebSocket(url, ["tessera", "bearer." + token])`; the gateway
//! takes it there and forwards only `tessera`, which the feed answers with.
//!
//! Rows are recorded by whichever replica handled the event that made them, so the feed does
//! not listen in-process: one task per replica reads what was recorded since it last looked
//! (only while someone is listening, every 200 ms), page by page in (created, id) order so
//! that a burst of any size is read whole, and hands each row to the sockets of its user on
//! that replica (a channel per user listening: a burst of other users' rows, a news item's
//! ten thousand alerts, never crowds out a user's own). Reads overlap by [`Rows::overlap`], since a replica's
//! transaction can commit after a later-stamped one; what was already handed on is remembered
//! for that window and not sent twice. (A replica whose clock runs more than the overlap ahead
//! of the others' would make the feed skip their rows; the list API has them all.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::events::BoxFuture;
use crate::{ApiError, Caller, Db, DbError};

/// How often the recorded rows are read while someone listens.
pub const POLL: Duration = Duration::from_millis(200);
/// The most rows one read takes; a burst larger is read page by page.
const PAGE: i64 = 500;

/// A row as a feed reads it: whose it is, its `created` and id (the order it is read in), and
/// what the socket is sent.
pub struct Row<T> {
    pub user: String,
    pub created: i64,
    pub id: String,
    pub item: T,
}

/// How a service's rows are read.
pub trait Rows: Send + Sync + 'static {
    type Item: Serialize + Send + Sync + 'static;
    /// What a frame of this feed is called (`notification`, `alert`).
    const KIND: &'static str;
    /// How far back each read looks, in `created`'s unit.
    const OVERLAP: i64;

    /// The rows after `(created, id)` in that order, at most `limit`.
    fn page<'a>(
        &'a self,
        db: &'a Db,
        created: i64,
        id: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Row<Self::Item>>, DbError>>;

    /// `created` of a row recorded now.
    fn now(&self) -> i64;
}

type Sender<T> = broadcast::Sender<Arc<Row<T>>>;

/// The users listening on this replica, each with their channel, and whoever listens to all.
struct Listeners<T> {
    users: Mutex<HashMap<String, Sender<T>>>,
    all: Sender<T>,
}

impl<T> Listeners<T> {
    fn anyone(&self) -> bool {
        self.all.receiver_count() > 0
            || !self
                .users
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }

    fn send(&self, row: Row<T>) {
        let row = Arc::new(row);
        if let Some(tx) = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&row.user)
        {
            let _ = tx.send(row.clone());
        }
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(row);
        }
    }
}

/// New rows, to the sockets of this replica.
pub struct Feed<R: Rows> {
    listeners: Arc<Listeners<R::Item>>,
}

impl<R: Rows> Clone for Feed<R> {
    fn clone(&self) -> Self {
        Self {
            listeners: self.listeners.clone(),
        }
    }
}

/// One user's rows, for as long as it is held.
pub struct Subscription<T> {
    rx: broadcast::Receiver<Arc<Row<T>>>,
    listeners: Arc<Listeners<T>>,
    user: String,
}

impl<T> Subscription<T> {
    /// The user's next row.
    pub async fn recv(&mut self) -> Result<Arc<Row<T>>, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let mut users = self
            .listeners
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // This one's receiver still counts: the user's last one leaves.
        if users
            .get(&self.user)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            users.remove(&self.user);
        }
    }
}

impl<R: Rows> Feed<R> {
    /// Starts reading recorded rows for as long as the service runs.
    pub fn start(db: Db, rows: R) -> Self {
        let feed = Self {
            listeners: Arc::new(Listeners {
                users: Mutex::default(),
                all: broadcast::channel(4096).0,
            }),
        };
        let listeners = feed.listeners.clone();
        tokio::spawn(async move { poll(db, rows, listeners).await });
        feed
    }

    /// Every new row, whoever's it is (an operator's view, and the tests').
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Row<R::Item>>> {
        self.listeners.all.subscribe()
    }

    /// Whether any socket listens on this replica.
    pub fn anyone_listening(&self) -> bool {
        self.listeners.anyone()
    }

    /// `user`'s new rows.
    pub fn subscribe_user(&self, user: &str) -> Subscription<R::Item> {
        let mut users = self
            .listeners
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let rx = users
            .entry(user.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe();
        Subscription {
            rx,
            listeners: self.listeners.clone(),
            user: user.to_string(),
        }
    }
}

async fn poll<R: Rows>(db: Db, rows: R, tx: Arc<Listeners<R::Item>>) {
    let mut since = rows.now();
    // Ids handed on, with their `created`: kept while a read may still return them.
    let mut seen: HashSet<(i64, String)> = HashSet::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !tx.anyone() {
            // Nobody listens: nothing to send, and what is recorded now is not news later.
            since = rows.now();
            seen.clear();
            continue;
        }
        // Page through everything from the window's start, by (created, id): a burst
        // larger than a page is read whole, and the window moves on after it.
        let mut cursor = (since - R::OVERLAP, String::new());
        loop {
            let page = match rows.page(&db, cursor.0, &cursor.1, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, feed = R::KIND, "live feed: cannot read new rows");
                    break;
                }
            };
            let full = page.len() as i64 == PAGE;
            for row in page {
                cursor = (row.created, row.id.clone());
                since = since.max(row.created);
                if !seen.insert((row.created, row.id.clone())) {
                    continue;
                }
                tx.send(row);
            }
            if !full {
                break;
            }
            // Let the sockets take this page before the next one is handed to them.
            tokio::task::yield_now().await;
        }
        seen.retain(|(created, _)| *created >= since - R::OVERLAP);
    }
}

/// The WebSocket handshake of a feed, for a signed-in caller only.
pub async fn live<R: Rows>(
    State(feed): State<Feed<R>>,
    caller: Caller,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let rx = feed.subscribe_user(&caller.id);
    // A browser offers `tessera` beside its access token (which the gateway takes and does
    // not forward): it must hear one of the protocols it offered back.
    Ok(upgrade
        .protocols(["tessera"])
        .max_message_size(16 * 1024)
        .on_upgrade(move |socket| session::<R>(socket, rx)))
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

/// One caller's socket: their new rows out, pings answered.
async fn session<R: Rows>(mut socket: WebSocket, mut rows: Subscription<R::Item>) {
    if !send::<()>(&mut socket, "ready", None).await {
        return;
    }
    loop {
        tokio::select! {
            row = rows.recv() => match row {
                Ok(r) => {
                    if !send(&mut socket, R::KIND, Some(&r.item)).await {
                        return;
                    }
                }
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
