//! The system's gateways as an operator changes them: `POST /v1/gateways/reload` has every
//! gateway read its manifest again and swap its routes (`tessera reload`; the gateway's side
//! is `tessera_gateway::reload`).
//!
//! The gateways do not register (they are the manifest's, at known admin addresses), so the
//! control plane is told where they are at start. Each is called on its admin listener with a
//! passport minted for the admin (`operate.rs`), as a service's operator routes are: the
//! gateway acts only on the control plane's passport for the admin role, whoever reaches its
//! admin port. The answer lists every gateway's outcome; a refused manifest names why, and
//! the change is audited either way.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tessera::ApiError;
use tessera::identity::Principal;

use crate::operate::{Call, Operator};
use crate::policy::Caller;

/// One gateway's admin listener.
#[derive(Clone, Debug)]
pub struct GatewayAdmin {
    /// `gateway-<i>`.
    pub id: String,
    pub address: String,
}

/// The gateways, and how to call them.
#[derive(Clone)]
pub struct Gateways {
    admins: std::sync::Arc<[GatewayAdmin]>,
    operator: Operator,
}

impl Gateways {
    pub fn new(admins: Vec<GatewayAdmin>, operator: Operator) -> Self {
        Self {
            admins: admins.into(),
            operator,
        }
    }
}

/// The gateways' routes (behind the credential check).
pub fn routes(gateways: Gateways) -> Router {
    Router::new()
        .route("/v1/gateways/reload", post(reload))
        .with_state(gateways)
}

/// `POST /v1/gateways/reload`: every gateway reloads its manifest. 200 when each applied it
/// (or found it unchanged); 422 when one refused it (its reason the message), 503 when one
/// did not answer; the body lists each gateway's outcome in every case.
async fn reload(State(gateways): State<Gateways>, caller: Caller) -> Result<Response, ApiError> {
    if caller.principal != Principal::Admin {
        return Err(ApiError::forbidden(format!(
            "{} may not reload the gateways: that is for admins",
            caller.principal
        )));
    }
    if gateways.admins.is_empty() {
        return Err(ApiError::not_found("this system runs no gateway"));
    }
    let mut outcomes = Vec::with_capacity(gateways.admins.len());
    let mut refused: Option<String> = None;
    let mut unreachable: Option<String> = None;
    for admin in gateways.admins.iter() {
        let call = Call::new(reqwest::Method::POST, "/admin/reload");
        let answer = gateways
            .operator
            .call_gateway(&caller, &admin.id, &admin.address, call)
            .await;
        let outcome = match answer {
            Ok((status, body)) if status.is_success() => {
                json!({ "gateway": admin.id, "outcome": "applied", "reloaded": body })
            }
            Ok((status, body)) => {
                let why = body["error"]["message"]
                    .as_str()
                    .or(body["message"].as_str())
                    .map_or_else(|| format!("answered {status}"), str::to_string);
                refused.get_or_insert_with(|| format!("{}: {why}", admin.id));
                json!({ "gateway": admin.id, "outcome": "refused", "reason": why })
            }
            Err(e) => {
                unreachable.get_or_insert_with(|| e.message.clone());
                json!({ "gateway": admin.id, "outcome": "unreachable", "reason": e.message })
            }
        };
        outcomes.push(outcome);
    }
    let (status, code, message) = match (&refused, &unreachable) {
        (Some(why), _) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_manifest",
            why.clone(),
        ),
        (None, Some(why)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", why.clone()),
        (None, None) => (
            StatusCode::OK,
            "reloaded",
            "every gateway reloaded".to_string(),
        ),
    };
    tracing::info!(
        target: "audit",
        who = %caller.principal,
        outcome = code,
        gateways = gateways.admins.len(),
        message = %message,
        "gateways reload"
    );
    let body: Value = json!({ "code": code, "message": message, "gateways": outcomes });
    Ok((status, Json(body)).into_response())
}
