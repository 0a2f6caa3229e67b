//! The relay: publishes the outbox's pending rows in id order, per topic, and forgets them
//! once the log has them (see the module above for why the delete is lazy).
//!
//! What the log refuses is never dropped. A batch is packed under the log's request limit
//! ([`Bus::max_publish_bytes`]); a batch refused for something in it (a bad event, too large)
//! is split in halves until the refused events stand alone, and each of those is **parked**
//! (`tessera_outbox_parked`, with the reason: counted, logged, listed by
//! [`parked`](super::parked), requeued by [`requeue`](super::requeue)); a batch refused because
//! the service may not publish to the topic at all is parked whole. Whatever else fails
//! (the log unreachable, busy, or not accepting this process's credential) is retried as it
//! is, rows untouched.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::{Bus, BusError};
use tessera_store::{Db, Dialect};
use tessera_trace::unix_now_ms as now_ms;

/// Rows read per step.
const BATCH: i64 = 500;
const LEASE_MS: i64 = 3000;
/// How often published rows are deleted, at most.
pub const DELETE_EVERY: Duration = Duration::from_millis(250);
/// How often an idle relay looks for events written by other replicas.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// What a publish request adds around its events (`{"events":[…]}` and commas), at most.
const REQUEST_OVERHEAD: usize = 16;

pub(super) struct Relay {
    pub db: Db,
    pub bus: Arc<dyn Bus>,
    pub holder: String,
    pub wake: Arc<Notify>,
    /// Until when (unix ms) this relay holds the lease.
    pub lease_until: i64,
    /// Every row up to this id is in the log (or parked): the next read starts after it.
    pub published: i64,
    /// Rows up to this id are deleted.
    pub deleted: i64,
    /// PostgreSQL: the ids published since the last read (comma-separated), deleted by the
    /// next read in the same statement (one round trip where two were).
    pub gone: String,
    pub deleted_at: tokio::time::Instant,
}

/// A run of one topic's rows, in id order, that fits one publish request.
struct Chunk<'a> {
    topic: &'a str,
    rows: Vec<(i64, &'a str)>,
    /// The request these rows make, in bytes.
    bytes: usize,
}

impl Relay {
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
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

    /// Publishes one batch; returns how many rows it settled (published or parked).
    async fn step(&mut self) -> Result<usize, String> {
        if !self.hold_lease().await.map_err(|e| e.to_string())? {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(0);
        }
        let rows: Vec<(i64, String, String)> = match self.db.dialect() {
            Dialect::Sqlite => tessera_store::query_as(
                "SELECT id, topic, event FROM tessera_outbox WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(self.published),
            // Ids are handed out at insert, not at commit: a row may become visible after
            // one with a higher id, so nothing is skipped by id; each row is deleted once the
            // log has it instead, by the next read (which does not see it deleted: it leaves
            // those ids out itself).
            Dialect::Postgres => tessera_store::query_as(
                "WITH gone AS (DELETE FROM tessera_outbox WHERE id = ANY(string_to_array($1, ',')::bigint[]))
                 SELECT id, topic, event FROM tessera_outbox
                 WHERE topic <> '' AND id <> ALL(string_to_array($1, ',')::bigint[]) ORDER BY id LIMIT $2",
            )
            .bind(self.gone.as_str()),
        }
        .bind(BATCH)
        .fetch_all(self.db.pool())
        .await
        .map_err(|e| e.to_string())?;
        self.gone.clear();
        if rows.is_empty() {
            return Ok(0);
        }
        let limit = self.bus.max_publish_bytes();
        // Per topic, in id order, cut where a request would outgrow the log's limit. Every
        // unpublished row of a topic up to the last one taken is in `rows` (they are the
        // lowest ids), which makes the tombstones and parking below ranges.
        let mut chunks: Vec<Chunk<'_>> = Vec::new();
        let mut too_large = Vec::new();
        for (id, topic, json) in &rows {
            if topic.is_empty() {
                continue; // a tombstone: published already
            }
            if json.len() + REQUEST_OVERHEAD > limit {
                too_large.push((*id, topic.as_str()));
                continue;
            }
            match chunks.iter_mut().rev().find(|c| c.topic == topic) {
                Some(c) if c.bytes + json.len() < limit => {
                    c.rows.push((*id, json));
                    c.bytes += json.len() + 1;
                }
                _ => chunks.push(Chunk {
                    topic,
                    rows: vec![(*id, json)],
                    bytes: REQUEST_OVERHEAD + json.len(),
                }),
            }
        }
        for (id, topic) in too_large {
            let why = format!("the event is larger than the log takes ({limit} bytes)");
            self.park(topic, &[(id, "")], &why).await?;
        }
        let mut settled = 0;
        for (done, chunk) in chunks.iter().enumerate() {
            match self.deliver(chunk.topic, &chunk.rows).await {
                Ok(n) => settled += n,
                Err(e) if self.db.dialect() == Dialect::Postgres => return Err(e),
                Err(e) => {
                    // The chunks before this one are in the log (or parked): make their rows
                    // tombstones now (the next read starts from the remembered id, which must
                    // not pass this chunk's rows). Not deleted: one of them may be the row
                    // with the highest id.
                    for c in &chunks[..done] {
                        let (first, last) = (c.rows[0].0, c.rows[c.rows.len() - 1].0);
                        tessera_store::query(
                            "UPDATE tessera_outbox SET topic = '', event = '' WHERE topic = $1 AND id >= $2 AND id <= $3",
                        )
                        .bind(c.topic)
                        .bind(first)
                        .bind(last)
                        .execute(self.db.pool())
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                    return Err(e);
                }
            }
        }
        if self.db.dialect() == Dialect::Sqlite {
            self.published = rows.last().map_or(self.published, |(id, ..)| *id);
        }
        Ok(settled.max(1))
    }

    /// Publishes one topic's `rows`; what the log refuses for what it is, it parks. `Err` only
    /// for what may pass (the log unreachable or failing): then nothing is parked for the
    /// rows not yet delivered, and the caller retries them.
    async fn deliver(&mut self, topic: &str, rows: &[(i64, &str)]) -> Result<usize, String> {
        // Ranges of `rows` still to publish, in order: a refused one is split in halves.
        let mut pending = vec![(0, rows.len())];
        let mut settled = 0;
        while let Some((from, to)) = pending.pop() {
            let part = &rows[from..to];
            let events: Vec<&str> = part.iter().map(|(_, json)| *json).collect();
            match self.bus.publish_json(topic, &events).await {
                Ok(()) => {
                    metrics::counter!("tessera_outbox_published_total")
                        .increment(part.len() as u64);
                    settled += part.len();
                    if self.db.dialect() == Dialect::Postgres {
                        // Deleted by the next read (or by `delete_published`).
                        if !self.gone.is_empty() {
                            self.gone.push(',');
                        }
                        self.gone.push_str(&id_list(part));
                    }
                }
                Err(BusError::Forbidden(why)) => {
                    // The topic is not this service's to publish to: every row of it is.
                    self.park(topic, part, &why).await?;
                    settled += part.len();
                }
                Err(BusError::Refused(_) | BusError::TooLarge(_)) if part.len() > 1 => {
                    let mid = from + part.len() / 2;
                    pending.push((mid, to));
                    pending.push((from, mid));
                }
                Err(BusError::Refused(why) | BusError::TooLarge(why)) => {
                    self.park(topic, part, &why).await?;
                    settled += 1;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(settled)
    }

    /// Moves `topic`'s `rows` to the parked events, with `why`, in one transaction: embedded,
    /// leaving tombstones in their place (the ids from the first to the last of them are
    /// all the topic's unpublished rows there); on PostgreSQL, deleting exactly those ids.
    async fn park(&self, topic: &str, rows: &[(i64, &str)], why: &str) -> Result<(), String> {
        let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
        let postgres = self.db.dialect() == Dialect::Postgres;
        let parked = async {
            let mut tx = self.db.write_tx().await?;
            let n = if postgres {
                tessera_store::query(
                    "INSERT INTO tessera_outbox_parked (id, topic, event, created, reason, parked)
                     SELECT id, topic, event, created, $2, $3 FROM tessera_outbox
                     WHERE id = ANY(string_to_array($1, ',')::bigint[])",
                )
                .bind(id_list(rows))
            } else {
                tessera_store::query(
                    "INSERT INTO tessera_outbox_parked (id, topic, event, created, reason, parked)
                     SELECT id, topic, event, created, $4, $5 FROM tessera_outbox
                     WHERE topic = $1 AND id >= $2 AND id <= $3",
                )
                .bind(topic)
                .bind(first)
                .bind(last)
            }
            .bind(why)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if postgres {
                tessera_store::query(
                    "DELETE FROM tessera_outbox WHERE id = ANY(string_to_array($1, ',')::bigint[])",
                )
                .bind(id_list(rows))
            } else {
                tessera_store::query(
                    "UPDATE tessera_outbox SET topic = '', event = '' WHERE topic = $1 AND id >= $2 AND id <= $3",
                )
                .bind(topic)
                .bind(first)
                .bind(last)
            }
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<u64, tessera_store::DbError>(n)
        }
        .await
        .map_err(|e| e.to_string())?;
        metrics::counter!("tessera_outbox_parked_total", "topic" => topic.to_string())
            .increment(parked);
        tracing::error!(
            topic,
            count = parked,
            reason = why,
            "the log refused outbox events; parked (see /status/outbox)"
        );
        Ok(())
    }

    /// Deletes the rows published since the last delete, in one transaction, but for the last
    /// one, which becomes a tombstone: it may be the row with the highest id, which keeps ids
    /// from going back. A failure leaves them for the next try; they are not read again
    /// meanwhile.
    async fn delete_published(&mut self) {
        self.deleted_at = tokio::time::Instant::now();
        // On PostgreSQL the next read deletes what went out; this is for a relay that will
        // not read again soon (stopping, or its lease lost). `published` stays put there.
        if !self.gone.is_empty() {
            let deleted = tessera_store::query(
                "DELETE FROM tessera_outbox WHERE id = ANY(string_to_array($1, ',')::bigint[])",
            )
            .bind(self.gone.as_str())
            .execute(self.db.pool())
            .await;
            match deleted {
                Ok(_) => self.gone.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete published outbox rows; retrying")
                }
            }
        }
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

/// The ids of `rows`, as `1,2,3` (one text parameter, so that one prepared statement serves
/// any number of them).
fn id_list(rows: &[(i64, &str)]) -> String {
    let mut list = String::with_capacity(rows.len() * 8);
    for (i, (id, _)) in rows.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(itoa::Buffer::new().format(*id));
    }
    list
}
