//! A member of a consumer group in this process: the partitions it holds, a task pulling
//! each, and what it has handed out and not yet had committed.
//!
//! A fetch hands out, first, whatever the member handed out before and was not committed
//! (the embedded log's rule: a fetch starts from the committed offset), so an answer that
//! never reached its consumer (an HTTP consumer behind the control plane whose connection
//! dropped) is not lost: it comes again at the next fetch, and a commit only ever acks what
//! was handed out before it. The member's state is never locked across the wait for new
//! messages (the channel has a lock of its own), so a commit or a renewal of the same member
//! never waits behind a fetch.
//!
//! The member's hold on its partitions is a lease in the group's document; its pullers stop
//! when that lease runs out unrefreshed (NATS unreachable, the consumer gone quiet), before
//! another member may take the partitions, and a member nobody has used for a while is
//! dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::Acker};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Conn, NatsBus, escape, group, offset_of};
use crate::{Batch, BusError, Delivery, Event, Part};

/// Messages a partition's puller asks for at a time, and how many may wait in the member's
/// channel: small, because a message waiting here is not kept alive (its ack wait runs).
const PULL_BATCH: usize = 64;
const CHANNEL: usize = 256;

/// The longest wait a fetch may be asked for (the control plane caps HTTP consumers' at 30 s).
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// How many messages a partition may have delivered and not yet acked.
pub(super) const MAX_ACK_PENDING: i64 = 1024;

/// One member of a group on one topic, in this process.
pub(super) struct Member {
    pub topic: String,
    pub group: String,
    pub consumer: String,
    /// The group's document in the groups bucket.
    pub key: String,
    pub state: tokio::sync::Mutex<MemberState>,
    /// Held only while waiting for messages.
    rx: tokio::sync::Mutex<mpsc::Receiver<Delivered>>,
    tx: mpsc::Sender<Delivered>,
    /// When a call last used this member.
    used: std::sync::Mutex<Instant>,
    /// Until when its lease holds (ms since `epoch`), for its pullers to stop at.
    lease_end: Arc<std::sync::atomic::AtomicU64>,
    epoch: Instant,
}

pub(super) struct MemberState {
    pub held: Vec<u32>,
    /// Holding less than a fair share at the last refresh: looks again sooner.
    wanting: bool,
    /// When it last took its fair share (renewals while handling a batch keep what it holds).
    balanced: Option<Instant>,
    /// Until when, as far as this process knows, its lease holds.
    held_until: Option<Instant>,
    /// The task pulling each held partition, with the generation its messages carry.
    pullers: HashMap<u32, (u64, tokio::task::JoinHandle<()>)>,
    consumers: HashMap<u32, consumer::PullConsumer>,
    next_gen: u64,
    /// Handed out (or pulled) and not yet committed, per partition, by stream sequence.
    pub unacked: HashMap<u32, BTreeMap<u64, Held>>,
}

/// A message the member has and has not had committed.
pub(super) struct Held {
    pub acker: Acker,
    /// Handed out in a batch (a commit acks only those).
    pub handed: bool,
    producer: Option<String>,
    payload: Bytes,
}

/// A message pulled for a member.
struct Delivered {
    partition: u32,
    generation: u64,
    sequence: u64,
    producer: Option<String>,
    payload: Bytes,
    acker: Acker,
}

impl MemberState {
    /// Stops pulling everything, and forgets what it held.
    pub fn stop(&mut self) {
        for (_, (_, task)) in self.pullers.drain() {
            task.abort();
        }
        self.held.clear();
        self.held_until = None;
    }
}

impl NatsBus {
    /// The member `consumer` of `group` on `topic`; members nobody used for the longest
    /// fetch and two leases more are dropped on the way (a consumer that died without
    /// leaving, behind the control plane), never one in the middle of a fetch.
    pub(super) fn member(&self, topic: &str, group: &str, consumer: &str) -> Arc<Member> {
        let idle = LONGEST_WAIT + 2 * self.settings.lease;
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|_, m| {
            let used = *m.used.lock().unwrap_or_else(|e| e.into_inner());
            if used.elapsed() < idle || m.rx.try_lock().is_err() {
                return true;
            }
            match m.state.try_lock() {
                Ok(mut state) => {
                    state.stop();
                    false
                }
                Err(_) => true,
            }
        });
        let member = members
            .entry((topic.to_string(), group.to_string(), consumer.to_string()))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(CHANNEL);
                Arc::new(Member {
                    topic: topic.to_string(),
                    group: group.to_string(),
                    consumer: consumer.to_string(),
                    key: format!("{}.{}", escape(topic), escape(group)),
                    state: tokio::sync::Mutex::new(MemberState {
                        held: Vec::new(),
                        wanting: true,
                        balanced: None,
                        held_until: None,
                        pullers: HashMap::new(),
                        consumers: HashMap::new(),
                        next_gen: 0,
                        unacked: HashMap::new(),
                    }),
                    rx: tokio::sync::Mutex::new(rx),
                    tx,
                    used: std::sync::Mutex::new(Instant::now()),
                    lease_end: Arc::default(),
                    epoch: Instant::now(),
                })
            })
            .clone();
        *member.used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        member
    }

    /// Refreshes `member`'s lease in its group, and pulls exactly the partitions it holds.
    pub(super) async fn refresh(
        &self,
        conn: &Conn,
        member: &Member,
        state: &mut MemberState,
        may_release: bool,
    ) -> Result<(), BusError> {
        let now = tessera_trace::unix_now_ms().max(0) as u64;
        let lease = self.settings.lease;
        let partitions = self.settings.partitions;
        let asked = Instant::now();
        let result = group::change(&conn.groups, &member.key, |g| {
            let held = g.refresh(&member.consumer, now, lease, partitions, may_release);
            let share = partitions.div_ceil(g.members.len() as u32);
            (held, share)
        })
        .await;
        let (held, share) = match result {
            Ok(r) => r,
            Err(e) => {
                self.lapse_if_over(state);
                return Err(e);
            }
        };
        state.held_until = Some(asked + lease);
        member.lease_end.store(
            (asked + lease).duration_since(member.epoch).as_millis() as u64,
            std::sync::atomic::Ordering::Release,
        );
        if may_release {
            state.balanced = Some(Instant::now());
        }
        state.wanting = (held.len() as u32) < share;
        // Given back: stop pulling, and hand what was pulled and not handled back at once.
        let gone: Vec<u32> = state
            .pullers
            .keys()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        for p in gone {
            if let Some((_, task)) = state.pullers.remove(&p) {
                task.abort();
            }
            for (_, h) in state.unacked.remove(&p).unwrap_or_default() {
                let _ = h.acker.ack_with(jetstream::AckKind::Nak(None)).await;
            }
        }
        for &p in &held {
            if state.pullers.contains_key(&p) {
                continue;
            }
            let cached = state.consumers.get(&p).cloned();
            let pull = match self.take_over(conn, member, p, cached).await {
                Ok(c) => {
                    state.consumers.insert(p, c.clone());
                    c
                }
                // Held in the group's document, not pulled yet: tried again at the next
                // refresh (and given back if this member goes).
                Err(e) => {
                    tracing::warn!(topic = %member.topic, partition = p, error = %e, "cannot pull a partition yet");
                    continue;
                }
            };
            state.next_gen += 1;
            let generation = state.next_gen;
            let task = tokio::spawn(pull_partition(
                pull,
                p,
                generation,
                member.tx.clone(),
                (member.lease_end.clone(), member.epoch),
            ));
            state.pullers.insert(p, (generation, task));
        }
        // What it holds is what it pulls: a commit elsewhere is refused as moved.
        state.held = held
            .into_iter()
            .filter(|p| state.pullers.contains_key(p))
            .collect();
        Ok(())
    }

    /// If the member's lease ran out without a refresh, another member may hold its
    /// partitions now: it stops pulling them, and what it had is theirs to hand out.
    pub(super) fn lapse_if_over(&self, state: &mut MemberState) {
        if state
            .held_until
            .is_some_and(|until| Instant::now() >= until)
        {
            tracing::warn!("consumer group lease lapsed without a refresh; partitions given up");
            state.stop();
            state.unacked.clear();
        }
    }

    /// `partition`'s durable consumer, for a member that has just taken the partition.
    ///
    /// If messages are still delivered and unacked (a predecessor died holding them, or gave
    /// the partition back with some on their way to it), JetStream would hand each out again
    /// only when its own ack wait runs out, and one handed to a pull request that is still
    /// open (the predecessor's, dying) waits a whole ack wait more, behind newer ones: events
    /// of one key would come out of order. The same with nothing unacked but a predecessor's
    /// pull request still waiting on the server: it would take the next message. So the consumer is made again, starting right
    /// after its ack floor (everything before it handled and acked): what was left comes
    /// first, in order, at once, and the old deliveries and pull requests are void. Retries
    /// are the consumer's own (no `max_deliver`), so nothing is lost with the delivery counts.
    async fn take_over(
        &self,
        conn: &Conn,
        member: &Member,
        partition: u32,
        cached: Option<consumer::PullConsumer>,
    ) -> Result<consumer::PullConsumer, BusError> {
        let (topic, group) = (&member.topic, &member.group);
        let name = format!("{}-{partition}", escape(group));
        let mut pull = match cached {
            Some(c) => c,
            None => self.durable(conn, topic, group, partition, None).await?,
        };
        let info = match pull.get_info().await {
            Ok(info) => info,
            // Gone (a member died between the two steps below, or an operator deleted it):
            // made again, from the stream's start; the inbox absorbs what comes twice.
            Err(_) => {
                pull = self.durable(conn, topic, group, partition, None).await?;
                pull.get_info().await.map_err(|e| {
                    BusError::Unavailable(format!("cannot read consumer {name} on {topic}: {e}"))
                })?
            }
        };
        // Nothing delivered and unacked, and no pull request of a predecessor still open on
        // the server (it would take the next message, to come back an ack wait later).
        if info.num_ack_pending == 0 && info.num_waiting == 0 {
            return Ok(pull);
        }
        let floor = info.ack_floor.stream_sequence;
        tracing::info!(topic = %topic, partition, left = info.num_ack_pending, waiting = info.num_waiting, after = floor, "taking a partition over: its consumer starts again after its ack floor");
        let stream = self.stream(conn, topic).await?;
        stream.delete_consumer(&name).await.map_err(|e| {
            BusError::Unavailable(format!("cannot remake consumer {name} on {topic}: {e}"))
        })?;
        self.durable(conn, topic, group, partition, Some(floor + 1))
            .await
    }

    /// The group's durable consumer of `partition`, created if it is not there yet (from the
    /// stream sequence `from`, else from the start).
    pub(super) async fn durable(
        &self,
        conn: &Conn,
        topic: &str,
        group: &str,
        partition: u32,
        from: Option<u64>,
    ) -> Result<consumer::PullConsumer, BusError> {
        let stream = self.stream(conn, topic).await?;
        let name = format!("{}-{partition}", escape(group));
        let deliver_policy = match from {
            Some(start_sequence) if start_sequence > 1 => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            _ => consumer::DeliverPolicy::All,
        };
        stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("Tessera group {group}, partition {partition}")),
                    filter_subject: format!("{}.{topic}.*.{partition}", self.settings.prefix),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.lease,
                    max_ack_pending: MAX_ACK_PENDING,
                    deliver_policy,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                BusError::Unavailable(format!("cannot make consumer {name} on {topic}: {e}"))
            })
    }

    /// Up to `max` events for `member`: what it handed out before and was not committed
    /// first, else what arrives within `wait`.
    pub(super) async fn fetch_for(
        &self,
        member: &Member,
        max: usize,
        wait: Duration,
    ) -> Result<Batch, BusError> {
        let conn = self.conn().await?;
        let deadline = tokio::time::Instant::now() + wait;
        // Refreshing often enough that a short lease never runs out between two looks.
        let look_every = super::LOOK_AGAIN.min(self.settings.lease / 3);
        loop {
            *member.used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            {
                let mut state = member.state.lock().await;
                self.lapse_if_over(&mut state);
                let due = match state.balanced {
                    None => true,
                    Some(at) => {
                        at.elapsed() >= self.settings.lease / 3
                            || (state.wanting && at.elapsed() >= super::LOOK_AGAIN)
                    }
                };
                if due {
                    self.refresh(conn, member, &mut state, true).await?;
                }
                if state.unacked.values().any(|q| !q.is_empty()) {
                    // What it has, and what has come since, without waiting.
                    let mut got = Vec::new();
                    if let Ok(mut rx) = member.rx.try_lock() {
                        while got.len() < max {
                            match rx.try_recv() {
                                Ok(d) => got.push(d),
                                Err(_) => break,
                            }
                        }
                    }
                    self.keep(&mut state, got).await;
                    return Ok(self.batch(&mut state, max, &member.topic));
                }
            }
            let look = tokio::time::Instant::now() + look_every;
            let mut got = Vec::new();
            {
                let mut rx = member.rx.lock().await;
                if let Ok(Some(d)) = tokio::time::timeout_at(look.min(deadline), rx.recv()).await {
                    got.push(d);
                    while got.len() < max {
                        match rx.try_recv() {
                            Ok(d) => got.push(d),
                            Err(_) => break,
                        }
                    }
                }
            }
            if !got.is_empty() {
                let mut state = member.state.lock().await;
                self.keep(&mut state, got).await;
                if state.unacked.values().any(|q| !q.is_empty()) {
                    return Ok(self.batch(&mut state, max, &member.topic));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Batch {
                    parts: Vec::new(),
                    lease: Some(self.settings.lease),
                });
            }
        }
    }

    /// Keeps pulled messages as the member's until committed; one of a partition given back
    /// since it was pulled is handed back to JetStream, and one JetStream gave again while the
    /// member had it keeps the newer delivery's ack.
    async fn keep(&self, state: &mut MemberState, got: Vec<Delivered>) {
        for d in got {
            let current = state.pullers.get(&d.partition).map(|(g, _)| *g) == Some(d.generation);
            if !current {
                let _ = d.acker.ack_with(jetstream::AckKind::Nak(None)).await;
                continue;
            }
            match state
                .unacked
                .entry(d.partition)
                .or_default()
                .entry(d.sequence)
            {
                // Given again while the member had it: the newer delivery's ack, the same
                // message (handed out or not, as it was).
                std::collections::btree_map::Entry::Occupied(mut held) => {
                    held.get_mut().acker = d.acker;
                }
                std::collections::btree_map::Entry::Vacant(free) => {
                    free.insert(Held {
                        acker: d.acker,
                        handed: false,
                        producer: d.producer,
                        payload: d.payload,
                    });
                }
            }
        }
    }

    /// What the member has and has not had committed, oldest first per partition, up to
    /// `max` events and about `MAX_FETCH_BYTES` (at least one event).
    fn batch(&self, state: &mut MemberState, max: usize, topic: &str) -> Batch {
        let mut parts: Vec<Part> = Vec::new();
        let (mut count, mut bytes) = (0, 0);
        let mut partitions: Vec<u32> = state.unacked.keys().copied().collect();
        partitions.sort();
        'partitions: for partition in partitions {
            let mut events = Vec::new();
            let queue = state.unacked.get_mut(&partition).expect("a key of the map");
            for (&sequence, held) in queue.iter_mut() {
                if count >= max
                    || (count > 0 && bytes + held.payload.len() > crate::wire::MAX_FETCH_BYTES)
                {
                    if !events.is_empty() {
                        parts.push(Part { partition, events });
                    }
                    break 'partitions;
                }
                count += 1;
                bytes += held.payload.len();
                held.handed = true;
                let offset = offset_of(sequence);
                let event = serde_json::from_slice::<Event>(&held.payload)
                    .map(|mut event| {
                        event.delivery = Some(Delivery {
                            partition,
                            offset,
                            producer: held.producer.as_ref().map(|p| format!("service:{p}")),
                        });
                        event
                    })
                    // Why, then the text itself on the next line, as the other bus gives it.
                    .map_err(|e| format!("{e}\n{}", String::from_utf8_lossy(&held.payload)));
                events.push((offset, event));
            }
            if !events.is_empty() {
                parts.push(Part { partition, events });
            }
        }
        if count > 0 {
            metrics::counter!("tessera_events_fetched_total", "topic" => topic.to_string(), "bus" => "nats")
                .increment(count as u64);
        }
        Batch {
            parts,
            lease: Some(self.settings.lease),
        }
    }
}

/// Pulls `partition`'s durable consumer into `tx` until aborted, or until the member's lease
/// (`lease_end`, ms since its epoch) runs out without a refresh.
async fn pull_partition(
    pull: consumer::PullConsumer,
    partition: u32,
    generation: u64,
    tx: mpsc::Sender<Delivered>,
    (lease_end, epoch): (Arc<std::sync::atomic::AtomicU64>, Instant),
) {
    let lease_left = || {
        let end = Duration::from_millis(lease_end.load(std::sync::atomic::Ordering::Acquire));
        end.checked_sub(epoch.elapsed())
    };
    loop {
        let messages = pull
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_millis(2500))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot pull from NATS; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            // Not past the lease: another member may hold the partition by then.
            let Some(left) = lease_left() else {
                tracing::warn!(partition, "lease ran out unrefreshed; pulling stops");
                return;
            };
            let next = match tokio::time::timeout(left, messages.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(_) => continue,
            };
            let message = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(partition, error = %e, "pull interrupted; pulling again");
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
            let sequence = info.stream_sequence;
            let producer = super::producer_of(&message.subject).map(str::to_string);
            let (message, acker) = message.split();
            let delivered = Delivered {
                partition,
                generation,
                sequence,
                producer,
                payload: message.payload,
                acker,
            };
            if tx.send(delivered).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
