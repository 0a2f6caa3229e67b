//! What a service tells its operators about itself beyond health: the outbox (what waits
//! for the log, and what the log refused and is parked), requeueing the parked events once
//! their cause is fixed, and the events its consumers are stuck on.
//!
//! These routes sit behind the passport like the service's own, and answer only an admin or
//! another process of the system (role `system`): a parked event can hold any of the
//! service's data.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};

use crate::events::outbox;
use crate::{ApiError, Caller, Db, Events, Json};

/// `GET /status/outbox`, `POST /status/outbox/requeue` on `db`'s outbox, and
/// `GET /status/events` on the service's consumers (`events`, once started).
pub fn routes(db: Db, events: Arc<OnceLock<Events>>) -> Router {
    Router::new()
        .route("/status/outbox", get(outbox_status))
        .route("/status/outbox/requeue", post(requeue))
        .with_state(db)
        .route(
            "/status/events",
            get(move |caller: Caller| {
                let stuck = events.get().map(Events::stuck).unwrap_or_default();
                async move {
                    operator(&caller)?;
                    Ok::<_, ApiError>(Json(serde_json::json!({ "stuck": stuck })))
                }
            }),
        )
}

fn operator(caller: &Caller) -> Result<(), ApiError> {
    if caller.has_role("admin") || caller.has_role("system") {
        Ok(())
    } else {
        Err(ApiError::forbidden("requires role admin or system"))
    }
}

async fn outbox_status(
    State(db): State<Db>,
    caller: Caller,
) -> Result<Json<outbox::Status>, ApiError> {
    operator(&caller)?;
    Ok(Json(outbox::parked(&db).await?))
}

async fn requeue(
    State(db): State<Db>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(&caller)?;
    let n = outbox::requeue(&db).await?;
    tracing::info!(events = n, caller = %caller.id, "parked outbox events requeued");
    Ok(Json(serde_json::json!({ "requeued": n })))
}
