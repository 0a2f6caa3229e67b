//! The embedded event log: durable, append-only topics with consumer groups.
//!
//! - A topic is split into partitions; an event goes to the partition of its key (the
//!   CloudEvent's `partitionkey`, else its `subject`, else its `id`), so events of one
//!   aggregate stay in order.
//! - Appends are group-committed: one task takes every publish that is waiting, writes them in
//!   one SQLite transaction, and only then acknowledges each. An acknowledged event is on disk
//!   (WAL), so it survives `kill -9` of the control plane.
//! - A consumer group reads each partition from its committed offset. At most one member of a
//!   group holds a partition at a time (a lease, renewed by fetching); members share the
//!   partitions evenly, and a dead member's partitions pass to the others when its lease
//!   lapses. A fetch always starts at the committed offset, so anything not committed is
//!   delivered again: at least once, in order per key.
//!
//! It is the single-machine default behind the bus seam (`tessera::events::Bus`); NATS
//! JetStream takes its place on real clusters.
//!
//! | file | owns |
//! |---|---|
//! | `log.rs` | the handle ([`EventLog`]): opening, what its calls share, the overview |
//! | `config.rs` | its tuning ([`LogConfig`]) |
//! | `schema.rs` | the SQLite migrations |
//! | `topic.rs` | topic names, partition ends, key → partition |
//! | `publish.rs` | checking and keying published events |
//! | `appender.rs` | the group commit: the one task that writes |
//! | `fetch.rs` | consumers' fetches and reads of a partition |
//! | `groups.rs` | who in a group holds which partition (pure bookkeeping) |
//! | `offsets.rs` | groups' committed offsets: loading and committing them |
//! | `dead_letters.rs` | listing and replaying dead letters |
//! | `error.rs` | what a call can fail with |
//! | `backend.rs` | the API in front of this log, or of NATS JetStream when events are there |
//! | `api.rs` | the HTTP API over all of it |

pub mod api;
mod appender;
mod backend;
mod config;
mod dead_letters;
mod error;
mod fetch;
mod groups;
mod log;
mod offsets;
mod publish;
mod schema;
#[cfg(test)]
mod testing;
mod topic;

pub use backend::Log;
pub use config::LogConfig;
pub use error::LogError;
pub use fetch::Stored;
pub use groups::{Fetched, GroupError};
pub use log::EventLog;
pub use publish::event_key;
