//! Storage of the event log: a SQLite file, appended to by one group-committing task.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tessera::{Db, Migration};
use tokio::sync::{mpsc, oneshot, watch};

use super::groups::{Fetched, GroupError, Groups};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "log",
        sqlite: include_str!("../../migrations/0001_log.sql"),
    },
    Migration {
        version: 2,
        description: "events in append order",
        sqlite: include_str!("../../migrations/0002_events_in_append_order.sql"),
    },
];

/// How long offset commits wait for appends to be written with, when there are none.
pub const OFFSETS_LINGER: Duration = Duration::from_millis(10);

/// Tuning of the log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Partitions of a new topic.
    pub partitions: u32,
    /// How long a consumer holds its partitions without fetching.
    pub lease: Duration,
    /// Most events written in one transaction.
    pub max_batch: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            partitions: 4,
            lease: Duration::from_secs(10),
            max_batch: 5000,
        }
    }
}

/// A topic's name, the end of each partition, and each known group's committed offsets.
pub type TopicState = (String, Vec<i64>, Vec<(String, Vec<i64>)>);

/// One stored event.
#[derive(Debug)]
pub struct Stored {
    pub offset: i64,
    pub event: Box<RawValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("the log is unavailable: {0}")]
    Storage(String),
}

impl From<tessera::store::DbError> for LogError {
    fn from(e: tessera::store::DbError) -> Self {
        LogError::Storage(e.to_string())
    }
}

#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    config: LogConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Appends and offset commits, written together by one task (a group commit).
    appender: mpsc::Sender<Write>,
    /// Bumped after every committed append: wakes long-polling fetches.
    appended: watch::Sender<u64>,
    groups: Mutex<Groups>,
}

struct Topic {
    /// The next offset of each partition.
    end: Vec<AtomicI64>,
}

enum Write {
    Append(Append),
    Commit(CommitOffset),
}

struct Append {
    topic: String,
    events: Vec<(String, Box<RawValue>)>,
    reply: oneshot::Sender<Result<Vec<(u32, i64)>, String>>,
}

struct CommitOffset {
    group: String,
    topic: String,
    partition: u32,
    offset: i64,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The attributes of a CloudEvent the log looks at.
#[derive(Deserialize)]
struct Head<'a> {
    specversion: &'a str,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    partitionkey: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "type")]
    _type: &'a str,
    #[serde(rename = "source")]
    _source: &'a str,
}

impl EventLog {
    /// Opens (creating) the log in `dir`.
    pub async fn open(dir: &Path, config: LogConfig) -> anyhow::Result<Self> {
        let db = Db::open(&Db::default_url(dir, "log"), MIGRATIONS).await?;
        let rows: Vec<(String, i64)> =
            tessera::store::query_as("SELECT name, partitions FROM topics")
                .fetch_all(db.pool())
                .await?;
        let mut topics = HashMap::new();
        for (name, partitions) in rows {
            let mut end = Vec::new();
            for p in 0..partitions {
                let (next,): (i64,) = tessera::store::query_as(
                    r#"SELECT COALESCE(MAX("offset") + 1, 0) FROM events WHERE topic = $1 AND partition = $2"#,
                )
                .bind(&name)
                .bind(p)
                .fetch_one(db.pool())
                .await?;
                end.push(AtomicI64::new(next));
            }
            topics.insert(name, Arc::new(Topic { end }));
        }
        let (appender, rx) = mpsc::channel(1024);
        let inner = Arc::new(Inner {
            db,
            config,
            topics: RwLock::new(topics),
            appender,
            appended: watch::channel(0).0,
            groups: Mutex::new(Groups::default()),
        });
        tokio::spawn(append_loop(inner.clone(), rx));
        Ok(Self { inner })
    }

    /// Appends `events` (CloudEvents, JSON) to `topic`; returns once they are on disk, with
    /// the partition and offset of each.
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<Box<RawValue>>,
    ) -> Result<Vec<(u32, i64)>, LogError> {
        check_topic(topic)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut keyed = Vec::with_capacity(events.len());
        for (i, raw) in events.into_iter().enumerate() {
            let head: Head<'_> = serde_json::from_str(raw.get())
                .map_err(|e| LogError::Invalid(format!("event {i} is not a CloudEvent: {e}")))?;
            if head.specversion != "1.0" {
                return Err(LogError::Invalid(format!(
                    "event {i}: specversion must be \"1.0\""
                )));
            }
            if head.id.is_empty() {
                return Err(LogError::Invalid(format!(
                    "event {i}: id must not be empty"
                )));
            }
            let key = head
                .partitionkey
                .or(head.subject)
                .unwrap_or(head.id)
                .into_owned();
            keyed.push((key, raw));
        }
        self.write(|reply| {
            Write::Append(Append {
                topic: topic.to_string(),
                events: keyed,
                reply,
            })
        })
        .await
    }

    /// Hands a write to the appender and waits until it is on disk.
    async fn write<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Write,
    ) -> Result<T, LogError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .appender
            .send(write(reply))
            .await
            .map_err(|_| LogError::Storage("appender stopped".into()))?;
        answer
            .await
            .map_err(|_| LogError::Storage("appender stopped".into()))?
            .map_err(LogError::Storage)
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Up to `max` events for `consumer` of `group`, from a partition it holds, waiting up to
    /// `wait` for some to arrive.
    pub async fn fetch(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Option<(u32, Vec<Stored>)>, LogError> {
        let parts = self
            .fetch_parts(topic, group, consumer, max, wait, false)
            .await?;
        Ok(parts.into_iter().next())
    }

    /// Up to `max` events in all for `consumer` of `group`, from every partition it holds that
    /// has some (or from the first, unless `all`), waiting up to `wait` for some to arrive.
    /// Empty when none arrived.
    pub async fn fetch_parts(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
        all: bool,
    ) -> Result<Vec<(u32, Vec<Stored>)>, LogError> {
        check_topic(topic)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut woken = self.inner.appended.subscribe();
        loop {
            woken.borrow_and_update();
            if let Some(t) = self.topic(topic) {
                self.load_group(group, topic, t.end.len()).await?;
                let claimed = self
                    .inner
                    .groups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .claim(
                        group,
                        topic,
                        consumer,
                        self.inner.config.lease,
                        Instant::now(),
                    );
                // Only what the appender has published as the end: rows of a batch can be
                // visible a moment before their offsets are, and a consumer must never be
                // handed an offset it could not commit.
                // The claim hands the partitions out in turns (each fetch starts from the
                // next), so a busy one cannot take every fetch's whole `max`.
                let ready = claimed.into_iter().filter_map(|f| {
                    let end = t.end[f.partition as usize].load(Ordering::Acquire);
                    (f.from < end).then_some((f, end))
                });
                let mut parts = Vec::new();
                let mut left = max.max(1);
                for (Fetched { partition, from }, end) in ready {
                    let events = self
                        .read(topic, partition, from, left.min((end - from) as usize))
                        .await?;
                    left = left.saturating_sub(events.len());
                    parts.push((partition, events));
                    if !all || left == 0 {
                        break;
                    }
                }
                if !parts.is_empty() {
                    return Ok(parts);
                }
            }
            if tokio::time::timeout_at(deadline, woken.changed())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn load_group(
        &self,
        group: &str,
        topic: &str,
        partitions: usize,
    ) -> Result<(), LogError> {
        if self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_loaded(group, topic)
        {
            return Ok(());
        }
        let rows: Vec<(i64, i64)> = tessera::store::query_as(
            "SELECT partition, committed FROM offsets WHERE grp = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(self.inner.db.pool())
        .await?;
        let mut committed = vec![0i64; partitions];
        for (p, c) in rows {
            if let Some(slot) = committed.get_mut(p as usize) {
                *slot = c;
            }
        }
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .load(group, topic, committed);
        Ok(())
    }

    /// Events of one partition from `from`, in order.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: i64,
        max: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let rows: Vec<(i64, String)> = tessera::store::query_as(
            r#"SELECT "offset", event FROM events WHERE topic = $1 AND partition = $2 AND "offset" >= $3 ORDER BY "offset" LIMIT $4"#,
        )
        .bind(topic)
        .bind(i64::from(partition))
        .bind(from)
        .bind(max.clamp(1, 10_000) as i64)
        .fetch_all(self.inner.db.pool())
        .await?;
        rows.into_iter()
            .map(|(offset, event)| {
                RawValue::from_string(event)
                    .map(|event| Stored { offset, event })
                    .map_err(|e| LogError::Storage(format!("stored event is not JSON: {e}")))
            })
            .collect()
    }

    /// Commits `offset` (the next to read) on `partition` for `group`; returns once it is on
    /// disk.
    pub async fn commit(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), LogError> {
        self.commit_with(topic, group, consumer, partition, offset, true)
            .await
    }

    /// Commits `offset` for `group` at once and writes it to disk with the next appends
    /// (within [`OFFSETS_LINGER`] if none come): the commit a fetch carries. The group reads on
    /// from it straight away; if the log stops before it is written, the group reads again
    /// from the last commit on disk, and the events in between are delivered again, which
    /// consumers' inboxes make harmless (delivery is at least once either way).
    pub async fn commit_lazily(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), LogError> {
        self.commit_with(topic, group, consumer, partition, offset, false)
            .await
    }

    async fn commit_with(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        partition: u32,
        offset: i64,
        durable: bool,
    ) -> Result<(), LogError> {
        let t = self
            .topic(topic)
            .ok_or(GroupError::NoPartition(partition))?;
        let end = t
            .end
            .get(partition as usize)
            .ok_or(GroupError::NoPartition(partition))?
            .load(Ordering::Acquire);
        self.load_group(group, topic, t.end.len()).await?;
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check_commit(group, topic, consumer, partition, offset, end)?;
        let write = |reply| {
            Write::Commit(CommitOffset {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
                offset,
                reply,
            })
        };
        let committed = || {
            self.inner
                .groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .committed(group, topic, partition, offset);
        };
        if durable {
            // Written with the appends in flight: one commit to disk for all of them.
            self.write(write).await?;
            committed();
        } else {
            committed();
            let (reply, _) = oneshot::channel();
            self.inner
                .appender
                .send(write(reply))
                .await
                .map_err(|_| LogError::Storage("appender stopped".into()))?;
        }
        Ok(())
    }

    /// Every topic with the end of each partition, and each known group's committed offsets.
    pub fn describe(&self) -> Vec<TopicState> {
        let topics = self.inner.topics.read().unwrap_or_else(|e| e.into_inner());
        let groups = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = topics
            .iter()
            .map(|(name, t)| {
                let ends = t.end.iter().map(|e| e.load(Ordering::Acquire)).collect();
                (name.clone(), ends, groups.committed_offsets(name))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Publishes every not yet replayed dead letter of `group` again to the topic it came
    /// from (without its dead-letter attributes); returns how many.
    pub async fn replay_dead_letters(&self, group: &str) -> Result<usize, LogError> {
        let topic = format!("deadletter.{group}");
        let mut replayed = 0;
        while let Some((partition, events)) = self
            .fetch(&topic, "tessera-replay", "replayer", 500, Duration::ZERO)
            .await?
        {
            let Some(last) = events.last().map(|s| s.offset) else {
                break;
            };
            for stored in events {
                let mut event: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(stored.event.get()).map_err(|e| {
                        LogError::Storage(format!("dead letter is not an object: {e}"))
                    })?;
                let Some(serde_json::Value::String(original)) = event.remove("deadlettertopic")
                else {
                    tracing::warn!(
                        offset = stored.offset,
                        "dead letter without its topic; skipped"
                    );
                    continue;
                };
                event.retain(|k, _| !k.starts_with("deadletter"));
                let raw = RawValue::from_string(serde_json::Value::Object(event).to_string())
                    .map_err(|e| LogError::Storage(e.to_string()))?;
                self.publish(&original, vec![raw]).await?;
                replayed += 1;
            }
            self.commit(&topic, "tessera-replay", "replayer", partition, last + 1)
                .await?;
        }
        Ok(replayed)
    }

    pub fn partitions(&self, topic: &str) -> Option<usize> {
        self.topic(topic).map(|t| t.end.len())
    }
}

fn check_topic(topic: &str) -> Result<(), LogError> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(LogError::Invalid(
            "a topic name is 1 to 200 of a-z, A-Z, 0-9, '.', '-', '_'".into(),
        ))
    }
}

/// FNV-1a: stable across builds, so a key keeps its partition across upgrades.
fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

async fn append_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Write>) {
    let events = |w: &Write| match w {
        Write::Append(a) => a.events.len(),
        Write::Commit(_) => 1,
    };
    while let Some(first) = rx.recv().await {
        let mut count = events(&first);
        let mut batch = vec![first];
        let mut appends = matches!(batch[0], Write::Append(_));
        let linger_until = tokio::time::Instant::now() + OFFSETS_LINGER;
        loop {
            while count < inner.config.max_batch {
                match rx.try_recv() {
                    Ok(next) => {
                        count += events(&next);
                        appends |= matches!(next, Write::Append(_));
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            if appends || count >= inner.config.max_batch {
                break;
            }
            // Only offsets: wait a moment for appends to carry them (one disk commit for
            // both instead of two).
            match tokio::time::timeout_at(linger_until, rx.recv()).await {
                Ok(Some(next)) => {
                    count += events(&next);
                    appends |= matches!(next, Write::Append(_));
                    batch.push(next);
                }
                Ok(None) | Err(_) => break,
            }
        }
        match write_batch(&inner, &batch).await {
            Ok((offsets, new_topics, ends)) => {
                {
                    let mut topics = inner.topics.write().unwrap_or_else(|e| e.into_inner());
                    for (name, partitions) in new_topics {
                        topics.entry(name).or_insert_with(|| {
                            Arc::new(Topic {
                                end: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
                            })
                        });
                    }
                    for ((topic, p), next) in ends {
                        if let Some(t) = topics.get(&topic) {
                            t.end[p as usize].store(next, Ordering::Release);
                        }
                    }
                }
                inner.appended.send_modify(|n| *n += 1);
                let mut offsets = offsets.into_iter();
                for write in batch {
                    match write {
                        Write::Append(append) => {
                            let _ = append.reply.send(Ok(offsets.next().unwrap_or_default()));
                        }
                        Write::Commit(commit) => {
                            let _ = commit.reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = count, "append failed");
                for write in batch {
                    match write {
                        Write::Append(append) => {
                            let _ = append.reply.send(Err(e.to_string()));
                        }
                        Write::Commit(commit) => {
                            let _ = commit.reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        }
    }
}

type Written = (
    Vec<Vec<(u32, i64)>>,
    Vec<(String, u32)>,
    HashMap<(String, u32), i64>,
);

async fn write_batch(inner: &Inner, batch: &[Write]) -> Result<Written, tessera::store::DbError> {
    let mut tx = inner.db.write_tx().await?;
    let mut next: HashMap<(String, u32), i64> = HashMap::new();
    let mut partitions_of: HashMap<String, u32> = HashMap::new();
    let mut new_topics = Vec::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
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
                let existing = inner
                    .topics
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&append.topic)
                    .cloned();
                let p = match existing {
                    Some(t) => {
                        for (i, end) in t.end.iter().enumerate() {
                            next.insert(
                                (append.topic.clone(), i as u32),
                                end.load(Ordering::Acquire),
                            );
                        }
                        t.end.len() as u32
                    }
                    None => {
                        let p = inner.config.partitions;
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
                r#"INSERT INTO events (topic, partition, "offset", key, event, appended) VALUES ($1, $2, $3, $4, $5, $6)"#,
            )
            .bind(&append.topic)
            .bind(i64::from(p))
            .bind(offset)
            .bind(key)
            .bind(event.get())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            offsets.push((p, offset));
        }
        all.push(offsets);
    }
    tx.commit().await?;
    Ok((all, new_topics, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, subject: &str) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"t","subject":"{subject}","data":{{"n":1}}}}"#
        ))
        .unwrap()
    }

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tessera-log-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn partitioning_is_stable() {
        assert_eq!(partition_of("order-1", 4), partition_of("order-1", 4));
        let spread: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_of(&format!("k{i}"), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }

    #[tokio::test]
    async fn a_log_written_by_the_first_schema_reads_on_after_the_migration() {
        let dir = temp_dir();
        // The log as the first schema stored it: events keyed by topic, partition and offset,
        // written out of append order (partition 1 before partition 0), and a commit.
        let old = Db::open(&Db::default_url(&dir, "log"), &MIGRATIONS[..1])
            .await
            .unwrap();
        tessera::store::query("INSERT INTO topics (name, partitions) VALUES ('orders', 2)")
            .execute(old.pool())
            .await
            .unwrap();
        for (partition, offset, appended) in
            [(1, 0, 10), (1, 1, 11), (0, 0, 12), (0, 1, 13), (0, 2, 14)]
        {
            tessera::store::query(
                r#"INSERT INTO events (topic, partition, "offset", key, event, appended) VALUES ('orders', $1, $2, 'k', $3, $4)"#,
            )
            .bind(partition)
            .bind(offset)
            .bind(event(&format!("p{partition}o{offset}"), "k").get().to_string())
            .bind(appended)
            .execute(old.pool())
            .await
            .unwrap();
        }
        tessera::store::query(
            "INSERT INTO offsets (grp, topic, partition, committed) VALUES ('g', 'orders', 0, 1)",
        )
        .execute(old.pool())
        .await
        .unwrap();
        old.close().await;

        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        let mut read = std::collections::BTreeMap::new();
        for part in log
            .fetch_parts("orders", "g", "c1", 100, Duration::ZERO, true)
            .await
            .unwrap()
        {
            read.insert(part.0, part.1.iter().map(|s| s.offset).collect::<Vec<_>>());
        }
        // Partition 0 from its commit, partition 1 from its start, each in offset order.
        assert_eq!(read.get(&0), Some(&vec![1, 2]));
        assert_eq!(read.get(&1), Some(&vec![0, 1]));
        // Appends continue each partition's offsets.
        let keyed_to_0 = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| partition_of(k, 2) == 0)
            .unwrap();
        let next = log
            .publish("orders", vec![event("new", &keyed_to_0)])
            .await
            .unwrap();
        assert_eq!(next, [(0, 3)]);
        // Stored in append order: the migrated events by their append time, then the new one.
        let order: Vec<String> = tessera::store::query_scalar(
            r#"SELECT partition || ':' || "offset" FROM events ORDER BY seq"#,
        )
        .fetch_all(log.inner.db.pool())
        .await
        .unwrap();
        assert_eq!(order, ["1:0", "1:1", "0:0", "0:1", "0:2", "0:3"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_busy_partition_cannot_take_every_fetch() {
        let dir = temp_dir();
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        // A backlog on every partition, each longer than a fetch's `max`.
        log.publish(
            "orders",
            (0..400)
                .map(|i| event(&format!("e{i}"), &format!("order-{i}")))
                .collect(),
        )
        .await
        .unwrap();
        let mut first = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let parts = log
                .fetch_parts("orders", "g", "c1", 10, Duration::ZERO, true)
                .await
                .unwrap();
            assert_eq!(parts.iter().map(|p| p.1.len()).sum::<usize>(), 10);
            first.insert(parts[0].0);
        }
        assert_eq!(
            first.len(),
            4,
            "each partition is read first in turn: {first:?}"
        );
    }

    #[tokio::test]
    async fn a_lazy_commit_counts_at_once_and_reaches_the_disk_without_appends() {
        let dir = temp_dir();
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        let offsets = log
            .publish(
                "orders",
                (0..6).map(|i| event(&format!("e{i}"), "order-1")).collect(),
            )
            .await
            .unwrap();
        let p = offsets[0].0;
        let (_, got) = log
            .fetch("orders", "g", "c1", 3, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 3);
        log.commit_lazily("orders", "g", "c1", p, 3).await.unwrap();
        // The group reads on from it at once...
        let (_, next) = log
            .fetch("orders", "g", "c1", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.first().unwrap().offset, 3);
        // ...and with no append to carry it, it reaches the disk after the linger.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let on_disk: Vec<(i64,)> = tessera::store::query_as(
                "SELECT committed FROM offsets WHERE grp = 'g' AND topic = 'orders'",
            )
            .fetch_all(log.inner.db.pool())
            .await
            .unwrap();
            if on_disk == [(3,)] {
                break;
            }
            assert!(Instant::now() < deadline, "not on disk: {on_disk:?}");
            tokio::time::sleep(OFFSETS_LINGER).await;
        }
        // A commit it cannot make is refused at once, lazily or not.
        assert!(matches!(
            log.commit_lazily("orders", "g", "other", p, 4).await,
            Err(LogError::Group(GroupError::NotHolder(_)))
        ));
    }

    #[tokio::test]
    async fn publish_fetch_commit_and_reopen() {
        let dir = temp_dir();
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        let offsets = log
            .publish(
                "orders",
                (0..10)
                    .map(|i| event(&format!("e{i}"), "order-1"))
                    .collect(),
            )
            .await
            .unwrap();
        let p = offsets[0].0;
        assert!(
            offsets.iter().all(|(q, _)| *q == p),
            "one key, one partition"
        );
        assert_eq!(
            offsets.iter().map(|o| o.1).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );

        let (part, got) = log
            .fetch("orders", "g", "c1", 4, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(part, p);
        assert_eq!(
            got.iter().map(|s| s.offset).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // Not committed: the same events again.
        let (_, again) = log
            .fetch("orders", "g", "c1", 4, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again[0].offset, 0);
        log.commit("orders", "g", "c1", p, 4).await.unwrap();
        let (_, next) = log
            .fetch("orders", "g", "c1", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.first().unwrap().offset, 4);
        assert!(next.last().unwrap().event.get().contains("\"e9\""));
        assert!(matches!(
            log.commit("orders", "g", "other", p, 5).await,
            Err(LogError::Group(GroupError::NotHolder(_)))
        ));
        assert!(matches!(
            log.commit("orders", "g", "c1", p, 99).await,
            Err(LogError::Group(GroupError::PastEnd { .. }))
        ));
        drop(log);

        // Reopened: the events and the commit are still there, and offsets continue.
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        let (_, got) = log
            .fetch("orders", "g", "c2", 100, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.first().unwrap().offset, 4);
        let more = log
            .publish("orders", vec![event("e10", "order-1")])
            .await
            .unwrap();
        assert_eq!(more[0], (p, 10));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn fetch_waits_for_new_events() {
        let dir = temp_dir();
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        assert!(
            log.fetch("t", "g", "c", 10, Duration::from_millis(20))
                .await
                .unwrap()
                .is_none()
        );
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.fetch("t", "g", "c", 10, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.publish("t", vec![event("x", "k")]).await.unwrap();
        let (_, got) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn bad_input_is_refused() {
        let dir = temp_dir();
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        let not_ce = RawValue::from_string(r#"{"hello":1}"#.into()).unwrap();
        assert!(matches!(
            log.publish("t", vec![not_ce]).await,
            Err(LogError::Invalid(_))
        ));
        let v2 = RawValue::from_string(
            r#"{"specversion":"2.0","id":"a","source":"s","type":"t"}"#.into(),
        )
        .unwrap();
        assert!(matches!(
            log.publish("t", vec![v2]).await,
            Err(LogError::Invalid(_))
        ));
        assert!(matches!(
            log.publish("bad topic!", vec![event("a", "k")]).await,
            Err(LogError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn concurrent_publishers_are_group_committed_in_order_per_key() {
        let dir = temp_dir();
        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
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
