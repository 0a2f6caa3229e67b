//! What a service tells its operators about itself beyond health: the outbox (what waits
//! for the log, and what the log refused and is parked), requeueing the parked events once
//! their cause is fixed, the same for its mail (what waits, and what died), the events its consumers are stuck on, and the sagas it
//! orchestrates, with the two actions on a running one (send its step again, compensate it).
//!
//! These routes sit behind the passport like the service's own, and answer only the
//! platform's operators: a passport the control plane minted (issuer `tessera-control`, for
//! the console and the operator's tools) or another process of the system (role `system`). A
//! parked event or a saga's data can hold any of the service's data, and an end user whose
//! account has an `admin` role (the shop's, carried in the gateway's passports) is not the
//! platform's operator. Acting on a saga takes the control plane's passport for the `admin`
//! principal, and is audited (the log line names the passport's subject; `docs/sagas.md`).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::events::outbox;
use crate::extract::{Path, Query};
use crate::live::{Applied, Declared};
use crate::passport::CONTROL_ISSUER;
use crate::saga::{ActionError, STATES};
use crate::{ApiError, Db, Events, Json, Passport};

/// `GET /status/outbox`, `POST /status/outbox/requeue` on `db`'s outbox, the same two for its
/// mail queue (`/status/mail`, `docs/mail.md`), and
/// `GET /status/events` on the service's consumers (`events`, once started).
pub fn routes(db: Db, events: Arc<OnceLock<Events>>) -> Router {
    Router::new()
        .route("/status/outbox", get(outbox_status))
        .route("/status/outbox/requeue", post(requeue))
        .route("/status/mail", get(mail_status))
        .route("/status/mail/requeue", post(mail_requeue))
        .with_state(db)
        .route("/status/events", get(stuck))
        .route("/status/sagas", get(sagas))
        .route("/status/sagas/{name}/{id}", get(saga))
        .route("/status/sagas/{name}/{id}/{action}", post(act))
        .with_state(events)
}

/// `GET /status/config` (the version of the configuration in force) and
/// `POST /status/config/check` (whether a change would be taken: the control plane asks before
/// it takes one, `docs/config.md`), for every service.
pub fn config_routes(declared: Declared) -> Router {
    Router::new()
        .route("/status/config", get(config_applied))
        .route("/status/config/check", post(config_check))
        .with_state(declared)
}

async fn config_applied(
    State(declared): State<Declared>,
    passport: Passport,
) -> Result<Json<Applied>, ApiError> {
    platform_operator(&passport)?;
    Ok(Json(declared.applied()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Proposed {
    /// Every change that would be in force.
    values: BTreeMap<String, String>,
    /// The keys among them that change.
    #[serde(default)]
    changed: Vec<String>,
}

async fn config_check(
    State(declared): State<Declared>,
    passport: Passport,
    Json(proposed): Json<Proposed>,
) -> Result<Json<serde_json::Value>, ApiError> {
    platform_operator(&passport)?;
    declared
        .check(&proposed.values, &proposed.changed)
        .map_err(|e| ApiError::bad_request("invalid_value", e.to_string()))?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

type EventsOnce = Arc<OnceLock<Events>>;

async fn stuck(
    State(events): State<EventsOnce>,
    passport: Passport,
) -> Result<Json<serde_json::Value>, ApiError> {
    platform_operator(&passport)?;
    let stuck = events.get().map(Events::stuck).unwrap_or_default();
    Ok(Json(serde_json::json!({ "stuck": stuck })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// The most sagas one listing holds.
const MAX_LISTED: u32 = 200;

/// The platform's operators: the control plane's passport, or another process of the system.
fn platform_operator(passport: &Passport) -> Result<(), ApiError> {
    if passport.iss == CONTROL_ISSUER || passport.has_role("system") {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "for the platform's operators (through the control plane) and the system's processes",
        ))
    }
}

/// The system's admin, acting through the control plane: what changes a running system's
/// state (`what` says what it is, in the refusal).
fn control_plane_admin(passport: &Passport, what: &str) -> Result<(), ApiError> {
    if passport.iss == CONTROL_ISSUER && passport.has_role("admin") {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{what} is for the system's admin, through the control plane"
        )))
    }
}

/// `GET /status/sagas?status=&limit=`: how many sagas are in each state, and the newest.
async fn sagas(
    State(events): State<EventsOnce>,
    passport: Passport,
    Query(q): Query<SagaQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    platform_operator(&passport)?;
    if let Some(status) = q.status.as_deref().filter(|s| !STATES.contains(s)) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("status {status:?} is none of {}", STATES.join(", ")),
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_LISTED {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {MAX_LISTED}"),
        ));
    }
    let Some(events) = events.get().filter(|e| !e.sagas().names().is_empty()) else {
        return Ok(Json(
            serde_json::json!({ "names": [], "counts": [], "sagas": [] }),
        ));
    };
    let listing = events
        .sagas()
        .list(events.db(), q.status.as_deref(), limit)
        .await?;
    Ok(Json(serde_json::json!({
        "names": events.sagas().names(),
        "counts": listing.counts,
        "sagas": listing.sagas,
    })))
}

/// `GET /status/sagas/{name}/{id}`: one saga with its data and history.
async fn saga(
    State(events): State<EventsOnce>,
    passport: Passport,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<crate::saga::SagaView>, ApiError> {
    platform_operator(&passport)?;
    let events = events.get().ok_or_else(|| no_saga(&name, &id))?;
    events
        .sagas()
        .get(events.db(), &name, &id)
        .await?
        .map(Json)
        .ok_or_else(|| no_saga(&name, &id))
}

/// `POST /status/sagas/{name}/{id}/retry` (send the step it waits on again) or
/// `…/compensate` (compensate it now): an admin's, audited.
async fn act(
    State(events): State<EventsOnce>,
    passport: Passport,
    Path((name, id, action)): Path<(String, String, String)>,
) -> Result<Json<crate::saga::SagaView>, ApiError> {
    control_plane_admin(&passport, "acting on a saga")?;
    let events = events.get().ok_or_else(|| no_saga(&name, &id))?;
    let (sagas, db) = (events.sagas(), events.db());
    let done = match action.as_str() {
        "retry" => sagas.retry(db, &name, &id, &passport.sub).await,
        "compensate" => sagas.compensate(db, &name, &id, &passport.sub).await,
        _ => {
            return Err(ApiError::not_found(format!(
                "no action {action:?} (retry, compensate)"
            )));
        }
    };
    match done {
        Ok(()) => events.outbox.wake(),
        Err(ActionError::NotFound) => return Err(no_saga(&name, &id)),
        Err(ActionError::NotRunning(status)) => {
            return Err(ApiError::conflict(
                "not_running",
                format!("saga {name} {id} is {status}: only a running saga can be acted on"),
            ));
        }
        Err(ActionError::UnknownStep(step)) => {
            return Err(ApiError::conflict(
                "unknown_step",
                format!("saga {name} {id} is on step {step}, which this build does not define"),
            ));
        }
        Err(ActionError::Failed(e)) if e.conflict => {
            return Err(ApiError::conflict(
                "conflict",
                "the saga moved meanwhile: look at it again",
            ));
        }
        Err(ActionError::Failed(e)) => {
            tracing::warn!(error = %e.message, saga = %id, "a saga action failed");
            return Err(ApiError::unavailable(
                "the saga's database failed; nothing was done",
            ));
        }
    }
    sagas
        .get(db, &name, &id)
        .await?
        .map(Json)
        .ok_or_else(|| no_saga(&name, &id))
}

fn no_saga(name: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("no saga {name} {id} here"))
}

async fn outbox_status(
    State(db): State<Db>,
    passport: Passport,
) -> Result<Json<outbox::Status>, ApiError> {
    platform_operator(&passport)?;
    Ok(Json(outbox::parked(&db).await?))
}

async fn requeue(
    State(db): State<Db>,
    passport: Passport,
) -> Result<Json<serde_json::Value>, ApiError> {
    platform_operator(&passport)?;
    let n = outbox::requeue(&db).await?;
    tracing::info!(target: "audit", events = n, who = %passport.sub, "parked outbox events requeued");
    Ok(Json(serde_json::json!({ "requeued": n })))
}

async fn mail_status(
    State(db): State<Db>,
    passport: Passport,
) -> Result<Json<tessera_mail::Status>, ApiError> {
    platform_operator(&passport)?;
    Ok(Json(tessera_mail::status(&db).await?))
}

async fn mail_requeue(
    State(db): State<Db>,
    passport: Passport,
) -> Result<Json<serde_json::Value>, ApiError> {
    control_plane_admin(&passport, "requeueing mail")?;
    let n = tessera_mail::requeue(&db).await?;
    tracing::info!(target: "audit", messages = n, who = %passport.sub, "dead mail requeued");
    Ok(Json(serde_json::json!({ "requeued": n })))
}
