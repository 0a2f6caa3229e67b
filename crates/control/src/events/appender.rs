//! The group commit: one task takes every write that is waiting (appends and offset commits),
//! writes them in one SQLite transaction, and only then answers each.
//!
//! One writer means offsets are handed out without a lock on the database, and one transaction
//! per batch means one disk commit for however many publishers are waiting: the more load,
//! the larger the batches. An offset commit alone lingers for [`OFFSETS_LINGER`] so that
//! appends can carry it. After each batch the task publishes the partitions' new ends and
//! wakes the fetches that wait for them.
//!
//! The task owns only what it writes (the database, the topics' ends, the wake-up signal), not
//! the log's handle, so it ends once the last handle is dropped, after writing what is queued.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tessera::Db;
use tokio::sync::{mpsc, oneshot, watch};

use super::config::LogConfig;
use super::error::LogError;
use super::topic::{Topics, partition_of};

/// How long offset commits wait for appends to be written with, when there are none.
pub const OFFSETS_LINGER: Duration = Duration::from_millis(10);

/// One write for the appender, with where to answer.
pub enum Write {
    Append(Append),
    Commit(CommitOffset),
}

/// Events of one topic, each with its key.
pub struct Append {
    pub topic: String,
    /// Who publishes them, as authenticated (`service:<name>`).
    pub producer: String,
    pub events: Vec<(String, Box<RawValue>)>,
    pub reply: oneshot::Sender<Result<Vec<(u32, i64)>, String>>,
}

/// A group's next offset on one partition.
pub struct CommitOffset {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub reply: oneshot::Sender<Result<(), String>>,
}

impl Write {
    /// How much of a batch it takes: its events, or one for a commit.
    fn events(&self) -> usize {
        match self {
            Write::Append(a) => a.events.len(),
            Write::Commit(_) => 1,
        }
    }
}

/// The way to the appending task, and the signal it gives after each batch.
pub struct Appender {
    writes: mpsc::Sender<Write>,
    /// Bumped after every committed batch: wakes long-polling fetches.
    appended: watch::Sender<u64>,
}

impl Appender {
    /// Starts the task that writes to `db` and publishes the new ends in `topics`.
    pub fn spawn(db: Db, topics: Arc<Topics>, config: LogConfig) -> Self {
        let (writes, rx) = mpsc::channel(1024);
        let appended = watch::channel(0).0;
        let task = Task {
            db,
            topics,
            config,
            appended: appended.clone(),
        };
        tokio::spawn(task.run(rx));
        Self { writes, appended }
    }

    /// A receiver that sees every batch committed after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Queues `write` without waiting for it to be written.
    pub async fn send(&self, write: Write) -> Result<(), LogError> {
        self.writes.send(write).await.map_err(|_| stopped())
    }

    /// Queues a write and waits until it is on disk.
    pub async fn write<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Write,
    ) -> Result<T, LogError> {
        let (reply, answer) = oneshot::channel();
        self.send(write(reply)).await?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(LogError::Storage)
    }
}

fn stopped() -> LogError {
    LogError::Storage("appender stopped".into())
}

struct Task {
    db: Db,
    topics: Arc<Topics>,
    config: LogConfig,
    appended: watch::Sender<u64>,
}

/// The writes of one transaction.
struct Batch {
    writes: Vec<Write>,
    /// Events (and commits) in it, bounded by `max_batch`.
    events: usize,
    /// Whether any write is an append (else it may linger for some).
    appends: bool,
}

impl Batch {
    fn push(&mut self, write: Write) {
        self.events += write.events();
        self.appends |= matches!(write, Write::Append(_));
        self.writes.push(write);
    }
}

type Written = (
    Vec<Vec<(u32, i64)>>,
    Vec<(String, u32)>,
    HashMap<(String, u32), i64>,
);

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Write>) {
        while let Some(first) = rx.recv().await {
            let mut batch = Batch {
                writes: Vec::new(),
                events: 0,
                appends: false,
            };
            batch.push(first);
            let linger_until = tokio::time::Instant::now() + OFFSETS_LINGER;
            loop {
                while batch.events < self.config.max_batch {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                if batch.appends || batch.events >= self.config.max_batch {
                    break;
                }
                // Only offsets: wait a moment for appends to carry them (one disk commit for
                // both instead of two).
                match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) | Err(_) => break,
                }
            }
            let mut offsets = match self.write_batch(&batch.writes).await {
                Ok((offsets, created, ends)) => {
                    self.topics.advance(created, ends);
                    self.appended.send_modify(|n| *n += 1);
                    Ok(offsets.into_iter())
                }
                Err(e) => {
                    tracing::error!(error = %e, events = batch.events, "append failed");
                    Err(e.to_string())
                }
            };
            for write in batch.writes {
                match write {
                    Write::Append(append) => {
                        let answer = match &mut offsets {
                            Ok(offsets) => Ok(offsets.next().unwrap_or_default()),
                            Err(e) => Err(e.clone()),
                        };
                        let _ = append.reply.send(answer);
                    }
                    Write::Commit(commit) => {
                        let _ = commit
                            .reply
                            .send(offsets.as_ref().map(|_| ()).map_err(Clone::clone));
                    }
                }
            }
        }
    }

    /// Writes `batch` in one transaction: the offsets of each append, the topics it created,
    /// and the new end of each partition it appended to.
    async fn write_batch(&self, batch: &[Write]) -> Result<Written, tessera::store::DbError> {
        let mut tx = self.db.write_tx().await?;
        let mut next: HashMap<(String, u32), i64> = HashMap::new();
        let mut partitions_of: HashMap<String, u32> = HashMap::new();
        let mut new_topics = Vec::new();
        let now_ms = tessera::unix_now_ms();
        let mut all = Vec::with_capacity(batch.len());
        for write in batch {
            let append = match write {
                Write::Append(append) => append,
                Write::Commit(c) => {
                    tessera::store::query(
                        "INSERT INTO offsets (grp, topic, partition, committed) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (grp, topic, partition) DO UPDATE SET committed = MAX(committed, excluded.committed)",
                    )
                    .bind(&c.group)
                    .bind(&c.topic)
                    .bind(i64::from(c.partition))
                    .bind(c.offset)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
            };
            let partitions = match partitions_of.get(&append.topic) {
                Some(p) => *p,
                None => {
                    let p = match self.topics.get(&append.topic) {
                        Some(t) => {
                            for (i, end) in t.ends().into_iter().enumerate() {
                                next.insert((append.topic.clone(), i as u32), end);
                            }
                            t.partitions() as u32
                        }
                        None => {
                            let p = self.config.partitions;
                            tessera::store::query(
                                "INSERT INTO topics (name, partitions) VALUES ($1, $2)",
                            )
                            .bind(&append.topic)
                            .bind(i64::from(p))
                            .execute(&mut *tx)
                            .await?;
                            for i in 0..p {
                                next.insert((append.topic.clone(), i), 0);
                            }
                            new_topics.push((append.topic.clone(), p));
                            p
                        }
                    };
                    partitions_of.insert(append.topic.clone(), p);
                    p
                }
            };
            let mut offsets = Vec::with_capacity(append.events.len());
            for (key, event) in &append.events {
                let p = partition_of(key, partitions);
                let slot = next
                    .get_mut(&(append.topic.clone(), p))
                    .expect("every partition has a next offset");
                let offset = *slot;
                *slot += 1;
                tessera::store::query(
                    r#"INSERT INTO events (topic, partition, "offset", key, event, appended, producer) VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
                )
                .bind(&append.topic)
                .bind(i64::from(p))
                .bind(offset)
                .bind(key)
                .bind(event.get())
                .bind(now_ms)
                .bind(&append.producer)
                .execute(&mut *tx)
                .await?;
                offsets.push((p, offset));
            }
            all.push(offsets);
        }
        tx.commit().await?;
        Ok((all, new_topics, next))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{event, open_log};
    use super::*;

    #[tokio::test]
    async fn concurrent_publishers_are_group_committed_in_order_per_key() {
        let (dir, log) = open_log().await;
        let mut tasks = Vec::new();
        for k in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    log.publish("t", vec![event(&format!("k{k}-{i}"), &format!("key{k}"))])
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Every key's events come out in the order they were acknowledged.
        let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
        for p in 0..4 {
            for s in log.read("t", p, 0, 10_000).await.unwrap() {
                let v: serde_json::Value = serde_json::from_str(s.event.get()).unwrap();
                let id = v["id"].as_str().unwrap();
                let (k, i) = id.split_once('-').unwrap();
                seen.entry(k.to_string())
                    .or_default()
                    .push(i.parse().unwrap());
            }
        }
        assert_eq!(seen.len(), 8);
        for (k, order) in seen {
            assert_eq!(order, (0..50).collect::<Vec<_>>(), "{k}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
