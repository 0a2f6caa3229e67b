//! The event log's HTTP API as types: what the bus client sends and the control plane reads,
//! and what the control plane answers and the client reads, defined once for both sides
//! (`docs/events.md` documents the same shapes for other languages).
//!
//! Events travel as raw JSON in both directions: the log stores and hands out the bytes it
//! was given, and neither side builds a JSON tree of an event it does not need to read.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest `POST /v1/topics/{topic}/events` body the control plane takes; a larger one is
/// refused with 413. The outbox relay packs its batches under it.
pub const MAX_PUBLISH_BYTES: usize = 8 * 1024 * 1024;

/// About the most a fetch answer carries, in bytes of events: the log stops adding events
/// past it (but always hands out at least one), so that however large a topic's events are,
/// an answer stays well within what a client reads.
pub const MAX_FETCH_BYTES: usize = 32 * 1024 * 1024;

/// `POST /v1/topics/{topic}/events`: events to append, in order (`E` is a list of them: the
/// client's borrowed events, the log's raw JSON values).
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishRequest<E> {
    pub events: E,
}

/// Where an appended event was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub partition: u32,
    pub offset: i64,
}

/// `POST /v1/topics/{topic}/events`'s answer: one position per event, once on disk.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishAnswer {
    pub offsets: Vec<Position>,
}

/// `POST /v1/topics/{topic}/fetch`: a member of a group asks for events of the partitions it
/// holds, committing the previous batch's offsets in the same exchange.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRequest<'a> {
    pub group: Cow<'a, str>,
    pub consumer: Cow<'a, str>,
    /// Events at most, across partitions.
    #[serde(default = "default_max")]
    pub max: usize,
    /// How long the log may wait for events when it has none (capped at 30 s).
    #[serde(default)]
    pub wait_ms: u64,
    /// The previous batch's commit (older clients send one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<Position>,
    /// The previous batch's commits, one per partition it had events of.
    #[serde(default, skip_serializing_if = "no_commits")]
    pub commits: Cow<'a, [Position]>,
    /// Events of every held partition that has some, not only of the first (the others come
    /// in [`FetchAnswer::more`]).
    #[serde(default)]
    pub all: bool,
}

#[allow(clippy::ptr_arg)] // serde hands the field itself
fn no_commits(commits: &Cow<'_, [Position]>) -> bool {
    commits.is_empty()
}

/// The `max` of a fetch or a browse that names none.
pub fn default_max() -> usize {
    100
}

/// One event as the log hands it out.
#[derive(Debug, Serialize, Deserialize)]
pub struct Delivered<'a> {
    pub offset: i64,
    /// Who published it, as the log authenticated them (`service:<name>`): stamped by the
    /// log beside the event, never read from the event, which its publisher wrote. Absent for
    /// events stored before the log authenticated its callers.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub event: &'a RawValue,
}

/// The events of one partition.
#[derive(Debug, Serialize, Deserialize)]
pub struct Part<'a> {
    pub partition: u32,
    #[serde(borrow)]
    pub events: Vec<Delivered<'a>>,
}

/// `POST /v1/topics/{topic}/fetch`'s answer: the first partition's events at the top level
/// (what single-partition clients read), the others in `more`, and the commit's failure.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchAnswer<'a> {
    pub partition: Option<u32>,
    #[serde(borrow)]
    pub events: Vec<Delivered<'a>>,
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Part<'a>>,
    /// Why a commit sent with the fetch failed (the others were still made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_error: Option<ErrorBody>,
    /// How long the member holds these partitions without fetching or renewing: a member
    /// still at work on them past a third of it renews (`…/renew`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// `POST /v1/topics/{topic}/renew`: a member still at work on its partitions keeps them.
#[derive(Debug, Serialize, Deserialize)]
pub struct RenewRequest<'a> {
    pub group: Cow<'a, str>,
    pub consumer: Cow<'a, str>,
}

/// `POST /v1/topics/{topic}/renew`'s answer: the partitions the member still holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct RenewAnswer {
    pub partitions: Vec<u32>,
}

/// `POST /v1/topics/{topic}/commit`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommitRequest<'a> {
    pub group: Cow<'a, str>,
    pub consumer: Cow<'a, str>,
    pub partition: u32,
    pub offset: i64,
}

/// An error the log answers with; `status` is set only where it travels inside another
/// answer (a fetch's commit error).
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Cow<'static, str>,
    pub message: String,
}
