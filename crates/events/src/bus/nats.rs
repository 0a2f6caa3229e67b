//! The [`Bus`](super::Bus) on NATS JetStream, for systems that outgrow the embedded log.
//!
//! The mapping (`docs/scale-out.md` has it for operators):
//!
//! - A **stream per topic** (`<prefix>-<topic>`, dots and underscores escaped), subjects
//!   `<prefix>.<topic>.<producer>.<partition>`. The partition is chosen from the event's key
//!   as the embedded log chooses it ([`partition_of`]), so events of one key stay in order. The
//!   producer token is the publishing service's name: with one NATS user per service whose
//!   permissions allow publishing only under its own token (`tessera up --profile
//!   distributed` writes them; `docs/scale-out.md` shows them), the server, not the event,
//!   says who published, as the embedded log's stamp does.
//! - Every publish carries the event id as `Nats-Msg-Id`, so the outbox relay's retries
//!   within the stream's duplicate window never store an event twice; and the trace context
//!   as `traceparent`.
//! - A **durable pull consumer per group and partition** (`<group>-<partition>`), each
//!   message acked after the inbox transaction commits (the commit of an offset acks every
//!   message handed out before it). One member of a group pulls a partition at a time, so
//!   events of one key are handled in order, one at a time (`group.rs` says who holds what);
//!   a member taking a partition over with messages still unacked makes its consumer again
//!   from the ack floor, so that what its predecessor left comes again, at once, before
//!   anything newer (`member.rs`).
//! - Retries, backoff and dead letters stay the consumer's own, as on the embedded log: an
//!   event it gives up on goes to the group's dead-letter topic, a stream like any other.
//!
//! Offsets are stream sequence numbers less one (the first event is at 0, as on the embedded
//! log): increasing along a partition, with gaps (the other partitions' events are in
//! between).

mod admin;
mod group;
mod member;
mod permissions;

pub use admin::Stored;
pub use permissions::{Grants, ServerTls, User, inbox_prefix, permissions, server_config};
// (`message_id` below is the dead letters' message id, for the control plane's publishes.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, context, kv, stream};
use async_nats::{HeaderMap, ServerAddr};
use bytes::Bytes;
use serde::Deserialize;

use super::{Batch, BoxFuture, Bus, BusError};
use crate::{Event, partition_of};
use member::Member;

/// The identity NATS's servers show when the system's mutual TLS is on.
pub const NATS_IDENTITY: &str = "nats";

/// NATS's default `max_payload`, until the server says its own.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// What an event's message keeps for its headers (`Nats-Msg-Id`, `traceparent`).
const HEADERS_ROOM: usize = 256;

/// Where JetStream is and how to use it, from a `nats://` URL:
/// `nats://[user:password@]host:port[,host:port…][?partitions=4&replicas=3&prefix=tessera&lease_ms=10000]`.
#[derive(Clone, Debug, PartialEq)]
pub struct NatsSettings {
    pub servers: Vec<String>,
    pub user: Option<(String, String)>,
    /// The first token of every subject, and of every stream's and bucket's name.
    pub prefix: String,
    /// Partitions per topic: every process of a system must use the same number.
    pub partitions: u32,
    /// Copies of each stream (1, or 3 on a cluster of three).
    pub replicas: usize,
    /// How long a member holds its partitions without fetching or renewing, and how long a
    /// delivered message waits for its ack before JetStream hands it out again.
    pub lease: Duration,
}

impl NatsSettings {
    /// Reads a `nats://` URL; what is wrong with it, naming the part, never the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = tessera_identity::engine::EngineUrl::parse(url, "nats", 4222)?;
        let servers: Vec<String> = url.hosts.iter().map(|h| format!("nats://{h}")).collect();
        for s in &servers {
            s.parse::<ServerAddr>()
                .map_err(|e| format!("server {:?}: {e}", &s["nats://".len()..]))?;
        }
        let user = url.user;
        let mut settings = Self {
            servers,
            user,
            prefix: "tessera".into(),
            partitions: 4,
            replicas: 1,
            lease: Duration::from_secs(10),
        };
        for (key, value) in &url.query {
            let (key, value) = (key.as_str(), value.as_str());
            let number = |max: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or(format!("{key} must be a number from 1 to {max}"))
            };
            match key {
                "partitions" => settings.partitions = number(1024)? as u32,
                "replicas" => settings.replicas = number(5)? as usize,
                "lease_ms" => settings.lease = Duration::from_millis(number(600_000)?),
                "prefix" => {
                    // No '-': it joins the prefix to a topic in stream names.
                    if !valid_token(value) || value.contains('-') {
                        return Err("prefix must be letters, digits or '_'".into());
                    }
                    settings.prefix = value.into();
                }
                other => return Err(format!("unknown setting {other:?}")),
            }
        }
        Ok(settings)
    }
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A name for streams, consumers and keys that has no dots: `_` as `__`, `.` as `_-`, so that
/// two topics never share one.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_-"),
            c => out.push(c),
        }
    }
    out
}

/// A topic's name must make subjects: 1 to 200 of a-z, A-Z, 0-9, '-', '_', and dots between
/// non-empty parts (as the embedded log's rule, less the empty parts a subject cannot have).
fn check_topic(topic: &str) -> Result<(), BusError> {
    let ok = topic.len() <= 200 && topic.split('.').all(valid_token);
    if ok {
        Ok(())
    } else {
        Err(BusError::Refused(format!(
            "topic {topic:?}: a topic name is 1 to 200 of a-z, A-Z, 0-9, '-', '_' and dots between them"
        )))
    }
}

/// The event log on NATS JetStream.
pub struct NatsBus {
    settings: NatsSettings,
    /// The subject token this process publishes under: its service's name.
    service: String,
    /// What the manifest lets each service publish: checked here before NATS is asked, so a
    /// misdeclared publish is refused as on the embedded log; NATS's own permissions (a user
    /// per service, `docs/scale-out.md`) are what a process that skips the check meets.
    producers: crate::Producers,
    /// The connection's name, as the server's monitoring shows it.
    instance: String,
    conn: tokio::sync::OnceCell<Conn>,
    /// Topics whose stream this process has made sure of.
    streams: Mutex<HashSet<String>>,
    members: Mutex<HashMap<(String, String, String), Arc<Member>>>,
}

struct Conn {
    js: jetstream::Context,
    groups: kv::Store,
    max_payload: usize,
}

impl NatsBus {
    /// The bus at `url` (`nats://…`), publishing as `service`; connects at first use.
    pub fn new(url: &str, service: &str, instance: &str) -> Result<Self, String> {
        Ok(Self {
            settings: NatsSettings::parse(url)?,
            service: service.to_string(),
            producers: crate::Producers::unchecked(),
            instance: instance.to_string(),
            conn: tokio::sync::OnceCell::new(),
            streams: Mutex::default(),
            members: Mutex::default(),
        })
    }

    /// Checks every publish of this process against `producers` (the manifest's
    /// declaration).
    pub fn with_producers(mut self, producers: crate::Producers) -> Self {
        self.producers = producers;
        self
    }

    /// Whether `url` is one for this bus.
    pub fn handles(url: &str) -> bool {
        url.starts_with("nats://")
    }

    async fn conn(&self) -> Result<&Conn, BusError> {
        self.conn
            .get_or_try_init(|| async {
                let s = &self.settings;
                let mut options = async_nats::ConnectOptions::new()
                    .name(&self.instance)
                    .custom_inbox_prefix(inbox_prefix(&self.service))
                    .connection_timeout(Duration::from_secs(2));
                if let Some((user, password)) = &s.user {
                    options = options.user_and_password(user.clone(), password.clone());
                }
                // With the system's mutual TLS on, NATS is reached as any internal server is:
                // TLS only, this process's identity certificate shown, NATS's checked against
                // the system CA (`docs/tls.md`).
                if let Some(tls) = tessera_tls::internal::get() {
                    let config = tls
                        .client_config_for(&tls.identity_of(NATS_IDENTITY))
                        .map_err(|e| BusError::Unavailable(format!("TLS to NATS: {e:#}")))?;
                    options = options.require_tls(true).tls_client_config(config);
                }
                let servers: Vec<ServerAddr> = s
                    .servers
                    .iter()
                    .map(|a| a.parse().expect("checked when the URL was read"))
                    .collect();
                let hosts = || {
                    s.servers
                        .iter()
                        .map(|a| &a["nats://".len()..])
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let client = options.connect(servers).await.map_err(|e| {
                    BusError::Unavailable(format!("cannot connect to NATS at {}: {e}", hosts()))
                })?;
                let max_payload = client.server_info().max_payload;
                let js = jetstream::new(client);
                let bucket = format!("{}-groups", s.prefix);
                let groups = match js.get_key_value(&bucket).await {
                    Ok(store) => store,
                    Err(_) => {
                        // The bucket's stream made as the client's `create_key_value` makes it,
                        // which first reads the account's limits in a form NATS 2.9 does not
                        // answer in.
                        let made = js
                            .get_or_create_stream(stream::Config {
                                name: format!("KV_{bucket}"),
                                description: Some(
                                    "Tessera consumer groups: who holds which partition".into(),
                                ),
                                subjects: vec![format!("$KV.{bucket}.>")],
                                max_messages_per_subject: 1,
                                discard: stream::DiscardPolicy::New,
                                allow_rollup: true,
                                deny_delete: true,
                                allow_direct: true,
                                num_replicas: s.replicas,
                                storage: stream::StorageType::File,
                                ..Default::default()
                            })
                            .await;
                        // Another process (the control plane, a replica) may have made it
                        // meanwhile: NATS 2.9 then answers that the subjects overlap.
                        if let Err(e) = made
                            && js.get_key_value(&bucket).await.is_err()
                        {
                            return Err(BusError::Unavailable(format!(
                                "cannot make KV bucket {bucket}: {e}"
                            )));
                        }
                        js.get_key_value(&bucket).await.map_err(|e| {
                            BusError::Unavailable(format!("cannot open KV bucket {bucket}: {e}"))
                        })?
                    }
                };
                Ok(Conn {
                    js,
                    groups,
                    max_payload,
                })
            })
            .await
    }

    fn stream_name(&self, topic: &str) -> String {
        format!("{}-{}", self.settings.prefix, escape(topic))
    }

    /// The topic's stream, created if it is not there yet.
    async fn stream(&self, conn: &Conn, topic: &str) -> Result<stream::Stream, BusError> {
        let name = self.stream_name(topic);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.{topic}.*.*", self.settings.prefix)],
            storage: stream::StorageType::File,
            num_replicas: self.settings.replicas,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        };
        let stream = conn
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot make stream {name}: {e}")))?;
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string());
        Ok(stream)
    }

    fn stream_known(&self, topic: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// Publishes events already in JSON, each with its id and key read from it.
    async fn publish_raw(&self, topic: &str, events: &[&str]) -> Result<(), BusError> {
        self.publish_as(&self.service, topic, events, None)
            .await
            .map(drop)
    }

    /// Publishes events already in JSON as `producer` (the subject's producer token: only a
    /// process trusted to speak for others, the control plane, publishes as another), each
    /// deduplicated by its id, or by `ids` when given (a replay, which must not be taken for
    /// the original); the partition and offset of each.
    pub async fn publish_as(
        &self,
        producer: &str,
        topic: &str,
        events: &[&str],
        ids: Option<&[String]>,
    ) -> Result<Vec<(u32, i64)>, BusError> {
        check_topic(topic)?;
        if !valid_token(producer) {
            return Err(BusError::Refused(format!(
                "producer {producer:?}: not a service name"
            )));
        }
        self.producers
            .may_publish(producer, topic)
            .map_err(BusError::Forbidden)?;
        let conn = self.conn().await?;
        let mut messages = Vec::with_capacity(events.len());
        for (i, json) in events.iter().enumerate() {
            let head: Head<'_> = serde_json::from_str(json)
                .map_err(|e| BusError::Refused(format!("event {i} is not a CloudEvent: {e}")))?;
            // What the embedded log checks of every event, so both refuse the same.
            if head.specversion != "1.0" || head.id.is_empty() {
                return Err(BusError::Refused(format!(
                    "event {i}: specversion must be \"1.0\" and id not empty"
                )));
            }
            let most = conn.max_payload.saturating_sub(HEADERS_ROOM);
            if json.len() > most {
                return Err(BusError::TooLarge(format!(
                    "event {i} is {} bytes; NATS takes {most} an event",
                    json.len(),
                )));
            }
            let key = head
                .partitionkey
                .as_deref()
                .or(head.subject.as_deref())
                .unwrap_or(&head.id);
            let partition = partition_of(key, self.settings.partitions);
            let subject = format!("{}.{topic}.{producer}.{partition}", self.settings.prefix);
            let mut headers = HeaderMap::new();
            let id = ids
                .and_then(|ids| ids.get(i))
                .map_or(head.id.as_ref(), String::as_str);
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
            if let Some(tp) = head.traceparent.as_deref() {
                headers.insert("traceparent", tp);
            }
            messages.push((
                partition,
                subject,
                headers,
                Bytes::copy_from_slice(json.as_bytes()),
            ));
        }
        if !self.stream_known(topic) {
            self.stream(conn, topic).await?;
        }
        match self.send(conn, &messages).await {
            // Deleted since this process made sure of it: made again, and the whole batch
            // sent again (what got in before is a duplicate by its id).
            Err(e) if e.kind() == context::PublishErrorKind::StreamNotFound => {
                self.stream(conn, topic).await?;
                self.send(conn, &messages).await.map_err(publish_error)
            }
            other => other.map_err(publish_error),
        }
    }

    /// Sends every message, then waits for every acknowledgement: one round trip for a
    /// batch. Where each was stored.
    async fn send(
        &self,
        conn: &Conn,
        messages: &[(u32, String, HeaderMap, Bytes)],
    ) -> Result<Vec<(u32, i64)>, context::PublishError> {
        let mut acks = Vec::with_capacity(messages.len());
        for (partition, subject, headers, payload) in messages {
            let ack = conn
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await?;
            acks.push((*partition, ack));
        }
        let mut stored = Vec::with_capacity(acks.len());
        for (partition, ack) in acks {
            stored.push((partition, offset_of(ack.await?.sequence)));
        }
        Ok(stored)
    }
}

impl Drop for NatsBus {
    /// Stops pulling: what was pulled and not committed is handed out again after the ack
    /// wait, as for a process that died.
    fn drop(&mut self) {
        let members = self.members.get_mut().unwrap_or_else(|e| e.into_inner());
        for member in members.values() {
            if let Ok(mut state) = member.state.try_lock() {
                state.stop();
            }
        }
    }
}

/// The offset consumers see of the message at stream sequence `seq` (JetStream counts from 1).
fn offset_of(seq: u64) -> i64 {
    seq as i64 - 1
}

/// The `Nats-Msg-Id` of `event`: its id, and for a dead letter where its original was.
pub fn message_id(event: &Event) -> String {
    let at = |k: &str| event.extensions.get(k).map(|v| v.to_string());
    match (
        at("deadlettertopic"),
        at("deadletterpartition"),
        at("deadletteroffset"),
    ) {
        (Some(t), Some(p), Some(o)) => format!("{}.dead.{}.{p}.{o}", event.id, t.trim_matches('"')),
        _ => event.id.clone(),
    }
}

/// The producer token of an event's subject, `<prefix>.<topic…>.<producer>.<partition>`.
fn producer_of(subject: &str) -> Option<&str> {
    subject.rsplit('.').nth(1)
}

/// The partition of an event's subject.
fn partition_of_subject(subject: &str) -> Option<u32> {
    subject.rsplit('.').next()?.parse().ok()
}

/// How often a member that holds less than its share looks for a partition given back.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// The attributes of a CloudEvent the bus reads to publish it.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    specversion: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    partitionkey: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    traceparent: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    _type: std::borrow::Cow<'a, str>,
    #[serde(borrow, rename = "source")]
    _source: std::borrow::Cow<'a, str>,
}

fn publish_error(e: context::PublishError) -> BusError {
    match e.kind() {
        context::PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge(e.to_string()),
        _ => BusError::Unavailable(format!("NATS did not take the events: {e}")),
    }
}

impl Bus for NatsBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let json = events
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BusError::Refused(e.to_string()))?;
            let refs: Vec<&str> = json.iter().map(String::as_str).collect();
            // A dead letter keeps its event's id; its message id is the delivery it comes from,
            // so that the same event dead-lettered again after a replay (a new delivery) is not
            // taken for a duplicate, and a retried publish of one still is.
            let ids: Vec<String> = events.iter().map(message_id).collect();
            self.publish_as(&self.service, topic, &refs, Some(&ids))
                .await
                .map(drop)
        })
    }

    fn publish_json<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.publish_raw(topic, events))
    }

    /// NATS takes a message at most `max_payload` long (1 MB unless the server says
    /// otherwise), headers included; each event is a message of its own.
    fn max_publish_bytes(&self) -> usize {
        self.conn
            .get()
            .map_or(DEFAULT_MAX_PAYLOAD, |c| c.max_payload)
            .saturating_sub(HEADERS_ROOM)
    }

    fn fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Batch, BusError>> {
        Box::pin(async move {
            check_topic(topic)?;
            let member = self.member(topic, group, consumer);
            self.fetch_for(&member, max.max(1), wait).await
        })
    }

    fn renew<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u32>, BusError>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let member = self.member(topic, group, consumer);
            let mut state = member.state.lock().await;
            self.refresh(conn, &member, &mut state, false).await?;
            // What is being handled is not handed out again meanwhile.
            for held in state.unacked.values().flat_map(|q| q.values()) {
                let _ = held.acker.ack_with(jetstream::AckKind::Progress).await;
            }
            Ok(state.held.clone())
        })
    }

    fn commit<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let member = self.member(topic, group, consumer);
            let mut state = member.state.lock().await;
            self.lapse_if_over(&mut state);
            if !state.held.contains(&partition) {
                return Err(BusError::Lost(format!(
                    "partition {partition} of {topic} is no longer held by {consumer}"
                )));
            }
            // Each message handed out before the offset acked by itself: an ack never covers
            // one the member has not handed out (one handed out again after a takeover).
            let Some(queue) = state.unacked.get_mut(&partition) else {
                return Ok(());
            };
            let first_kept = u64::try_from(offset.saturating_add(1)).unwrap_or(0);
            let rest = queue.split_off(&first_kept);
            let below = std::mem::replace(queue, rest);
            // One below the offset that was never handed out (taken in while a batch was out)
            // stays, to be handed out: the commit is not its.
            let (done, kept): (Vec<_>, Vec<_>) = below.into_iter().partition(|(_, h)| h.handed);
            queue.extend(kept);
            for (_, held) in done {
                held.acker
                    .ack()
                    .await
                    .map_err(|e| BusError::Unavailable(format!("cannot ack on NATS: {e}")))?;
            }
            Ok(())
        })
    }

    fn leave<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let Some(conn) = self.conn.get() else {
                return Ok(());
            };
            let member = self.member(topic, group, consumer);
            let mut state = member.state.lock().await;
            // Pulling stops before the partitions are given back.
            state.stop();
            for held in state.unacked.drain().flat_map(|(_, q)| q.into_values()) {
                let _ = held.acker.ack_with(jetstream::AckKind::Nak(None)).await;
            }
            group::change(&conn.groups, &member.key, |g| g.leave(consumer)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_what_is_wrong_is_named_without_the_password() {
        let s = NatsSettings::parse("nats://svc:p%40ss@10.0.0.1:4222,10.0.0.2:4222/?replicas=3")
            .unwrap();
        assert_eq!(s.servers, ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]);
        assert_eq!(s.user, Some(("svc".into(), "p@ss".into())));
        assert_eq!(
            (s.replicas, s.partitions, s.prefix.as_str()),
            (3, 4, "tessera")
        );
        for (url, says) in [
            ("http://x:4222", "nats://"),
            ("nats://", "at least one"),
            ("nats://u:secret@h:4222?replicas=0", "replicas"),
            ("nats://u:secret@h:4222?colour=red", "colour"),
            ("nats://u:secret@h:4222?prefix=a.b", "prefix"),
            ("nats://u:secret@h:4222?prefix=a-b", "prefix"),
            ("nats://u:se?cret@h:4222?colour=red", "colour"),
        ] {
            let e = NatsSettings::parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret") && !e.contains("cret"), "{url}: {e}");
        }
    }

    #[test]
    fn names_never_collide_and_topics_make_subjects() {
        assert_ne!(escape("a.b"), escape("a_b"));
        assert_ne!(escape("a_-"), escape("a."));
        assert_eq!(escape("shop.orders"), "shop_-orders");
        assert!(check_topic("shop.orders").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "a*", "a>"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }
}
