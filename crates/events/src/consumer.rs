//! Consumers: fetch, handle exactly once through the inbox, dead-letter what keeps failing.
//!
//! A member keeps the partitions of a batch for as long as its handlers take: while it works
//! it renews its lease every third of it ([`Bus::renew`]), so a handler that retries for
//! longer than the lease does not hand its partition to another member mid-work (which would
//! then work on the same key at the same time, out of order). What the log delivers that is
//! not a CloudEvent, and what a topic's declared producers did not publish, are dead-lettered
//! at once with why, never skipped (`consumer/dead_letter.rs`).

mod dead_letter;
mod stuck;

pub use stuck::{Stuck, StuckEvent};

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;

use tessera_trace::{REQUEST, RequestContext};

use crate::bus::BoxFuture;
use crate::outbox::{Outbox, Tx};
use crate::{Batch, Bus, BusError, Event, Producers};
use tessera_store::Db;
use tessera_trace::TraceContext;

/// Why a handler failed, and whether trying again may help.
#[derive(Debug)]
pub struct HandlerError {
    pub message: String,
    pub retryable: bool,
    /// The transaction lost a race with a concurrent one (a database server rolled
    /// it back): tried again at once, not counted as a failed attempt.
    pub conflict: bool,
    /// The database could not be reached: tried again until it is back, not counted as a
    /// failed attempt (an outage must not send every event meanwhile to the dead letters).
    pub outage: bool,
}

impl HandlerError {
    /// A failure that may pass (a busy database, an unreachable service).
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            conflict: false,
            outage: false,
        }
    }

    /// A failure that will not (malformed data): the event goes to the dead letters at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            conflict: false,
            outage: false,
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<tessera_store::DbError> for HandlerError {
    fn from(e: tessera_store::DbError) -> Self {
        Self {
            conflict: e.is_race(),
            outage: e.is_unavailable(),
            ..Self::retry(e.to_string())
        }
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        Self::permanent(format!("bad event data: {e}"))
    }
}

/// Handles one event, writing its effects in `tx` (which also records the event in the
/// inbox). Add events for other services with `outbox::add(tx, ...)`.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// How a consumer group reads a topic.
#[derive(Clone, Debug)]
pub struct Consumer {
    pub topic: String,
    pub group: String,
    /// Attempts before an event is dead-lettered.
    pub max_attempts: u32,
    /// Events fetched at once.
    pub batch: usize,
}

/// Mints a passport for work done under a trace.
pub type MintPassport = Arc<dyn Fn(&TraceContext) -> http::HeaderValue + Send + Sync>;

/// What a consumer needs from its service.
#[derive(Clone)]
pub struct ConsumerEnv {
    pub db: Db,
    pub bus: Arc<dyn Bus>,
    /// This process's name in the group.
    pub instance: String,
    /// Mints the passport an event is handled under (the service's own, role `system`), for
    /// the calls its handler makes. The service runtime gives it: this crate does not know
    /// what a passport holds.
    pub passport: MintPassport,
    pub outbox: Outbox,
    /// Who may publish to which topic: an event from anyone else is dead-lettered unhandled.
    pub producers: Producers,
    /// The events this service's consumers are stuck on (`consumer/stuck.rs`).
    pub stuck: Stuck,
}

enum Outcome {
    Handled,
    Duplicate,
}

impl Consumer {
    pub fn new(topic: &str, group: &str) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            max_attempts: 5,
            batch: 100,
        }
    }

    /// Runs until `stop` turns true (finishing the event in hand).
    pub fn spawn(
        self,
        env: ConsumerEnv,
        handler: Arc<dyn Handler>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            // The last batch's commits (one per partition it had events of) travel with the
            // next fetch: one exchange per batch.
            let mut pending: Vec<(u32, i64)> = Vec::new();
            while !*stop.borrow() {
                let (committed, fetched) = tokio::select! {
                    r = env.bus.commit_and_fetch(&self.topic, &self.group, &env.instance, &pending, self.batch, Duration::from_secs(5)) => r,
                    _ = stop.changed() => break,
                };
                match committed {
                    // Unknown (the exchange failed): sent again with the next fetch.
                    None => {}
                    Some(Ok(())) => pending.clear(),
                    Some(Err(e)) => {
                        self.commit_failed(&e);
                        pending.clear();
                    }
                }
                let batch = match fetched {
                    Ok(b) => {
                        if failing {
                            tracing::info!(topic = %self.topic, "consuming again");
                            failing = false;
                        }
                        b
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(topic = %self.topic, error = %e, "cannot fetch events; retrying");
                            failing = true;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    continue;
                }
                // Held through the batch, however long its handlers take: the lease is renewed
                // while they work, so no other member takes these partitions meanwhile.
                let handled = self.handle_batch(&env, handler.as_ref(), &batch, &stop);
                let done = with_lease(handled, self.keep_lease(&env, batch.lease)).await;
                for (partition, next) in done {
                    pending.retain(|(p, _)| *p != partition);
                    pending.push((partition, next));
                }
            }
            // Stopping: what was handled is committed now, not left to be redelivered.
            for (partition, offset) in pending {
                let commit =
                    env.bus
                        .commit(&self.topic, &self.group, &env.instance, partition, offset);
                match tokio::time::timeout(Duration::from_secs(3), commit).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.commit_failed(&e),
                    Err(_) => {
                        tracing::warn!(topic = %self.topic, "commit timed out; events will be redelivered")
                    }
                }
            }
            // And what it held goes to the group's other members now, not after its lease.
            let leave = env.bus.leave(&self.topic, &self.group, &env.instance);
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(3), leave).await {
                tracing::debug!(topic = %self.topic, error = %e, "cannot leave the group; its lease will lapse");
            }
        })
    }

    /// Handles a batch: the next offset to commit per partition, for what was settled
    /// (handled, a duplicate, or dead-lettered).
    async fn handle_batch(
        &self,
        env: &ConsumerEnv,
        handler: &dyn Handler,
        batch: &Batch,
        stop: &watch::Receiver<bool>,
    ) -> Vec<(u32, i64)> {
        let mut done = Vec::with_capacity(batch.parts.len());
        // What is not a CloudEvent is dead-lettered first, with why; the rest go on.
        for part in &batch.parts {
            for (offset, event) in &part.events {
                if let Err(why) = event
                    && !self
                        .dead_letter_invalid(env, part.partition, *offset, why, stop)
                        .await
                {
                    return done; // stopping: nothing of this batch is committed
                }
            }
        }
        // A batch is handled in one transaction (one commit for all); if any handler fails,
        // that transaction rolls back and the events go one by one, each with its own retries.
        let valid = batch
            .parts
            .iter()
            .flat_map(|p| &p.events)
            .filter(|(_, e)| e.is_ok())
            .count();
        let together = valid > 1 && self.handle_together(env, handler, batch).await;
        let mut stopped = false;
        for part in &batch.parts {
            let mut next = None;
            if together {
                next = part.events.last().map(|(offset, _)| offset + 1);
            } else if !stopped {
                for (offset, event) in &part.events {
                    if *stop.borrow() {
                        stopped = true;
                        break;
                    }
                    if let Ok(event) = event
                        && !self.process(env, handler, event, stop).await
                    {
                        stopped = true; // stopping in the middle of retries: not handled
                        break;
                    }
                    next = Some(offset + 1);
                }
            }
            if let Some(next) = next {
                done.push((part.partition, next));
            }
        }
        done
    }

    /// Renews the batch's lease every third of it, for as long as it is polled (never ends).
    async fn keep_lease(&self, env: &ConsumerEnv, lease: Option<Duration>) {
        let Some(lease) = lease else {
            return std::future::pending().await;
        };
        let every = (lease / 3).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            match env.bus.renew(&self.topic, &self.group, &env.instance).await {
                Ok(held) if held.is_empty() => tracing::warn!(
                    topic = %self.topic,
                    "the lease lapsed while handling a batch; its partitions may be redelivered"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "cannot renew the lease; retrying")
                }
            }
        }
    }

    fn commit_failed(&self, e: &BusError) {
        match e {
            BusError::Lost(_) => {
                tracing::info!(topic = %self.topic, "partition moved to another consumer")
            }
            e => {
                tracing::warn!(topic = %self.topic, error = %e, "commit failed; events will be redelivered")
            }
        }
    }

    /// The request context and span an event is handled under: its trace continued, and a
    /// passport of the service itself; and the consumer span recording it, child of the
    /// producer's span (the event's `traceparent`), so a trace crosses the bus.
    fn context(
        &self,
        env: &ConsumerEnv,
        event: &Event,
    ) -> (RequestContext, tracing::Span, tessera_trace::Span) {
        let producer = event.trace();
        let trace = producer.map_or_else(TraceContext::new_root, |t| t.child());
        let span = trace.span("event");
        let mut recorded = tessera_trace::Span::open(
            &trace,
            producer.map(|p| p.span_id),
            "process",
            tessera_trace::Kind::Consumer,
        );
        if recorded.is_recording() {
            recorded.rename(format!("{} process", self.topic));
            recorded.set("messaging.system", "tessera");
            recorded.set("messaging.operation.type", "process");
            recorded.set("messaging.destination.name", &self.topic);
            recorded.set("messaging.consumer.group.name", &self.group);
            recorded.set("messaging.message.id", &event.id);
            recorded.set("cloudevents.event_type", &event.ty);
            if let Some(d) = &event.delivery {
                recorded.set("messaging.destination.partition.id", d.partition);
                recorded.set("messaging.message.offset", d.offset);
            }
        }
        let passport = (env.passport)(&trace);
        let ctx = RequestContext {
            passport,
            trace,
            deadline: None,
        };
        (ctx, span, recorded)
    }

    /// Logs and counts an event that was settled.
    fn settled(&self, event: &Event, span: &tracing::Span, outcome: Outcome, started: Instant) {
        match outcome {
            Outcome::Handled => {
                span.in_scope(|| {
                    tracing::info!(
                        target: "event",
                        topic = %self.topic,
                        event_type = %event.ty,
                        id = %event.id,
                        latency_ms = started.elapsed().as_micros() as f64 / 1000.0,
                        "event handled"
                    )
                });
                metrics::counter!("tessera_events_handled_total", "topic" => self.topic.clone())
                    .increment(1);
            }
            Outcome::Duplicate => {
                span.in_scope(
                    || tracing::debug!(target: "event", id = %event.id, "duplicate event ignored"),
                );
                metrics::counter!("tessera_events_duplicates_total", "topic" => self.topic.clone())
                    .increment(1);
            }
        }
    }

    /// Handles every event of a batch in one transaction; `false` (and nothing written) if
    /// any handler or the commit failed.
    async fn handle_together(
        &self,
        env: &ConsumerEnv,
        handler: &dyn Handler,
        batch: &Batch,
    ) -> bool {
        let started = Instant::now();
        let Ok(mut tx) = env.db.write_tx().await else {
            return false;
        };
        let events = || batch.parts.iter().flat_map(|p| &p.events);
        let mut done = Vec::with_capacity(batch.len());
        for (_, event) in events() {
            let Ok(event) = event else { continue };
            let (ctx, span, recorded) = self.context(env, event);
            let outcome = REQUEST
                .scope(ctx, self.handle_in(env, &mut tx, handler, event))
                .instrument(span.clone())
                .await;
            match outcome {
                Ok(outcome) => done.push((event, span, recorded, outcome)),
                // Dropping tx rolls back; one by one says why (and records the spans again).
                Err(_) => return false,
            }
        }
        if tx.commit().await.is_err() {
            for (_, _, mut recorded, _) in done {
                recorded.fail("the batch's commit failed; handled again one by one");
            }
            return false;
        }
        env.outbox.wake();
        for (event, span, recorded, outcome) in done {
            self.settled(event, &span, outcome, started);
            drop(recorded);
        }
        true
    }

    /// Handles one event with retries; `false` if it stopped before the event was settled.
    async fn process(
        &self,
        env: &ConsumerEnv,
        handler: &dyn Handler,
        event: &Event,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        if let Err(why) = env.producers.check(&self.topic, event.delivery.as_ref()) {
            tracing::error!(id = %event.id, error = %why, "event from an undeclared producer; dead-lettering");
            return self.dead_letter(env, event, &why, 1, stop).await;
        }
        let (ctx, span, mut recorded) = self.context(env, event);
        let mut attempt = 0;
        let started = Instant::now();
        let since = tessera_trace::unix_now_ms();
        let until_done = stuck::retried_until_done(event);
        let mut conflicts = 0u32;
        let mut outages = 0u32;
        loop {
            attempt += 1;
            let result = REQUEST
                .scope(ctx.clone(), self.attempt(env, handler, event))
                .instrument(span.clone())
                .await;
            match result {
                Ok(outcome) => {
                    if let Outcome::Handled = outcome {
                        env.outbox.wake();
                    }
                    recorded.set("tessera.attempts", i64::from(attempt));
                    if let Outcome::Duplicate = outcome {
                        recorded.set("tessera.duplicate", true);
                    }
                    env.stuck.clear(&self.topic, &self.group, event);
                    self.settled(event, &span, outcome, started);
                    return true;
                }
                Err(e) if e.conflict && conflicts < MAX_CONFLICTS => {
                    // Many handlers of one hot row (the last units of a product) conflict
                    // in turn: each tries again after a short, random pause, and one of
                    // them wins each round.
                    conflicts += 1;
                    attempt -= 1;
                    let most = 2 * u64::from(conflicts.min(10));
                    tokio::time::sleep(Duration::from_micros(
                        500 + rand::random::<u64>() % (most * 1000),
                    ))
                    .await;
                }
                Err(e) if e.outage => {
                    attempt -= 1;
                    outages += 1;
                    if outages == 1 || outages.is_multiple_of(30) {
                        span.in_scope(|| tracing::warn!(id = %event.id, error = %e, "database unavailable; the event waits for it"));
                    }
                    if *stop.borrow() {
                        return false;
                    }
                    let pause = Duration::from_millis(100 * 2u64.pow(outages.min(5)));
                    tokio::time::sleep(pause).await;
                }
                Err(e) if until_done || (e.retryable && attempt < self.max_attempts) => {
                    if until_done && attempt >= self.max_attempts {
                        span.in_scope(|| tracing::error!(id = %event.id, event_type = %event.ty, attempt, error = %e, "stuck: a compensation keeps failing; retrying until it is done"));
                        env.stuck.failing(
                            &self.topic,
                            &self.group,
                            event,
                            attempt,
                            &e.message,
                            since,
                        );
                    } else {
                        span.in_scope(|| tracing::warn!(id = %event.id, attempt, error = %e, "handler failed; retrying"));
                    }
                    let pause = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
                    if *stop.borrow() {
                        env.stuck.clear(&self.topic, &self.group, event);
                        return false;
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    span.in_scope(|| tracing::error!(id = %event.id, attempt, error = %e, "handler failed; dead-lettering"));
                    recorded.set("tessera.attempts", i64::from(attempt));
                    recorded.fail(format!("dead-lettered: {}", e.message));
                    return self
                        .dead_letter(env, event, &e.message, attempt, stop)
                        .await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        env: &ConsumerEnv,
        handler: &dyn Handler,
        event: &Event,
    ) -> Result<Outcome, HandlerError> {
        let mut tx = env.db.write_tx().await?;
        let outcome = self.handle_in(env, &mut tx, handler, event).await?;
        if let Outcome::Handled = outcome {
            tx.commit().await?;
        }
        Ok(outcome) // a duplicate's tx is dropped: rolled back
    }

    /// Records `event` in the inbox and handles it, in `tx`; a duplicate is not handled, and
    /// an event from a producer the topic does not declare is refused for good.
    async fn handle_in(
        &self,
        env: &ConsumerEnv,
        tx: &mut Tx,
        handler: &dyn Handler,
        event: &Event,
    ) -> Result<Outcome, HandlerError> {
        env.producers
            .check(&self.topic, event.delivery.as_ref())
            .map_err(HandlerError::permanent)?;
        let fresh = tessera_store::query(
            "INSERT INTO tessera_inbox (grp, event_id, handled) VALUES ($1, $2, $3) ON CONFLICT (grp, event_id) DO NOTHING",
        )
        .bind(&self.group)
        .bind(&event.id)
        .bind(tessera_trace::unix_now() as i64)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(Outcome::Duplicate);
        }
        handler.handle(event, tx).await?;
        Ok(Outcome::Handled)
    }
}
/// Conflicts with concurrent transactions an event may meet before they count as failed
/// attempts.
const MAX_CONFLICTS: u32 = 200;

/// Runs `work` to its end while `keep` runs beside it (`keep` never ends on its own).
async fn with_lease<T>(work: impl Future<Output = T>, keep: impl Future<Output = ()>) -> T {
    tokio::pin!(work);
    tokio::pin!(keep);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = &mut keep => {}
        }
    }
}
