//! The simulator's API: the router and its handlers. It trusts its callers (it stands for a
//! system outside Tessera), so no handler asks who calls.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tessera::{ApiError, Db, Json, Path, unix_now};

use crate::behavior::Behavior;

#[derive(Clone)]
struct AppState {
    db: Db,
    behavior: Arc<RwLock<Behavior>>,
}

/// The simulator's routes, and its behaviour as they read it (to change from outside).
pub struct Simulator {
    pub routes: Router,
    pub behavior: Arc<RwLock<Behavior>>,
}

pub fn router(db: Db, behavior: Behavior) -> Simulator {
    let behavior = Arc::new(RwLock::new(behavior));
    let routes = Router::new()
        .route("/v1/charges", post(charge).get(list))
        .route("/v1/charges/{key}/void", post(void))
        .route("/v1/behavior", get(get_behavior).put(set_behavior))
        .with_state(AppState {
            db,
            behavior: behavior.clone(),
        });
    Simulator { routes, behavior }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeRequest {
    amount: i64,
    currency: String,
    reference: String,
}

#[derive(Serialize)]
struct Charge {
    key: String,
    reference: String,
    amount: i64,
    currency: String,
    status: String,
}

type Row = (String, String, i64, String, String);

impl From<Row> for Charge {
    fn from((key, reference, amount, currency, status): Row) -> Self {
        Self {
            key,
            reference,
            amount,
            currency,
            status,
        }
    }
}

fn answer(charge: Charge) -> Response {
    let status = match charge.status.as_str() {
        "captured" => StatusCode::CREATED,
        "declined" => StatusCode::PAYMENT_REQUIRED,
        _ => StatusCode::CONFLICT, // voided: this key may not charge
    };
    (status, Json(charge)).into_response()
}

async fn charge(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<ChargeRequest>,
) -> Result<Response, ApiError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            ApiError::bad_request("idempotency_key_required", "send an Idempotency-Key header")
        })?
        .to_string();
    if req.amount <= 0 {
        return Err(ApiError::bad_request(
            "invalid_amount",
            "amount must be positive",
        ));
    }
    let behavior = st
        .behavior
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if behavior.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    tokio::time::sleep(Duration::from_millis(behavior.latency_ms)).await;
    let existing: Option<Row> = tessera::store::query_as(
        "SELECT key, reference, amount, currency, status FROM charges WHERE key = $1",
    )
    .bind(&key)
    .fetch_optional(st.db.pool())
    .await?;
    if let Some(row) = existing {
        return Ok(answer(row.into()));
    }
    if behavior.failure_rate > 0.0 && rand::random::<f64>() < behavior.failure_rate {
        return Err(ApiError::unavailable("the provider is having trouble"));
    }
    let status = if req.amount > behavior.decline_over || req.reference.contains("decline") {
        "declined"
    } else {
        "captured"
    };
    tessera::store::query(
        "INSERT INTO charges (key, reference, amount, currency, status, created) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&key)
    .bind(&req.reference)
    .bind(req.amount)
    .bind(&req.currency)
    .bind(status)
    .bind(unix_now() as i64)
    .execute(st.db.pool())
    .await?;
    // Whoever won a race on the same key, every caller gets the one stored answer.
    let row: Row = tessera::store::query_as(
        "SELECT key, reference, amount, currency, status FROM charges WHERE key = $1",
    )
    .bind(&key)
    .fetch_one(st.db.pool())
    .await?;
    tracing::info!(key = %key, status = %row.4, amount = row.2, "charge");
    Ok(answer(row.into()))
}

async fn void(
    State(st): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Voids a capture, or records the key as voided so that a late charge with it is refused.
    tessera::store::query(
        "INSERT INTO charges (key, reference, amount, currency, status, created) VALUES ($1, '', 0, '', 'voided', $2)
         ON CONFLICT (key) DO UPDATE SET status = 'voided' WHERE charges.status = 'captured'",
    )
    .bind(&key)
    .bind(unix_now() as i64)
    .execute(st.db.pool())
    .await?;
    tracing::info!(key = %key, "void");
    Ok(Json(serde_json::json!({ "key": key, "status": "voided" })))
}

async fn list(State(st): State<AppState>) -> Result<Json<Vec<Charge>>, ApiError> {
    let rows: Vec<Row> = tessera::store::query_as(
        "SELECT key, reference, amount, currency, status FROM charges ORDER BY created, key",
    )
    .fetch_all(st.db.pool())
    .await?;
    Ok(Json(rows.into_iter().map(Charge::from).collect()))
}

async fn get_behavior(State(st): State<AppState>) -> Json<Behavior> {
    Json(
        st.behavior
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    )
}

async fn set_behavior(
    State(st): State<AppState>,
    Json(b): Json<Behavior>,
) -> Result<Json<Behavior>, ApiError> {
    if !(0.0..=1.0).contains(&b.failure_rate) {
        return Err(ApiError::bad_request(
            "invalid_failure_rate",
            "failureRate must be 0.0 to 1.0",
        ));
    }
    tracing::warn!(behavior = ?b, "behaviour changed");
    *st.behavior.write().unwrap_or_else(|e| e.into_inner()) = b.clone();
    Ok(Json(b))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tessera::testing::{App, request, send};

    use super::*;
    use crate::schema::MIGRATIONS;

    /// The router on a fresh database, answering at once.
    async fn provider() -> App {
        let behavior = Behavior {
            latency_ms: 0,
            failure_rate: 0.0,
            hang: false,
            decline_over: 10_000,
        };
        App::new("payment-provider", MIGRATIONS, |db| {
            router(db, behavior).routes
        })
        .await
    }

    /// A call as the shop's payment service makes it: no passport, maybe an `Idempotency-Key`.
    async fn call(
        p: &App,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let key = key.map(|key| ("idempotency-key", key));
        let (status, _, body) = send(&p.router, request(method, uri, key.as_slice(), body)).await;
        (status, body)
    }

    async fn charge(p: &App, key: &str, amount: i64, reference: &str) -> (StatusCode, Value) {
        let body = json!({ "amount": amount, "currency": "EUR", "reference": reference });
        call(p, "POST", "/v1/charges", Some(key), Some(body)).await
    }

    #[tokio::test]
    async fn a_retried_charge_gets_the_first_answer() {
        let p = provider().await;
        let (status, first) = charge(&p, "o1", 1250, "o1").await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            first,
            json!({ "key": "o1", "reference": "o1", "amount": 1250, "currency": "EUR", "status": "captured" })
        );
        // The same key with another amount: the stored answer, not a second charge.
        let (status, again) = charge(&p, "o1", 99_999, "o1").await;
        assert_eq!((status, &again), (StatusCode::CREATED, &first));

        for (key, amount, reference) in [("o2", 10_001, "o2"), ("o3", 5, "please decline")] {
            let (status, declined) = charge(&p, key, amount, reference).await;
            assert_eq!(
                (status, &declined["status"]),
                (StatusCode::PAYMENT_REQUIRED, &json!("declined")),
                "{key}"
            );
        }
        let (_, all) = call(&p, "GET", "/v1/charges", None, None).await;
        let charges: Vec<(&str, &str)> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["key"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            charges,
            [("o1", "captured"), ("o2", "declined"), ("o3", "declined")]
        );
    }

    #[tokio::test]
    async fn a_voided_key_charges_no_more() {
        let p = provider().await;
        charge(&p, "o1", 100, "o1").await;
        for key in ["o1", "o2"] {
            let (status, voided) =
                call(&p, "POST", &format!("/v1/charges/{key}/void"), None, None).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(voided, json!({ "key": key, "status": "voided" }));
            // A charge that arrives after its void (a late retry) is refused.
            let (status, refused) = charge(&p, key, 100, key).await;
            assert_eq!(
                (status, &refused["status"]),
                (StatusCode::CONFLICT, &json!("voided")),
                "{key}"
            );
        }
    }

    #[tokio::test]
    async fn bad_charges_are_refused() {
        let p = provider().await;
        let body = json!({ "amount": 100, "currency": "EUR", "reference": "o1" });
        for (key, body, code) in [
            (None, body.clone(), "idempotency_key_required"),
            (Some(""), body.clone(), "idempotency_key_required"),
            (
                Some("o1"),
                json!({ "amount": 0, "currency": "EUR", "reference": "o1" }),
                "invalid_amount",
            ),
            (
                Some("o1"),
                json!({ "amount": 1, "currency": "EUR" }),
                "invalid_body",
            ),
        ] {
            let (status, answer) = call(&p, "POST", "/v1/charges", key, Some(body.clone())).await;
            assert_eq!(
                (status, answer["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{key:?} {body}"
            );
        }
        let (_, all) = call(&p, "GET", "/v1/charges", None, None).await;
        assert_eq!(all, json!([]));
    }

    #[tokio::test]
    async fn behaviour_is_changed_at_run_time() {
        let p = provider().await;
        let failing =
            json!({ "latencyMs": 0, "failureRate": 1.0, "hang": false, "declineOver": 10_000 });
        let (status, set) = call(&p, "PUT", "/v1/behavior", None, Some(failing.clone())).await;
        assert_eq!((status, &set), (StatusCode::OK, &failing));
        let (_, read) = call(&p, "GET", "/v1/behavior", None, None).await;
        assert_eq!(read, failing);

        let (status, answer) = charge(&p, "o1", 100, "o1").await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable"))
        );
        let (_, all) = call(&p, "GET", "/v1/charges", None, None).await;
        assert_eq!(all, json!([]), "a failed charge charges nothing");

        let mut bad = failing.clone();
        bad["failureRate"] = json!(1.5);
        let (status, answer) = call(&p, "PUT", "/v1/behavior", None, Some(bad)).await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_failure_rate"))
        );
        let (_, read) = call(&p, "GET", "/v1/behavior", None, None).await;
        assert_eq!(read, failing, "unchanged by a refused PUT");
    }
}
