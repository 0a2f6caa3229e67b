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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{Bus, BusError, Event};
use tessera_store::Db;
use tessera_trace::unix_now_ms as now_ms;

/// The transaction a handler or a service writes in.
pub type Tx = tessera_store::Tx;

const BATCH: i64 = 500;
const LEASE_MS: i64 = 3000;
/// How often published rows are deleted, at most.
pub const DELETE_EVERY: Duration = Duration::from_millis(250);
/// How often an idle relay looks for events written by other replicas.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Queues `event` for `topic`, in `tx`.
pub async fn add(tx: &mut Tx, topic: &str, event: &Event) -> Result<(), tessera_store::DbError> {
    let json = serde_json::to_string(event).map_err(tessera_store::DbError::encode)?;
    tessera_store::query("INSERT INTO tessera_outbox (topic, event, created) VALUES ($1, $2, $3)")
        .bind(topic)
        .bind(json)
        .bind(tessera_trace::unix_now() as i64)
        .execute(&mut **tx)
        .await?;
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
            deleted_at: tokio::time::Instant::now(),
        };
        (Self { wake }, tokio::spawn(relay.run(stop)))
    }

    /// Tells the relay there is something to publish.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

struct Relay {
    db: Db,
    bus: Arc<dyn Bus>,
    holder: String,
    wake: Arc<Notify>,
    /// Until when (unix ms) this relay holds the lease.
    lease_until: i64,
    /// Every row up to this id is in the log (or was refused by it): the next read starts
    /// after it.
    published: i64,
    /// Rows up to this id are deleted.
    deleted: i64,
    deleted_at: tokio::time::Instant,
}

impl Relay {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut failing = false;
        loop {
            let stopping = *stop.borrow();
            let stepped = self.step().await;
            if stopping || self.deleted_at.elapsed() >= DELETE_EVERY {
                self.delete_published().await;
            }
            match stepped {
                Ok(0) => {
                    backoff = Duration::from_millis(50);
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = stop.changed() => {}
                    }
                }
                Ok(_) => {
                    if failing {
                        tracing::info!("outbox relay publishing again");
                        failing = false;
                    }
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "outbox relay cannot publish; retrying");
                        failing = true;
                    }
                    if stopping {
                        tracing::warn!(
                            "stopping with unpublished events; they go out on the next start"
                        );
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Publishes one batch; returns how many events went out.
    async fn step(&mut self) -> Result<usize, String> {
        if !self.hold_lease().await.map_err(|e| e.to_string())? {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(0);
        }
        let rows: Vec<(i64, String, String)> = tessera_store::query_as(
            "SELECT id, topic, event FROM tessera_outbox WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(self.published)
        .bind(BATCH)
        .fetch_all(self.db.pool())
        .await
        .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Per topic, in id order. Every unpublished row of a topic up to the last one taken is
        // in `rows` (they are the lowest ids), which makes the deletes below ranges. The events go out
        // as they were stored; a row that is not JSON (it cannot be: `add` wrote it) is
        // dropped loudly rather than holding up the rest.
        let mut by_topic: Vec<(&str, Vec<&str>, i64)> = Vec::new();
        for (id, topic, json) in &rows {
            if topic.is_empty() {
                continue; // a tombstone: published already
            }
            let at = match by_topic.iter().position(|(t, ..)| t == topic) {
                Some(at) => at,
                None => {
                    by_topic.push((topic, Vec::new(), *id));
                    by_topic.len() - 1
                }
            };
            let entry = &mut by_topic[at];
            match serde_json::from_str::<serde::de::IgnoredAny>(json) {
                Ok(_) => entry.1.push(json),
                Err(e) => {
                    tracing::error!(id, error = %e, "dropping an outbox row that is not an event")
                }
            }
            entry.2 = *id;
        }
        let mut sent = 0;
        for (done, (topic, events, _)) in by_topic.iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            match self.bus.publish_json(topic, events).await {
                Ok(()) => sent += events.len(),
                Err(BusError::Refused(why)) => {
                    // Retrying cannot help; keep the relay moving and say so loudly.
                    tracing::error!(topic = %topic, count = events.len(), error = %why, "the log refused outbox events; dropping them");
                }
                Err(e) => {
                    // The topics before this one are in the log: make them tombstones now (the
                    // next read starts from the remembered id, which must not pass this topic's
                    // rows). Not deleted: one of them may be the row with the highest id.
                    for (topic, _, last_id) in &by_topic[..done] {
                        tessera_store::query(
                            "UPDATE tessera_outbox SET topic = '', event = '' WHERE topic = $1 AND id > $2 AND id <= $3",
                        )
                        .bind(*topic)
                        .bind(self.published)
                        .bind(last_id)
                        .execute(self.db.pool())
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                    return Err(e.to_string());
                }
            }
        }
        self.published = rows.last().map_or(self.published, |(id, ..)| *id);
        metrics::counter!("tessera_outbox_published_total").increment(sent as u64);
        Ok(sent.max(1))
    }

    /// Deletes the rows published since the last delete, in one transaction, but for the last
    /// one, which becomes a tombstone: it may be the row with the highest id, which keeps ids
    /// from going back. A failure leaves them for the next try; they are not read again
    /// meanwhile.
    async fn delete_published(&mut self) {
        self.deleted_at = tokio::time::Instant::now();
        if self.published == self.deleted {
            return;
        }
        let done = async {
            let mut tx = self.db.write_tx().await?;
            tessera_store::query("DELETE FROM tessera_outbox WHERE id < $1")
                .bind(self.published)
                .execute(&mut *tx)
                .await?;
            tessera_store::query(
                "UPDATE tessera_outbox SET topic = '', event = '' WHERE id = $1 AND topic <> ''",
            )
            .bind(self.published)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await;
        match done {
            Ok(_) => self.deleted = self.published,
            Err(e) => tracing::warn!(error = %e, "cannot delete published outbox rows; retrying"),
        }
    }

    /// Takes or renews the relay lease; `false` if another replica holds it.
    async fn hold_lease(&mut self) -> Result<bool, tessera_store::DbError> {
        let now = now_ms();
        if self.lease_until - now > LEASE_MS / 2 {
            return Ok(true);
        }
        let until = now + LEASE_MS;
        let done = tessera_store::query(
            "INSERT INTO tessera_leases (name, holder, until) VALUES ('outbox', $1, $2)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE tessera_leases.holder = excluded.holder OR tessera_leases.until < $3",
        )
        .bind(&self.holder)
        .bind(until)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        if done.rows_affected() == 1 {
            self.lease_until = until;
            Ok(true)
        } else {
            self.lease_until = 0;
            Ok(false)
        }
    }
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
