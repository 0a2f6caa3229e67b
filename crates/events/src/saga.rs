//! Saga orchestration: a list of steps, each an action sent as a command event and answered by
//! a reply event, each with an optional compensation.
//!
//! The saga's state lives in the orchestrating service's database (`tessera_sagas`) and every
//! move is one transaction: the reply is recorded in the inbox, the state advances, and the
//! next command goes into the outbox, together. So a crash at any point resumes exactly where
//! it was: an unhandled reply is redelivered, an unsent command is still in the outbox, and a
//! step whose reply never comes is timed out by the ticker.
//!
//! - A step's reply `ok` runs the next step; after the last, the saga is `completed`.
//! - A reply `failed` compensates the steps before it, in reverse order, and the saga `failed`.
//! - A step that times out is compensated too (its action may yet happen, so compensations
//!   must be safe whether or not it did), then the ones before it.
//! - A compensation is marked (`sagacompensation`) so that its participant's consumer retries
//!   it until it is done instead of dead-lettering it; one that keeps failing shows as stuck
//!   (`consumer/stuck.rs`: logged, `tessera_events_stuck`, `GET /status/events`).
//! - A reply that arrives for a step the saga is no longer waiting on (late, after a timeout)
//!   goes to [`SagaHooks::stale_reply`], where the service can undo what it implies.
//!
//! Commands carry the saga's data and the extensions `sagaid`, `sagastep` and `sagareplyto`;
//! participants answer with [`reply`]. `docs/sagas.md` walks through the checkout saga.
//!
//! Each move also appends a line to the saga's history (`history.rs`), in the same
//! statement that moves it, and operators act on a saga that waits too long: send its step
//! again, or compensate it now (`operate.rs`, behind the service's `/status/sagas`).

mod history;
mod operate;

pub use history::Action;
pub use history::Entry;
pub use operate::{ActionError, COUNTED, Listing, STATES, SagaSummary, SagaView, Sagas};

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::consumer::{Handler, HandlerError};
use crate::{BoxFuture, Event, Tx, outbox};
use tessera_store::Db;
use tessera_trace::unix_now_ms as now_ms;
use tessera_trace::{Kind, REQUEST, Span, TraceContext};

/// One step of a saga.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    /// Where the step's command (and compensation) is sent.
    pub topic: &'static str,
    /// The command's event type.
    pub command: &'static str,
    /// The compensation's event type, if the step can be undone.
    pub compensation: Option<&'static str>,
    /// How long to wait for the reply.
    pub timeout: Duration,
}

/// A saga's definition.
#[derive(Debug)]
pub struct SagaDef {
    pub name: &'static str,
    /// The `source` of the events it sends.
    pub source: &'static str,
    pub steps: &'static [Step],
}

/// The persisted state of one saga.
#[derive(Debug, Clone)]
pub struct SagaState {
    pub id: String,
    pub step: usize,
    pub status: String,
    pub data: Value,
}

/// What the orchestrating service does as its saga moves, in the same transaction.
pub trait SagaHooks: Send + Sync + 'static {
    /// A step succeeded; `saga.data` already includes the reply's data.
    fn step_done<'a>(
        &'a self,
        tx: &'a mut Tx,
        saga: &'a SagaState,
        step: &'static Step,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
    /// Every step succeeded.
    fn completed<'a>(
        &'a self,
        tx: &'a mut Tx,
        saga: &'a SagaState,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
    /// A step failed or timed out; compensations are on their way.
    fn failed<'a>(
        &'a self,
        tx: &'a mut Tx,
        saga: &'a SagaState,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
    /// A reply the saga no longer waits for.
    fn stale_reply<'a>(
        &'a self,
        _tx: &'a mut Tx,
        _saga: &'a SagaState,
        _step: &'static Step,
        _reply: &'a Event,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A participant's answer to a command.
pub enum Reply {
    Ok(Value),
    Failed(String),
}

/// A saga definition bound to its reply topic.
pub struct Saga {
    def: &'static SagaDef,
    reply_topic: String,
}

impl Saga {
    pub fn new(def: &'static SagaDef) -> Self {
        Self {
            def,
            reply_topic: format!("saga.{}.replies", def.name),
        }
    }

    /// The topic replies come back on: consume it with [`Saga::handler`].
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// Starts saga `id` with `data` (a JSON object), in `tx`.
    pub async fn start(
        &self,
        tx: &mut Tx,
        id: &str,
        data: Value,
    ) -> Result<(), tessera_store::DbError> {
        let now = now_ms();
        let step = &self.def.steps[0];
        let trace = REQUEST.try_with(|r| r.trace).ok();
        tessera_store::query(
            "INSERT INTO tessera_sagas (id, name, step, status, data, deadline, updated, traceparent, started, history) VALUES ($1, $2, 0, 'running', $3, $4, $5, $6, $5, $7)",
        )
        .bind(id)
        .bind(self.def.name)
        .bind(data.to_string())
        .bind(now + step.timeout.as_millis() as i64)
        .bind(now)
        .bind(trace.map(|t| t.header()))
        .bind(Entry::at(now, Action::Command, step.name).line())
        .execute(&mut **tx)
        .await?;
        self.send(tx, id, 0, step.command, &data, true, trace).await
    }

    /// Sends step `step`'s command (or, without `expect_reply`, its compensation), under a
    /// span of its own: a child of the work that decided it (`parent`, else the request or
    /// event being handled), and the parent of the command's producer span.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        tx: &mut Tx,
        id: &str,
        step: usize,
        ty: &str,
        data: &Value,
        expect_reply: bool,
        parent: Option<TraceContext>,
    ) -> Result<(), tessera_store::DbError> {
        let mut event = Event::new(self.def.source, ty, id, data);
        let parent = parent.or_else(|| REQUEST.try_with(|r| r.trace).ok());
        let mut span = Span::NONE;
        if let Some(parent) = parent {
            let (mut s, ctx) = Span::child_of(&parent, "saga step", Kind::Internal);
            if s.is_recording() {
                let what = if expect_reply { "step" } else { "compensate" };
                s.rename(format!(
                    "saga {} {what} {}",
                    self.def.name, self.def.steps[step].name
                ));
                s.set("tessera.saga.name", self.def.name);
                s.set("tessera.saga.id", id);
                s.set("tessera.saga.step", self.def.steps[step].name);
                s.set("tessera.saga.action", what);
                s.set("cloudevents.event_type", ty);
            }
            span = s;
            event.traceparent = Some(ctx.header());
        }
        event.extensions.insert("sagaid".into(), id.into());
        event.extensions.insert("sagastep".into(), step.into());
        if expect_reply {
            event
                .extensions
                .insert("sagareplyto".into(), self.reply_topic.clone().into());
        } else {
            // A compensation: retried by its participant until it is done.
            event
                .extensions
                .insert("sagacompensation".into(), true.into());
        }
        let sent = outbox::add(tx, self.def.steps[step].topic, &event).await;
        if let Err(e) = &sent {
            span.fail(e.to_string());
        }
        sent
    }

    async fn load(
        &self,
        tx: &mut Tx,
        id: &str,
    ) -> Result<Option<SagaState>, tessera_store::DbError> {
        let row: Option<(i64, String, String)> = tessera_store::query_as(
            "SELECT step, status, data FROM tessera_sagas WHERE id = $1 AND name = $2",
        )
        .bind(id)
        .bind(self.def.name)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|(step, status, data)| SagaState {
            id: id.to_string(),
            step: step as usize,
            status,
            data: serde_json::from_str(&data).unwrap_or(Value::Object(Map::new())),
        }))
    }

    /// Advances the saga a reply belongs to.
    pub async fn on_reply(
        &self,
        tx: &mut Tx,
        reply: &Event,
        hooks: &dyn SagaHooks,
    ) -> Result<(), HandlerError> {
        let (Some(id), Some(step)) = (
            reply.extensions.get("sagaid").and_then(Value::as_str),
            reply.extensions.get("sagastep").and_then(Value::as_u64),
        ) else {
            return Err(HandlerError::permanent("reply without sagaid/sagastep"));
        };
        let step = step as usize;
        let Some(def_step) = self.def.steps.get(step) else {
            return Err(HandlerError::permanent(format!(
                "reply for unknown step {step}"
            )));
        };
        let Some(mut saga) = self.load(tx, id).await? else {
            tracing::warn!(saga = %id, "reply for an unknown saga; ignored");
            return Ok(());
        };
        let ok = reply.extensions.get("sagaoutcome").and_then(Value::as_str) == Some("ok");
        let now = now_ms();
        if saga.status != "running" || saga.step != step {
            tracing::info!(saga = %id, step = def_step.name, status = %saga.status, "late reply");
            let outcome = if ok { "ok" } else { "failed" };
            history::append(
                tx,
                id,
                &Entry::at(now, Action::LateReply, def_step.name)
                    .reason(outcome)
                    .line(),
            )
            .await?;
            return hooks.stale_reply(tx, &saga, def_step, reply).await;
        }
        if !ok {
            let reason = reply
                .data
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_string();
            let cause = Entry::at(now, Action::Failed, def_step.name).reason(&reason);
            return self
                .fail(tx, &mut saga, step, &reason, cause, hooks, None)
                .await;
        }
        if let (Value::Object(into), Value::Object(from)) = (&mut saga.data, &reply.data) {
            for (k, v) in from {
                into.insert(k.clone(), v.clone());
            }
        }
        hooks.step_done(tx, &saga, def_step).await?;
        let done = Entry::at(now, Action::Ok, def_step.name).line();
        if let Some(next) = self.def.steps.get(step + 1) {
            saga.step = step + 1;
            let moved = done + &Entry::at(now, Action::Command, next.name).line();
            tessera_store::query("UPDATE tessera_sagas SET step = $2, data = $3, deadline = $4, updated = $5, history = history || $6 WHERE id = $1")
                .bind(id)
                .bind(saga.step as i64)
                .bind(saga.data.to_string())
                .bind(now + next.timeout.as_millis() as i64)
                .bind(now)
                .bind(moved)
                .execute(&mut **tx)
                .await?;
            self.send(tx, id, saga.step, next.command, &saga.data, true, None)
                .await?;
        } else {
            saga.status = "completed".into();
            let moved = done + &Entry::at(now, Action::Completed, "").line();
            tessera_store::query("UPDATE tessera_sagas SET status = 'completed', data = $2, updated = $3, history = history || $4 WHERE id = $1")
                .bind(id)
                .bind(saga.data.to_string())
                .bind(now)
                .bind(moved)
                .execute(&mut **tx)
                .await?;
            hooks.completed(tx, &saga).await?;
        }
        Ok(())
    }

    /// Compensates the steps before `upto` (exclusive) in reverse, and marks the saga failed;
    /// its history gets `cause`, then each compensation sent.
    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        tx: &mut Tx,
        saga: &mut SagaState,
        upto: usize,
        reason: &str,
        cause: Entry,
        hooks: &dyn SagaHooks,
        parent: Option<TraceContext>,
    ) -> Result<(), HandlerError> {
        let now = now_ms();
        let mut moved = cause.line();
        for i in (0..upto).rev() {
            if let Some(compensation) = self.def.steps[i].compensation {
                self.send(tx, &saga.id, i, compensation, &saga.data, false, parent)
                    .await?;
                moved += &Entry::at(now, Action::Compensate, self.def.steps[i].name).line();
            }
        }
        saga.status = "failed".into();
        tessera_store::query(
            "UPDATE tessera_sagas SET status = 'failed', reason = $2, updated = $3, history = history || $4 WHERE id = $1",
        )
        .bind(&saga.id)
        .bind(reason)
        .bind(now)
        .bind(moved)
        .execute(&mut **tx)
        .await?;
        hooks.failed(tx, saga, reason).await
    }

    /// Times out every running saga whose step is overdue; returns how many.
    pub async fn tick(&self, db: &Db, hooks: &dyn SagaHooks) -> Result<usize, HandlerError> {
        let due: Vec<(String,)> = tessera_store::query_as(
            "SELECT id FROM tessera_sagas WHERE status = 'running' AND name = $1 AND deadline < $2 ORDER BY deadline LIMIT 100",
        )
        .bind(self.def.name)
        .bind(now_ms())
        .fetch_all(db.pool())
        .await?;
        let mut done = 0;
        for (id,) in due {
            match self.time_out(db, hooks, &id).await {
                Ok(timed_out) => done += usize::from(timed_out),
                // Another replica's ticker, or a reply, moved this saga at the same moment
                // (a database server failed one of the two): it is theirs.
                Err(e) if e.conflict => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Times out saga `id` if it is still running past its deadline; whether it did.
    async fn time_out(
        &self,
        db: &Db,
        hooks: &dyn SagaHooks,
        id: &str,
    ) -> Result<bool, HandlerError> {
        let mut tx = db.write_tx().await?;
        // Checked again in the transaction: a reply or another replica may have moved it.
        let Some(mut saga) = self.load(&mut tx, id).await? else {
            return Ok(false);
        };
        let (deadline, traceparent): (i64, Option<String>) = tessera_store::query_as(
            "SELECT deadline, traceparent FROM tessera_sagas WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if saga.status != "running" || deadline >= now_ms() {
            return Ok(false);
        }
        let step = saga.step;
        let reason = format!("timeout: {}", self.def.steps[step].name);
        // The timeout is a span of the saga's trace, parent of its compensations: the ticker
        // works outside any request, so the trace is the one the saga started in.
        let trace = traceparent.as_deref().and_then(TraceContext::parse);
        let (mut span, ctx) = match trace {
            Some(t) => {
                let (s, ctx) = Span::child_of(&t, "saga timeout", Kind::Internal);
                (s, Some(ctx))
            }
            None => (Span::NONE, None),
        };
        if span.is_recording() {
            span.rename(format!(
                "saga {} timeout {}",
                self.def.name, self.def.steps[step].name
            ));
            span.set("tessera.saga.name", self.def.name);
            span.set("tessera.saga.id", id);
            span.set("tessera.saga.step", self.def.steps[step].name);
            span.fail(reason.clone());
        }
        match &ctx {
            Some(ctx) => ctx.span("saga").in_scope(|| tracing::warn!(saga = %id, step = self.def.steps[step].name, "saga step timed out; compensating")),
            None => tracing::warn!(saga = %id, step = self.def.steps[step].name, "saga step timed out; compensating"),
        }
        // The timed-out step's action may still happen: compensate it as well.
        let cause = Entry::at(now_ms(), Action::Timeout, self.def.steps[step].name);
        self.fail(&mut tx, &mut saga, step + 1, &reason, cause, hooks, ctx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Runs [`Saga::tick`] every `every` until `stop`.
    pub fn spawn_ticker(
        self: Arc<Self>,
        db: Db,
        hooks: Arc<dyn SagaHooks>,
        outbox: outbox::Outbox,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match self.tick(&db, hooks.as_ref()).await {
                    Ok(0) => {}
                    Ok(_) => outbox.wake(),
                    Err(e) => tracing::warn!(error = %e, "saga ticker failed; will retry"),
                }
            }
        })
    }

    /// A handler for the reply topic.
    pub fn handler(self: Arc<Self>, hooks: Arc<dyn SagaHooks>) -> impl Handler {
        SagaReplies { saga: self, hooks }
    }
}

struct SagaReplies {
    saga: Arc<Saga>,
    hooks: Arc<dyn SagaHooks>,
}

impl Handler for SagaReplies {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.saga.on_reply(tx, event, self.hooks.as_ref()))
    }
}

/// A participant's reply to a saga command, in `tx` (nothing if the command expects none).
pub async fn reply(
    tx: &mut Tx,
    command: &Event,
    source: &str,
    outcome: Reply,
) -> Result<(), tessera_store::DbError> {
    let Some(topic) = command
        .extensions
        .get("sagareplyto")
        .and_then(Value::as_str)
    else {
        return Ok(());
    };
    let (suffix, data, result) = match outcome {
        Reply::Ok(data) => ("ok", data, "ok"),
        Reply::Failed(reason) => ("failed", serde_json::json!({ "reason": reason }), "failed"),
    };
    let subject = command.subject.clone().unwrap_or_default();
    let mut event = Event::new(source, &format!("{}.{suffix}", command.ty), &subject, data);
    if event.traceparent.is_none() {
        // Answered outside a handler (a worker): stay in the command's trace.
        event.traceparent = command.trace().map(|t| t.child().header());
    }
    for key in ["sagaid", "sagastep"] {
        if let Some(v) = command.extensions.get(key) {
            event.extensions.insert(key.into(), v.clone());
        }
    }
    event.extensions.insert("sagaoutcome".into(), result.into());
    outbox::add(tx, topic, &event).await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    static STEPS: [Step; 2] = [
        Step {
            name: "one",
            topic: "a.commands",
            command: "do.one",
            compensation: Some("undo.one"),
            timeout: Duration::from_secs(60),
        },
        Step {
            name: "two",
            topic: "b.commands",
            command: "do.two",
            compensation: Some("undo.two"),
            timeout: Duration::ZERO,
        },
    ];
    static DEF: SagaDef = SagaDef {
        name: "test",
        source: "/test",
        steps: &STEPS,
    };

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl SagaHooks for Recorder {
        fn step_done<'a>(
            &'a self,
            _: &'a mut Tx,
            s: &'a SagaState,
            step: &'static Step,
        ) -> BoxFuture<'a, Result<(), HandlerError>> {
            self.0
                .lock()
                .unwrap()
                .push(format!("done {} {}", step.name, s.data["got"]));
            Box::pin(async { Ok(()) })
        }
        fn completed<'a>(
            &'a self,
            _: &'a mut Tx,
            _: &'a SagaState,
        ) -> BoxFuture<'a, Result<(), HandlerError>> {
            self.0.lock().unwrap().push("completed".into());
            Box::pin(async { Ok(()) })
        }
        fn failed<'a>(
            &'a self,
            _: &'a mut Tx,
            _: &'a SagaState,
            reason: &'a str,
        ) -> BoxFuture<'a, Result<(), HandlerError>> {
            self.0.lock().unwrap().push(format!("failed {reason}"));
            Box::pin(async { Ok(()) })
        }
        fn stale_reply<'a>(
            &'a self,
            _: &'a mut Tx,
            _: &'a SagaState,
            step: &'static Step,
            _: &'a Event,
        ) -> BoxFuture<'a, Result<(), HandlerError>> {
            self.0.lock().unwrap().push(format!("stale {}", step.name));
            Box::pin(async { Ok(()) })
        }
    }

    async fn db() -> Db {
        let dir = std::env::temp_dir().join(format!("tessera-saga-{}", uuid::Uuid::new_v4()));
        Db::open(&Db::default_url(&dir, "s"), crate::MIGRATIONS)
            .await
            .unwrap()
    }

    /// The commands in the outbox, as (topic, type), and empties it.
    async fn sent(db: &Db) -> Vec<(String, String, Event)> {
        let rows: Vec<(String, String)> =
            tessera_store::query_as("SELECT topic, event FROM tessera_outbox ORDER BY id")
                .fetch_all(db.pool())
                .await
                .unwrap();
        tessera_store::query("DELETE FROM tessera_outbox")
            .execute(db.pool())
            .await
            .unwrap();
        rows.into_iter()
            .map(|(t, e)| {
                let e: Event = serde_json::from_str(&e).unwrap();
                (t, e.ty.clone(), e)
            })
            .collect()
    }

    async fn answer(db: &Db, saga: &Saga, hooks: &Recorder, command: &Event, outcome: Reply) {
        let mut tx = db.write_tx().await.unwrap();
        reply(&mut tx, command, "/p", outcome).await.unwrap();
        tx.commit().await.unwrap();
        let replies = sent(db).await;
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, "saga.test.replies");
        let mut tx = db.write_tx().await.unwrap();
        saga.on_reply(&mut tx, &replies[0].2, hooks).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn status(db: &Db, id: &str) -> String {
        tessera_store::query_as::<(String,)>("SELECT status FROM tessera_sagas WHERE id = $1")
            .bind(id)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .0
    }

    async fn started(db: &Db, saga: &Saga, id: &str) -> Event {
        let mut tx = db.write_tx().await.unwrap();
        saga.start(&mut tx, id, serde_json::json!({"id": id}))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let cmds = sent(db).await;
        assert_eq!(
            (cmds[0].0.as_str(), cmds[0].1.as_str()),
            ("a.commands", "do.one")
        );
        assert_eq!(cmds[0].2.extensions["sagareplyto"], "saga.test.replies");
        cmds[0].2.clone()
    }

    #[tokio::test]
    async fn steps_run_in_order_and_complete() {
        let (db, saga, hooks) = (db().await, Saga::new(&DEF), Recorder::default());
        let one = started(&db, &saga, "s1").await;
        answer(
            &db,
            &saga,
            &hooks,
            &one,
            Reply::Ok(serde_json::json!({"got": 1})),
        )
        .await;
        let cmds = sent(&db).await;
        assert_eq!(
            (cmds[0].0.as_str(), cmds[0].1.as_str()),
            ("b.commands", "do.two")
        );
        assert_eq!(
            cmds[0].2.data["got"], 1,
            "replies' data joins the saga's data"
        );
        answer(
            &db,
            &saga,
            &hooks,
            &cmds[0].2,
            Reply::Ok(serde_json::json!({})),
        )
        .await;
        assert_eq!(status(&db, "s1").await, "completed");
        assert_eq!(
            *hooks.0.lock().unwrap(),
            ["done one 1", "done two 1", "completed"]
        );
        assert!(sent(&db).await.is_empty(), "nothing to compensate");
    }

    #[tokio::test]
    async fn a_failure_compensates_the_steps_before_it_in_reverse() {
        let (db, saga, hooks) = (db().await, Saga::new(&DEF), Recorder::default());
        let one = started(&db, &saga, "s2").await;
        answer(&db, &saga, &hooks, &one, Reply::Ok(serde_json::json!({}))).await;
        let two = sent(&db).await.remove(0).2;
        answer(&db, &saga, &hooks, &two, Reply::Failed("declined".into())).await;
        let comps = sent(&db).await;
        assert_eq!(
            comps.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
            ["undo.one"]
        );
        assert!(
            !comps[0].2.extensions.contains_key("sagareplyto"),
            "compensations expect no reply"
        );
        assert_eq!(status(&db, "s2").await, "failed");
        assert_eq!(hooks.0.lock().unwrap().last().unwrap(), "failed declined");
        // A reply that comes later changes nothing.
        answer(&db, &saga, &hooks, &two, Reply::Ok(serde_json::json!({}))).await;
        assert_eq!(hooks.0.lock().unwrap().last().unwrap(), "stale two");
        assert_eq!(status(&db, "s2").await, "failed");
    }

    #[tokio::test]
    async fn a_timed_out_step_is_compensated_with_the_ones_before() {
        let (db, saga, hooks) = (db().await, Saga::new(&DEF), Recorder::default());
        // Started while serving a request: its trace is the saga's.
        let trace = TraceContext::new_root();
        let request = tessera_trace::RequestContext {
            passport: http::HeaderValue::from_static("p"),
            trace,
            deadline: None,
        };
        let one = REQUEST.scope(request, started(&db, &saga, "s3")).await;
        assert_eq!(one.trace().unwrap().trace_id, trace.trace_id);
        assert_eq!(
            saga.tick(&db, &hooks).await.unwrap(),
            0,
            "step one has a minute"
        );
        answer(&db, &saga, &hooks, &one, Reply::Ok(serde_json::json!({}))).await;
        sent(&db).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            saga.tick(&db, &hooks).await.unwrap(),
            1,
            "step two times out at once"
        );
        let comps = sent(&db).await;
        assert_eq!(
            comps.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
            ["undo.two", "undo.one"]
        );
        // The ticker works outside any request, yet its compensations carry the saga's trace.
        for (_, ty, compensation) in &comps {
            let carried = compensation.trace().map(|t| t.trace_id);
            assert_eq!(carried, Some(trace.trace_id), "{ty}");
        }
        assert_eq!(status(&db, "s3").await, "failed");
        assert_eq!(
            hooks.0.lock().unwrap().last().unwrap(),
            "failed timeout: two"
        );
        assert_eq!(saga.tick(&db, &hooks).await.unwrap(), 0, "once");
    }

    fn actions(view: &SagaView) -> Vec<String> {
        view.history
            .iter()
            .map(|e| format!("{:?} {}", e.action, e.step).trim().to_string())
            .collect()
    }

    #[tokio::test]
    async fn the_history_tells_each_move_and_listing_shows_steps_by_name() {
        let (db, hooks) = (db().await, Arc::new(Recorder::default()));
        let saga = Arc::new(Saga::new(&DEF));
        let sagas = Sagas::default();
        sagas.add(saga.clone(), hooks.clone());
        let one = started(&db, &saga, "h1").await;
        answer(&db, &saga, &hooks, &one, Reply::Ok(serde_json::json!({}))).await;
        let two = sent(&db).await.remove(0).2;
        answer(&db, &saga, &hooks, &two, Reply::Failed("declined".into())).await;
        sent(&db).await;
        answer(&db, &saga, &hooks, &two, Reply::Ok(serde_json::json!({}))).await;
        let view = sagas.get(&db, "test", "h1").await.unwrap().unwrap();
        assert_eq!(
            actions(&view),
            [
                "Command one",
                "Ok one",
                "Command two",
                "Failed two",
                "Compensate one",
                "LateReply two"
            ]
        );
        assert_eq!(view.history[3].reason.as_deref(), Some("declined"));
        assert_eq!(view.summary.step, "two");
        assert_eq!(view.summary.status, "failed");
        assert!(view.summary.started.is_some());
        assert!(sagas.get(&db, "test", "nope").await.unwrap().is_none());
        assert!(sagas.get(&db, "other", "h1").await.unwrap().is_none());

        started(&db, &saga, "h2").await;
        let all = sagas.list(&db, None, 10).await.unwrap();
        assert_eq!(
            all.sagas.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["h2", "h1"],
            "newest first"
        );
        assert_eq!(all.sagas[0].step, "one");
        assert!(all.counts.contains(&("test".into(), "failed".into(), 1)));
        assert!(all.counts.contains(&("test".into(), "running".into(), 1)));
        assert!(all.counts.contains(&("test".into(), "completed".into(), 0)));
        let running = sagas.list(&db, Some("running"), 10).await.unwrap();
        assert_eq!(running.sagas.len(), 1);
        assert!(running.sagas[0].deadline.is_some());
    }

    #[tokio::test]
    async fn an_operator_sends_a_step_again_or_compensates_a_running_saga() {
        let (db, hooks) = (db().await, Arc::new(Recorder::default()));
        let saga = Arc::new(Saga::new(&DEF));
        let sagas = Sagas::default();
        sagas.add(saga.clone(), hooks.clone());
        let one = started(&db, &saga, "o1").await;

        sagas.retry(&db, "test", "o1", "admin").await.unwrap();
        let again = sent(&db).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1, "do.one", "the step's command, sent again");
        assert_eq!(again[0].2.extensions["sagastep"], 0);
        assert_ne!(again[0].2.id, one.id, "a new event");
        // Either answer moves the saga on, once.
        answer(
            &db,
            &saga,
            &hooks,
            &again[0].2,
            Reply::Ok(serde_json::json!({})),
        )
        .await;
        let next = sent(&db).await;
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].1, "do.two");
        answer(&db, &saga, &hooks, &one, Reply::Ok(serde_json::json!({}))).await;
        assert!(
            sent(&db).await.is_empty(),
            "the other answer is late: nothing sent"
        );

        sagas.compensate(&db, "test", "o1", "admin").await.unwrap();
        let comps = sent(&db).await;
        assert_eq!(
            comps.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
            ["undo.two", "undo.one"],
            "the step it waited on is compensated too"
        );
        assert_eq!(status(&db, "o1").await, "failed");
        assert_eq!(
            hooks.0.lock().unwrap().last().unwrap(),
            "failed compensated by admin"
        );
        let view = sagas.get(&db, "test", "o1").await.unwrap().unwrap();
        let retry = view
            .history
            .iter()
            .find(|e| e.action == Action::Retry)
            .unwrap();
        assert_eq!(
            (retry.step.as_str(), retry.by.as_deref()),
            ("one", Some("admin"))
        );
        assert_eq!(view.history.last().unwrap().action, Action::Compensate);

        // Only a running saga is acted on; an unknown one is not found.
        assert!(matches!(
            sagas.retry(&db, "test", "o1", "admin").await,
            Err(ActionError::NotRunning(s)) if s == "failed"
        ));
        assert!(matches!(
            sagas.compensate(&db, "test", "o1", "admin").await,
            Err(ActionError::NotRunning(_))
        ));
        assert!(matches!(
            sagas.retry(&db, "test", "none", "admin").await,
            Err(ActionError::NotFound)
        ));
        assert!(matches!(
            sagas.compensate(&db, "nope", "o1", "admin").await,
            Err(ActionError::NotFound)
        ));

        // A saga on a step this build does not define is refused, not a panic.
        started(&db, &saga, "o2").await;
        tessera_store::query("UPDATE tessera_sagas SET step = 9 WHERE id = 'o2'")
            .execute(db.pool())
            .await
            .unwrap();
        assert!(matches!(
            sagas.retry(&db, "test", "o2", "admin").await,
            Err(ActionError::UnknownStep(9))
        ));
        assert!(matches!(
            sagas.compensate(&db, "test", "o2", "admin").await,
            Err(ActionError::UnknownStep(9))
        ));
    }
}
