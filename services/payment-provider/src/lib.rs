//! A simulator of an external card payment provider, for the shop's `payment` service to
//! talk to. It behaves like a real one where it matters: charges are idempotent by their
//! `Idempotency-Key` (a retried charge never charges twice), a charge can be voided, and it can
//! be slow, fail, hang or decline, set at start (`PROVIDER_*` env) or at run time
//! (`PUT /v1/behavior`), which is how tests break it on purpose.
//!
//! | call | |
//! |---|---|
//! | `POST /v1/charges` + `Idempotency-Key` | `{amount, currency, reference}` → `201 {key, status: "captured"}`, `402 {status: "declined"}`, or 503 |
//! | `POST /v1/charges/{key}/void` | voids (or forbids) the charge with that key |
//! | `GET /v1/charges` | every charge (for audits and tests) |
//! | `GET/PUT /v1/behavior` | `{latencyMs, failureRate, hang, declineOver}` |

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tessera::{ApiError, Db, Json, Migration, Path, Service, unix_now};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "charges",
    sqlite: include_str!("../migrations/0001_charges.sql"),
}];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behavior {
    /// Added to every charge.
    pub latency_ms: u64,
    /// Share of charges answered 503 without charging (0.0 to 1.0).
    pub failure_rate: f64,
    /// Never answer charges.
    pub hang: bool,
    /// Decline amounts above this (minor units).
    pub decline_over: i64,
}

#[derive(Clone)]
struct AppState {
    db: Db,
    behavior: Arc<RwLock<Behavior>>,
}

pub async fn run() -> anyhow::Result<()> {
    Service::new("payment-provider")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let s = &ctx.settings;
            let behavior = Behavior {
                latency_ms: s.get_or("PROVIDER_LATENCY_MS", 5)?,
                failure_rate: s.get_or("PROVIDER_FAILURE_RATE", 0.0)?,
                hang: s.get_or("PROVIDER_HANG", false)?,
                decline_over: s.get_or("PROVIDER_DECLINE_OVER", 1_000_000)?,
            };
            if !(0.0..=1.0).contains(&behavior.failure_rate) {
                anyhow::bail!("config key PROVIDER_FAILURE_RATE: must be 0.0 to 1.0");
            }
            Ok(router(ctx.db().clone(), behavior))
        })
        .await
}

fn router(db: Db, behavior: Behavior) -> Router {
    Router::new()
        .route("/v1/charges", post(charge).get(list))
        .route("/v1/charges/{key}/void", post(void))
        .route("/v1/behavior", get(get_behavior).put(set_behavior))
        .with_state(AppState {
            db,
            behavior: Arc::new(RwLock::new(behavior)),
        })
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
