//! The system's mail, for operators: each sending service's queue (how many messages wait,
//! went out, died, and the newest dead ones with why), and an admin's action to send the dead
//! ones again once their cause is fixed (`docs/mail.md`).
//!
//! The queue lives in each sending service's database (`tessera::mail`), written in the
//! transaction that decides a message; the control plane keeps nothing here. It asks one
//! instance of each service that registered as sending mail (the `mail` metadata) on its
//! operators' routes (`/status/mail`, `tessera::status`), with a passport for the principal
//! who asked, as it does for sagas.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tessera::ApiError;
use tessera::registry::Instance;

use crate::Registry;
use crate::operate::{Call, Operator, relay};
use crate::policy::Caller;

/// What the mail routes need.
#[derive(Clone)]
pub struct Mail {
    registry: Registry,
    operator: Operator,
}

impl Mail {
    pub fn new(registry: Registry, operator: Operator) -> Self {
        Self { registry, operator }
    }

    /// One instance of each service that sends mail.
    fn senders(&self) -> Vec<Instance> {
        self.registry
            .catalog()
            .services
            .into_values()
            .filter_map(|instances| instances.into_iter().find(sends))
            .collect()
    }
}

fn sends(instance: &Instance) -> bool {
    instance.metadata.contains_key(tessera::MAIL_METADATA_KEY)
}

/// The mail routes (behind the credential check).
pub fn routes(mail: Mail) -> Router {
    Router::new()
        .route("/v1/mail", get(list))
        .route("/v1/mail/{service}/requeue", post(requeue))
        .with_state(mail)
}

/// `GET /v1/mail`: each sending service's queue.
async fn list(State(mail): State<Mail>, caller: Caller) -> Result<Response, ApiError> {
    caller.may_inspect()?;
    let instances = mail.senders();
    let asks = instances.iter().map(|i| {
        let call = Call::new(reqwest::Method::GET, "/status/mail");
        mail.operator.call(&caller, i, call)
    });
    let answers = futures_util::future::join_all(asks).await;
    let services: Vec<Value> = instances
        .iter()
        .zip(answers)
        .map(|(instance, answer)| {
            let mut entry = json!({ "service": instance.service, "instance": instance.id });
            match answer {
                Ok((StatusCode::OK, body)) => entry["queue"] = body,
                Ok((status, _)) => entry["error"] = json!(format!("answered {status}")),
                Err(e) => entry["error"] = json!(e.message),
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!({ "services": services })).into_response())
}

/// `POST /v1/mail/{service}/requeue`: the service's dead messages sent again; an admin's
/// action, audited.
async fn requeue(
    State(mail): State<Mail>,
    caller: Caller,
    Path(service): Path<String>,
) -> Result<Response, ApiError> {
    caller.may_act("requeue mail")?;
    let instance = mail
        .senders()
        .into_iter()
        .find(|i| i.service == service)
        .ok_or_else(|| ApiError::not_found(format!("no instance of {service} sends mail")))?;
    let call = Call::new(reqwest::Method::POST, "/status/mail/requeue");
    let answer = mail.operator.call(&caller, &instance, call).await;
    let outcome = match &answer {
        Ok((status, body)) => format!("{} {}", status.as_u16(), body["requeued"]),
        Err(e) => e.message.clone(),
    };
    tracing::info!(target: "audit", who = %caller.principal, service = %service, outcome = %outcome, "dead mail requeued");
    Ok(relay(answer?))
}
