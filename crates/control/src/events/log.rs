//! The log's handle ([`EventLog`]): what it shares between callers and the appending task,
//! opening it, and the overview of every topic.
//!
//! The calls themselves live beside the concept they serve, each file adding to
//! `impl EventLog`: `publish.rs`, `fetch.rs`, `offsets.rs`, `dead_letters.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tessera::Db;

use super::appender::Appender;
use super::config::LogConfig;
use super::groups::Groups;
use super::schema::MIGRATIONS;
use super::topic::{Topic, Topics};

/// A topic's name, the end of each partition, and each known group's committed offsets.
pub type TopicState = (String, Vec<i64>, Vec<(String, Vec<i64>)>);

#[derive(Clone)]
pub struct EventLog {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub db: Db,
    pub config: LogConfig,
    pub topics: Arc<Topics>,
    /// Appends and offset commits, written together by one task (a group commit).
    pub appender: Appender,
    pub groups: Mutex<Groups>,
}

impl EventLog {
    /// Opens (creating) the log in `dir`.
    pub async fn open(dir: &Path, config: LogConfig) -> anyhow::Result<Self> {
        let mut url = Db::default_url(dir, "log");
        if config.sync {
            url.push_str("&synchronous=full");
        }
        let db = Db::open(&url, MIGRATIONS).await?;
        let topics = Arc::new(Topics::load(&db).await?);
        let appender = Appender::spawn(db.clone(), topics.clone(), config.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                config,
                topics,
                appender,
                groups: Mutex::new(Groups::default()),
            }),
        })
    }

    pub(super) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.inner.topics.get(name)
    }

    pub(super) fn groups(&self) -> MutexGuard<'_, Groups> {
        self.inner.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn partitions(&self, topic: &str) -> Option<usize> {
        self.topic(topic).map(|t| t.partitions())
    }

    /// Every topic with the end of each partition, and each known group's committed offsets.
    pub fn describe(&self) -> Vec<TopicState> {
        let topics = self.inner.topics.read();
        let groups = self.groups();
        let mut out: Vec<_> = topics
            .iter()
            .map(|(name, t)| (name.clone(), t.ends(), groups.committed_offsets(name)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
