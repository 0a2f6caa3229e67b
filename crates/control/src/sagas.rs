//! The sagas of the system, for the console: each orchestrating service's sagas by state,
//! one saga's steps and history, and an admin's two actions on a running one (send its step
//! again, compensate it).
//!
//! A saga's state lives in the database of the service that orchestrates it, and only that
//! service may move it (its hooks run in the same transaction). So the control plane keeps
//! nothing here: it asks an instance of each service that registered sagas (the `sagas`
//! metadata) on its operators' routes, `/status/sagas` (`tessera::status`), as every caller
//! of a service must, with a passport: minted for the principal who asked (`admin`, roles
//! `admin`; the supervisor with role `system`, which may read but not act), issued by
//! `tessera-control`, over mutual TLS when the system has it (services accept the control
//! plane as a caller). An action is audited here, with who asked, and in the service, with
//! the passport's subject.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tessera::identity::Principal;
use tessera::passport::{self, PassportKeys};
use tessera::registry::Instance;
use tessera::{ApiError, TraceContext};

use crate::Registry;
use crate::policy::Caller;

/// What the sagas' routes need.
#[derive(Clone)]
pub struct Sagas {
    registry: Registry,
    /// The system's passport keys (`TESSERA_PASSPORT_KEYS`): none, and the sagas cannot be
    /// asked for (the routes say so).
    keys: Option<Arc<PassportKeys>>,
}

/// The most a service's answer may hold.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

impl Sagas {
    pub fn new(registry: Registry, keys: Option<Arc<PassportKeys>>) -> Self {
        Self { registry, keys }
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

    /// Calls `path` on `instance` as `caller`.
    async fn call(
        &self,
        caller: &Caller,
        instance: &Instance,
        method: reqwest::Method,
        path: &str,
        query: Option<&ListQuery>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let keys = self.keys.as_ref().ok_or_else(|| {
            ApiError::unavailable("the control plane has no passport keys (TESSERA_PASSPORT_KEYS)")
        })?;
        let roles = match caller.principal {
            Principal::Admin => vec!["admin".to_string()],
            _ => vec!["system".to_string()],
        };
        let subject = caller.principal.to_string();
        let trace = TraceContext::new_root();
        let minted = keys.mint_header(passport::CONTROL_ISSUER, &subject, &roles, None, &trace);
        let (http, base) = client_for(instance)?;
        let unreachable = |e: reqwest::Error| {
            tracing::info!(error = %e, instance = %instance.id, "a service did not answer about its sagas");
            ApiError::unavailable(format!("{} did not answer", instance.id))
        };
        let mut request = http.request(method, format!("{base}{path}"));
        if let Some(query) = query {
            request = request.query(query);
        }
        let resp = request
            .header(passport::HEADER, minted)
            .header("traceparent", trace.header())
            .send()
            .await
            .map_err(unreachable)?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = resp.bytes().await.map_err(unreachable)?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::unavailable(format!(
                "{} answered too much",
                instance.id
            )));
        }
        let value = serde_json::from_slice(&body).map_err(|_| {
            ApiError::unavailable(format!("{} answered something else than JSON", instance.id))
        })?;
        Ok((status, value))
    }
}

fn orchestrates(instance: &Instance) -> bool {
    instance
        .metadata
        .get(tessera::SAGAS_METADATA_KEY)
        .is_some_and(|s| !s.is_empty())
}

/// A client for `instance`'s main port, and its base URL: over mutual TLS when the system has
/// it, expecting the instance's service's identity.
fn client_for(instance: &Instance) -> Result<(reqwest::Client, String), ApiError> {
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    let scheme = match tessera::tls::internal::get() {
        Some(tls) => {
            let expected = tls.identity_of(&format!("service:{}", instance.service));
            let config = tls
                .client_config_for(&expected)
                .map_err(ApiError::internal)?;
            http = http.use_preconfigured_tls(config);
            "https"
        }
        None => "http",
    };
    let http = http.build().map_err(ApiError::internal)?;
    Ok((http, format!("{scheme}://{}", instance.address)))
}

/// The service's answer as ours, its status kept (a 404 or 409 of the service means the same
/// here), except a refusal of the control plane itself (401, 403: its passport keys or clock
/// disagree with the service's), which is the service's fault to the caller, not theirs: 502.
fn relay((status, body): (StatusCode, Value)) -> Response {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::warn!(%status, answer = %body, "a service refused the control plane's passport");
        return ApiError::new(
            StatusCode::BAD_GATEWAY,
            "refused_by_service",
            format!("the service refused the control plane's call ({status})"),
        )
        .into_response();
    }
    (status, axum::Json(body)).into_response()
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
        sagas.call(
            &caller,
            i,
            reqwest::Method::GET,
            "/status/sagas",
            Some(&query),
        )
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
            .call(&caller, &instance, reqwest::Method::GET, &path, None)
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
    let answer = sagas
        .call(&caller, &instance, reqwest::Method::POST, &path, None)
        .await;
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
