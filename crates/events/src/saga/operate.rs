//! What an operator sees of a service's sagas, and does to one that waits too long.
//!
//! A saga that waits on a step is normally moved on by its participant's answer or, failing
//! that, by the ticker at the step's timeout. An operator may not want to wait: a
//! participant's consumer was fixed after the command went to its dead letters (send the
//! step again), or the business wants the order off the books now (compensate). Both are
//! moves like any other: one transaction that sends what it sends through the outbox and
//! appends to the saga's history who did it. Participants already take a command twice
//! without doing it twice (their inbox and their own keys), so sending a step again is safe.
//!
//! The service's `/status/sagas` routes (in the `tessera` crate) are the HTTP face of this;
//! the control plane's `/v1/sagas` and the console sit in front of them.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tessera_store::Db;
use tessera_trace::TraceContext;
use tessera_trace::unix_now_ms as now_ms;

use super::history::{self, Action, Entry};
use super::{Saga, SagaHooks, SagaState};
use crate::consumer::HandlerError;

/// The sagas a service orchestrates, with the hooks their moves call.
#[derive(Clone, Default)]
pub struct Sagas {
    registered: Arc<Mutex<Vec<Registered>>>,
}

/// A saga with the hooks its moves call.
type Registered = (Arc<Saga>, Arc<dyn SagaHooks>);

/// One saga, as listed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaSummary {
    pub id: String,
    pub name: String,
    /// running | completed | failed
    pub status: String,
    /// The step it is on (running), or was on when it ended.
    pub step: String,
    pub reason: Option<String>,
    /// Unix milliseconds (none for a saga started before they were kept).
    pub started: Option<i64>,
    pub updated: i64,
    /// When the current step times out (running).
    pub deadline: Option<i64>,
    /// The trace it started in.
    pub trace_id: Option<String>,
}

/// One saga, whole.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaView {
    #[serde(flatten)]
    pub summary: SagaSummary,
    /// Its steps in order (what the timeline is drawn against).
    pub steps: Vec<&'static str>,
    pub data: Value,
    pub history: Vec<Entry>,
}

/// How many sagas of each name are in each state, and the newest of them.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// `[name, status, count]`, a count at most [`COUNTED`] (more: that many, and
    /// `count == COUNTED` says "at least").
    pub counts: Vec<(String, String, i64)>,
    pub sagas: Vec<SagaSummary>,
}

/// The most sagas of a name in a state that are counted: a listing reads at most that many
/// index entries per count, however many sagas a service has run.
pub const COUNTED: i64 = 10_000;

/// Why an operator's action was not carried out.
#[derive(Debug)]
pub enum ActionError {
    /// No saga of that name and id here.
    NotFound,
    /// Only a running saga can be acted on.
    NotRunning(String),
    /// The saga is on a step its definition (this build's) does not have.
    UnknownStep(usize),
    /// The database failed, or the saga moved meanwhile (`conflict`).
    Failed(HandlerError),
}

impl From<HandlerError> for ActionError {
    fn from(e: HandlerError) -> Self {
        Self::Failed(e)
    }
}

impl From<tessera_store::DbError> for ActionError {
    fn from(e: tessera_store::DbError) -> Self {
        Self::Failed(e.into())
    }
}

/// The states a saga is in.
pub const STATES: [&str; 3] = ["running", "completed", "failed"];

type Row = (
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    Option<String>,
);

/// A saga's row whole: [`Row`], then its data and its history.
type Whole = (
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<i64>,
    i64,
    i64,
    Option<String>,
    String,
    String,
);

impl Sagas {
    /// Adds a saga this service orchestrates.
    pub fn add(&self, saga: Arc<Saga>, hooks: Arc<dyn SagaHooks>) {
        self.lock().push((saga, hooks));
    }

    /// The names of the sagas added.
    pub fn names(&self) -> Vec<&'static str> {
        self.lock().iter().map(|(s, _)| s.def.name).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Registered>> {
        self.registered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, name: &str) -> Option<Registered> {
        self.lock()
            .iter()
            .find(|(s, _)| s.def.name == name)
            .cloned()
    }

    fn summary(&self, row: Row) -> SagaSummary {
        let (id, name, step, status, reason, started, updated, deadline, traceparent) = row;
        let step = self
            .find(&name)
            .and_then(|(s, _)| s.def.steps.get(step as usize).map(|s| s.name.to_string()))
            .unwrap_or_else(|| step.to_string());
        let running = status == "running";
        SagaSummary {
            id,
            name,
            status,
            step,
            reason,
            started,
            updated,
            deadline: running.then_some(deadline),
            trace_id: traceparent
                .as_deref()
                .and_then(TraceContext::parse)
                .map(|t| t.trace_id_hex()),
        }
    }

    /// The counts per name and state, and the newest `limit` sagas (in `status`, or in any).
    pub async fn list(
        &self,
        db: &Db,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Listing, tessera_store::DbError> {
        let mut counts = Vec::new();
        for name in self.names() {
            for state in STATES {
                let (n,): (i64,) = tessera_store::query_as(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM tessera_sagas WHERE status = $1 AND name = $2 LIMIT $3) AS counted",
                )
                .bind(state)
                .bind(name)
                .bind(COUNTED)
                .fetch_one(db.pool())
                .await?;
                counts.push((name.to_string(), state.to_string(), n));
            }
        }
        // One query per state, each down the (status, updated) index, merged: a sort of the
        // whole table would read every saga ever run.
        let mut rows: Vec<Row> = Vec::new();
        for state in STATES.iter().filter(|s| status.is_none_or(|w| w == **s)) {
            let mut of_state: Vec<Row> = tessera_store::query_as(
                "SELECT id, name, step, status, reason, started, updated, deadline, traceparent FROM tessera_sagas WHERE status = $1 ORDER BY updated DESC LIMIT $2",
            )
            .bind(*state)
            .bind(i64::from(limit))
            .fetch_all(db.pool())
            .await?;
            rows.append(&mut of_state);
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.6));
        rows.truncate(limit as usize);
        Ok(Listing {
            counts,
            sagas: rows.into_iter().map(|r| self.summary(r)).collect(),
        })
    }

    /// Saga `name` `id`, whole.
    pub async fn get(
        &self,
        db: &Db,
        name: &str,
        id: &str,
    ) -> Result<Option<SagaView>, tessera_store::DbError> {
        let Some((saga, _)) = self.find(name) else {
            return Ok(None);
        };
        let row: Option<Whole> = tessera_store::query_as(
            "SELECT id, name, step, status, reason, started, updated, deadline, traceparent, data, history FROM tessera_sagas WHERE id = $1 AND name = $2",
        )
        .bind(id)
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
        let Some((id, name, step, status, reason, started, updated, deadline, trace, data, column)) =
            row
        else {
            return Ok(None);
        };
        let summary = (
            id, name, step, status, reason, started, updated, deadline, trace,
        );
        Ok(Some(SagaView {
            summary: self.summary(summary),
            steps: saga.def.steps.iter().map(|s| s.name).collect(),
            data: serde_json::from_str(&data).unwrap_or(Value::Null),
            history: history::parse(&column),
        }))
    }

    /// Sends the step saga `name` `id` waits on again, with a new deadline (`by` the
    /// operator who asked).
    pub async fn retry(&self, db: &Db, name: &str, id: &str, by: &str) -> Result<(), ActionError> {
        let (saga, _) = self.find(name).ok_or(ActionError::NotFound)?;
        let mut tx = db.write_tx().await?;
        let (state, trace) = running(&saga, &mut tx, id).await?;
        let step = saga
            .def
            .steps
            .get(state.step)
            .ok_or(ActionError::UnknownStep(state.step))?;
        let now = now_ms();
        saga.send(
            &mut tx,
            id,
            state.step,
            step.command,
            &state.data,
            true,
            trace,
        )
        .await?;
        tessera_store::query(
            "UPDATE tessera_sagas SET deadline = $2, updated = $3, history = history || $4 WHERE id = $1",
        )
        .bind(id)
        .bind(now + step.timeout.as_millis() as i64)
        .bind(now)
        .bind(Entry::at(now, Action::Retry, step.name).by(by).line())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(target: "audit", saga = %id, name, step = step.name, who = %by, "saga step sent again");
        Ok(())
    }

    /// Compensates saga `name` `id` now, as a timeout of its step would (the step's own action
    /// may have happened, so it is compensated too), and marks it failed.
    pub async fn compensate(
        &self,
        db: &Db,
        name: &str,
        id: &str,
        by: &str,
    ) -> Result<(), ActionError> {
        let (saga, hooks) = self.find(name).ok_or(ActionError::NotFound)?;
        let mut tx = db.write_tx().await?;
        let (mut state, trace) = running(&saga, &mut tx, id).await?;
        let step = state.step;
        if step >= saga.def.steps.len() {
            return Err(ActionError::UnknownStep(step));
        }
        let reason = format!("compensated by {by}");
        let cause = Entry::at(now_ms(), Action::Abort, saga.def.steps[step].name).by(by);
        saga.fail(
            &mut tx,
            &mut state,
            step + 1,
            &reason,
            cause,
            hooks.as_ref(),
            trace,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(target: "audit", saga = %id, name, step = saga.def.steps[step].name, who = %by, "saga compensated");
        Ok(())
    }
}

/// Saga `id` as it stands in `tx`, if it is running, and the trace it started in.
async fn running(
    saga: &Saga,
    tx: &mut crate::Tx,
    id: &str,
) -> Result<(SagaState, Option<TraceContext>), ActionError> {
    let state = saga.load(tx, id).await?.ok_or(ActionError::NotFound)?;
    if state.status != "running" {
        return Err(ActionError::NotRunning(state.status));
    }
    let (traceparent,): (Option<String>,) =
        tessera_store::query_as("SELECT traceparent FROM tessera_sagas WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    Ok((state, traceparent.as_deref().and_then(TraceContext::parse)))
}
