//! The sagas of the system, for the console: each orchestrating service's sagas by state,
//! one saga's steps and history, and an admin's two actions on a running one (send its step
//! again, compensate it).
//!
//! A saga's state lives in the database of the service that orchestrates it, and only that
//! service may move it (its hooks run in the same transaction). So the control plane keeps
//! nothing here: it asks an instance of each service that registered sagas (the `sagas`
//! metadata) on its operators' routes, `/status/sagas` (`tessera::status`), with a passport
//! for the principal who asked (`operate.rs`: the supervisor may read but not act). An action
//! is audited here, with who asked, and in the service, with the passport's subject.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tessera::ApiError;
use tessera::registry::Instance;

use crate::Registry;
use crate::operate::{Call, Operator, relay};
use crate::policy::Caller;

/// What the sagas' routes need.
#[derive(Clone)]
pub struct Sagas {
    registry: Registry,
    operator: Operator,
}

impl Sagas {
    pub fn new(registry: Registry, operator: Operator) -> Self {
        Self { registry, operator }
    }

    /// The instance of `service` to ask: the first registered that orchestrates sagas.
    fn instance_of(&self, service: &str) -> Option<Instance> {
        self.registry
            .catalog()
            .services
            .remove(service)?
            .into_iter()
            .find(orchestrates)
    }
}

fn orchestrates(instance: &Instance) -> bool {
    instance
        .metadata
        .get(tessera::SAGAS_METADATA_KEY)
        .is_some_and(|s| !s.is_empty())
}

/// The sagas' routes (behind the credential check).
pub fn routes(sagas: Sagas) -> Router {
    Router::new()
        .route("/v1/sagas", get(list))
        .route("/v1/sagas/{service}/{name}/{id}", get(one))
        .route("/v1/sagas/{service}/{name}/{id}/{action}", post(act))
        .with_state(sagas)
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
}

/// `GET /v1/sagas?status=&limit=`: each orchestrating service's counts and newest sagas (the
/// query goes to each as it is, and each says what is wrong with it).
async fn list(
    State(sagas): State<Sagas>,
    caller: Caller,
    tessera::Query(query): tessera::Query<ListQuery>,
) -> Result<Response, ApiError> {
    caller.may_inspect()?;
    let instances: Vec<Instance> = sagas
        .registry
        .catalog()
        .services
        .into_values()
        .filter_map(|instances| instances.into_iter().find(orchestrates))
        .collect();
    let asks = instances.iter().map(|i| {
        let call = Call::new(reqwest::Method::GET, "/status/sagas").with_query(&query);
        sagas.operator.call(&caller, i, call)
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut services = Vec::new();
    for (instance, answer) in instances.iter().zip(answers) {
        match answer {
            Ok((StatusCode::OK, body)) => services.push(json!({
                "service": instance.service,
                "instance": instance.id,
                "names": body["names"],
                "counts": body["counts"],
                "sagas": body["sagas"],
            })),
            // A bad query is the same for every service: the first says why.
            Ok((status, body)) if status == StatusCode::BAD_REQUEST => {
                return Ok(relay((status, body)));
            }
            Ok((status, _)) => services.push(json!({
                "service": instance.service,
                "instance": instance.id,
                "error": format!("answered {status}"),
            })),
            Err(e) => services.push(json!({
                "service": instance.service,
                "instance": instance.id,
                "error": e.message,
            })),
        }
    }
    Ok(axum::Json(json!({ "services": services })).into_response())
}

/// `GET /v1/sagas/{service}/{name}/{id}`: one saga, whole.
async fn one(
    State(sagas): State<Sagas>,
    caller: Caller,
    Path((service, name, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    caller.may_inspect()?;
    let instance = sagas
        .instance_of(&service)
        .ok_or_else(|| no_service(&service))?;
    let path = format!("/status/sagas/{}/{}", segment(&name)?, segment(&id)?);
    Ok(relay(
        sagas
            .operator
            .call(&caller, &instance, Call::new(reqwest::Method::GET, &path))
            .await?,
    ))
}

/// `POST /v1/sagas/{service}/{name}/{id}/retry|compensate`: an admin's action, audited.
async fn act(
    State(sagas): State<Sagas>,
    caller: Caller,
    Path((service, name, id, action)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    caller.may_act_on_sagas()?;
    if action != "retry" && action != "compensate" {
        return Err(ApiError::not_found(format!(
            "no action {action:?} (retry, compensate)"
        )));
    }
    let instance = sagas
        .instance_of(&service)
        .ok_or_else(|| no_service(&service))?;
    let path = format!(
        "/status/sagas/{}/{}/{action}",
        segment(&name)?,
        segment(&id)?
    );
    let call = Call::new(reqwest::Method::POST, &path);
    let answer = sagas.operator.call(&caller, &instance, call).await;
    let outcome = match &answer {
        Ok((status, _)) => status.as_u16().to_string(),
        Err(e) => e.message.clone(),
    };
    // An operator's action: audited in the log.
    tracing::info!(target: "audit", who = %caller.principal, service = %service, saga = %name, id = %id, action = %action, outcome = %outcome, "saga action");
    Ok(relay(answer?))
}

fn no_service(service: &str) -> ApiError {
    ApiError::not_found(format!("no instance of {service} runs sagas"))
}

/// `s` as one path segment: letters, digits and `-_.:` only (a saga's name and id are the
/// service's, and they are put in a path the control plane calls).
fn segment(s: &str) -> Result<&str, ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && s != "."
        && s != "..";
    if ok {
        Ok(s)
    } else {
        Err(ApiError::bad_request(
            "invalid_path",
            "a saga's name and id are letters, digits and -_.: (at most 128)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_segments_go_into_a_path() {
        assert!(segment("checkout").is_ok());
        assert!(segment("0190f000-0000-7000-8000-000000000001").is_ok());
        for bad in ["", "..", "a/b", "a?b", "a%2fb", "a b", &"x".repeat(129)] {
            assert!(segment(bad).is_err(), "{bad:?}");
        }
    }
}
