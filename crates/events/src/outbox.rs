//! The transactional outbox and its relay.
//!
//! `add` writes an event into the `tessera_outbox` table inside the caller's transaction: it
//! exists if and only if the state change commits. The relay (one per database: replicas
//! elect one through a lease row) publishes pending events in id order, per topic, and deletes
//! them once the log has acknowledged them. A crash between publish and delete publishes them
//! again; consumers' inboxes make that harmless.
//!
//! The delete is lazy: the relay remembers the last id the log has taken and reads past it,
//! and deletes what it has published at most every [`DELETE_EVERY`] (and when it stops), in
//! one transaction. Deleting each batch as it went cost a commit per batch, and under light load
//! a batch is one event: a commit per event, for rows nobody reads again. Ids are never reused,
//! so a remembered id cannot hide a row written later: SQLite gives a new row the highest id
//! plus one, and the relay never deletes the row with the highest id: once it is published,
//! the relay empties it into a tombstone (an empty topic), which it skips. (`AUTOINCREMENT`
//! would keep ids from going back too, at the price of rewriting its counter's page in every
//! commit that adds an event.) A relay that starts (or takes the lease over) remembers
//! nothing and publishes the undeleted rows again, which is the crash case above.
//!
//! **Nothing is dropped.** A row leaves the outbox only once the log has it, or once it is
//! parked: an event the log refuses for what it is (not a CloudEvent, larger than the log
//! takes, a topic the service may not publish to) moves to `tessera_outbox_parked` with the
//! reason, is counted (`tessera_outbox_parked_total`) and logged, is listed by [`parked`]
//! (the service's `/status/outbox`), and goes out again after [`requeue`] once the cause is
//! fixed. The relay itself is `outbox/relay.rs`.

mod relay;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Notify, watch};

use super::{Bus, Event};
use relay::Relay;
use tessera_store::Db;

pub use relay::DELETE_EVERY;

/// The transaction a handler or a service writes in.
pub type Tx = tessera_store::Tx;

/// Queues `event` for `topic`, in `tx`.
pub async fn add(tx: &mut Tx, topic: &str, event: &Event) -> Result<(), tessera_store::DbError> {
    if topic.is_empty() {
        // An empty topic marks a published row (a tombstone): such a row would never go out.
        return Err(tessera_store::DbError::encode(
            "an event's topic must not be empty",
        ));
    }
    // The producer span: the event leaves under a span of its own, child of the work that
    // made it, and its consumers' spans are that span's children.
    let parent = event.trace();
    let mut producer = tessera_trace::Span::NONE;
    let json = match parent {
        Some(parent) if parent.sampled && tessera_trace::span::recording() => {
            let (mut span, ctx) =
                tessera_trace::Span::child_of(&parent, "publish", tessera_trace::Kind::Producer);
            span.rename(format!("{topic} publish"));
            span.set("messaging.system", "tessera");
            span.set("messaging.operation.type", "send");
            span.set("messaging.destination.name", topic);
            span.set("messaging.message.id", &event.id);
            span.set("cloudevents.event_type", &event.ty);
            producer = span;
            let mut event = event.clone();
            event.traceparent = Some(ctx.header());
            serde_json::to_string(&event)
        }
        _ => serde_json::to_string(event),
    }
    .map_err(tessera_store::DbError::encode)?;
    tessera_store::query("INSERT INTO tessera_outbox (topic, event, created) VALUES ($1, $2, $3)")
        .bind(topic)
        .bind(json)
        .bind(tessera_trace::unix_now() as i64)
        .execute(&mut **tx)
        .await?;
    drop(producer);
    Ok(())
}

/// A handle on the relay: wake it after committing a transaction that added events.
#[derive(Clone)]
pub struct Outbox {
    wake: Arc<Notify>,
}

impl Outbox {
    /// Starts the relay. It runs until `stop` turns true, then publishes what is pending
    /// (within a few seconds) and ends.
    pub fn start(
        db: Db,
        bus: Arc<dyn Bus>,
        holder: String,
        stop: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let wake = Arc::new(Notify::new());
        let relay = Relay {
            db,
            bus,
            holder,
            wake: wake.clone(),
            lease_until: 0,
            published: 0,
            deleted: 0,
            gone: String::new(),
            deleted_at: tokio::time::Instant::now(),
        };
        (Self { wake }, tokio::spawn(relay.run(stop)))
    }

    /// Tells the relay there is something to publish.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The outbox as an operator sees it: what waits, and what the log refused.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Events not yet in the log.
    pub pending: i64,
    /// Events the log refused, parked with the reason (the latest 100).
    pub parked: Vec<Parked>,
    /// How many are parked in all.
    pub parked_total: i64,
}

/// An event the log refused for what it is.
#[derive(Debug, Serialize)]
pub struct Parked {
    pub id: i64,
    pub topic: String,
    pub reason: String,
    /// When it was parked (unix ms).
    pub parked: i64,
    /// The event, as it was written.
    pub event: String,
}

/// What waits in `db`'s outbox and what is parked.
pub async fn parked(db: &Db) -> Result<Status, tessera_store::DbError> {
    let pending: i64 =
        tessera_store::query_scalar("SELECT COUNT(*) FROM tessera_outbox WHERE topic <> ''")
            .fetch_one(db.pool())
            .await?;
    let parked_total: i64 =
        tessera_store::query_scalar("SELECT COUNT(*) FROM tessera_outbox_parked")
            .fetch_one(db.pool())
            .await?;
    let rows: Vec<(i64, String, String, i64, String)> = tessera_store::query_as(
        "SELECT id, topic, reason, parked, event FROM tessera_outbox_parked ORDER BY id DESC LIMIT 100",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(Status {
        pending,
        parked_total,
        parked: rows
            .into_iter()
            .map(|(id, topic, reason, parked, event)| Parked {
                id,
                topic,
                reason,
                parked,
                event,
            })
            .collect(),
    })
}

/// Puts every parked event back into the outbox, in the order they were written, for the
/// relay to publish again (after the cause was fixed); returns how many.
pub async fn requeue(db: &Db) -> Result<u64, tessera_store::DbError> {
    let mut tx = db.write_tx().await?;
    let n = tessera_store::query(
        "INSERT INTO tessera_outbox (topic, event, created)
         SELECT topic, event, created FROM tessera_outbox_parked ORDER BY id",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tessera_store::query("DELETE FROM tessera_outbox_parked")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use tessera_store::{Db, query, query_as, query_scalar};

    #[tokio::test]
    async fn ids_handed_out_before_the_migration_are_not_handed_out_again() {
        let dir = std::env::temp_dir().join(format!("tessera-outbox-{}", uuid::Uuid::new_v4()));
        let url = Db::default_url(&dir, "s");
        // The outbox with AUTOINCREMENT: three events written, published and deleted.
        let before = Db::open(&url, &crate::MIGRATIONS[..3]).await.unwrap();
        for n in 0..3 {
            query("INSERT INTO tessera_outbox (topic, event, created) VALUES ('t', $1, 0)")
                .bind(format!("{{\"n\":{n}}}"))
                .execute(before.pool())
                .await
                .unwrap();
        }
        query("DELETE FROM tessera_outbox")
            .execute(before.pool())
            .await
            .unwrap();
        before.close().await;

        let db = Db::open(&url, crate::MIGRATIONS).await.unwrap();
        let rows: Vec<(i64, String)> = query_as("SELECT id, topic FROM tessera_outbox")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(
            rows,
            [(3, String::new())],
            "the highest id, kept as a tombstone"
        );
        query("INSERT INTO tessera_outbox (topic, event, created) VALUES ('t', '{}', 0)")
            .execute(db.pool())
            .await
            .unwrap();
        let id: i64 = query_scalar("SELECT MAX(id) FROM tessera_outbox")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(id, 4);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
