//! Tessera Shop's `payment` service: authorizes orders through the external payment provider.
//!
//! Commands arrive on `payment.commands`: `shop.payment.authorize` records a `pending`
//! payment; `shop.payment.cancel` (the saga's compensation) turns it into `voiding` or
//! `cancelled`. A worker, outside any transaction, calls the provider for each due payment
//! with the order id as the idempotency key, then records the outcome and replies to the saga
//! in one transaction. So, whatever is retried or redelivered:
//! - there is at most one charge per order (the provider dedups by key);
//! - a payment the saga gave up on is voided at the provider, even if the charge went through
//!   after all (a timeout does not say it did not), so a rejected order is never charged.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tessera::TraceContext;
use tessera::client::{REQUEST, RequestContext};
use tessera::events::outbox::Outbox;
use tessera::events::{BoxFuture, Consumer, Event, Handler, HandlerError, Tx};
use tessera::manifest::Resilience;
use tessera::resilience::BreakerConfig;
use tessera::saga::{self, Reply};
use tessera::unix_now_ms as now_ms;
use tessera::{ApiError, CallError, Caller, Db, Json, Migration, Query, Service, ServiceClient};
use tokio::sync::Notify;
use tracing::Instrument;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sqlite: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "payments by user",
        sqlite: include_str!("../migrations/0002_payments_by_user.sql"),
    },
];

pub const COMMANDS: &str = "payment.commands";
const SOURCE: &str = "/shop/payment";
const PROVIDER: &str = "payment-provider";

/// Settings (`env` in the manifest).
#[derive(Clone, Debug)]
pub struct PaymentConfig {
    /// `PAYMENT_PROVIDER_TIMEOUT_MS`: one call to the provider.
    pub call_timeout: Duration,
    /// `PAYMENT_MAX_ATTEMPTS`: charge attempts before the payment fails.
    pub max_attempts: i64,
    /// The provider's circuit breaker: `PAYMENT_BREAKER_MIN_CALLS`, `PAYMENT_BREAKER_FAILURE_RATE`,
    /// `PAYMENT_BREAKER_WAIT_MS`.
    pub breaker: BreakerConfig,
}

pub async fn run() -> anyhow::Result<()> {
    Service::new("payment")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let s = &ctx.settings;
            let config = PaymentConfig {
                call_timeout: s.millis_or("PAYMENT_PROVIDER_TIMEOUT_MS", Duration::from_secs(2))?,
                max_attempts: s.get_or("PAYMENT_MAX_ATTEMPTS", 3)?,
                breaker: BreakerConfig {
                    minimum_calls: s.get_or("PAYMENT_BREAKER_MIN_CALLS", 10)?,
                    failure_rate: s.get_or("PAYMENT_BREAKER_FAILURE_RATE", 0.5)?,
                    wait_in_open_ms: s.get_or("PAYMENT_BREAKER_WAIT_MS", 5000)?,
                    slow_call_ms: s.get_or("PAYMENT_BREAKER_SLOW_MS", 1500)?,
                    ..BreakerConfig::default()
                },
            };
            config
                .breaker
                .validate()
                .map_err(|e| anyhow::anyhow!("PAYMENT_BREAKER_*: {e}"))?;
            let resilience = Resilience {
                breaker: config.breaker.clone(),
                ..Resilience::default()
            };
            let wake = Arc::new(Notify::new());
            let events = ctx.events();
            events.consume(
                Consumer::new(COMMANDS, "payment"),
                Commands { wake: wake.clone() },
            );
            let worker = Worker {
                keys: ctx.keys.clone(),
                db: ctx.db().clone(),
                provider: ctx
                    .client
                    .with_timeout(config.call_timeout)
                    .with_resilience(PROVIDER, &resilience),
                outbox: events.outbox.clone(),
                config,
            };
            tokio::spawn(worker.run(wake));
            Ok(router(ctx.db().clone()))
        })
        .await
}

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/payments", get(list))
        .with_state(db)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderData {
    order_id: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    total: i64,
    #[serde(default)]
    currency: String,
}

struct Commands {
    wake: Arc<Notify>,
}

impl Handler for Commands {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let order: OrderData = event.data_as()?;
            let now = now_ms();
            match event.ty.as_str() {
                "shop.payment.authorize" => {
                    if order.total <= 0 || order.currency.len() != 3 {
                        saga::reply(tx, event, SOURCE, Reply::Failed("invalid_amount".into()))
                            .await?;
                        return Ok(());
                    }
                    tessera::store::query(
                        "INSERT INTO payments (order_id, user_id, amount, currency, status, next_try, command, updated)
                         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $5) ON CONFLICT (order_id) DO NOTHING",
                    )
                    .bind(&order.order_id)
                    .bind(&order.user_id)
                    .bind(order.total)
                    .bind(&order.currency)
                    .bind(now)
                    .bind(serde_json::to_string(event)?)
                    .execute(&mut **tx)
                    .await?;
                }
                "shop.payment.cancel" => {
                    // pending → voiding (the worker may be charging right now: void after it);
                    // authorized → voiding; nothing yet → a tombstone so that nothing will be.
                    tessera::store::query(
                        "INSERT INTO payments (order_id, user_id, amount, currency, status, next_try, command, updated)
                         VALUES ($1, $2, $3, $4, 'cancelled', $5, '{}', $5)
                         ON CONFLICT (order_id) DO UPDATE SET status = 'voiding', next_try = $5, updated = $5
                         WHERE payments.status IN ('pending', 'authorized')",
                    )
                    .bind(&order.order_id)
                    .bind(&order.user_id)
                    .bind(order.total)
                    .bind(&order.currency)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                    tracing::info!(order = %order.order_id, "payment cancelled by the saga");
                }
                other => return Err(HandlerError::permanent(format!("unknown command {other}"))),
            }
            self.wake.notify_one();
            Ok(())
        })
    }
}

struct Worker {
    keys: Arc<tessera::PassportKeys>,
    db: Db,
    provider: ServiceClient,
    outbox: Outbox,
    config: PaymentConfig,
}

/// What the provider said about a charge.
enum Charged {
    Captured,
    Declined,
    /// The key was voided before this charge got there.
    Refused,
    /// No answer we can trust: try again.
    Unknown(String),
    /// The provider's breaker is open: not called.
    Unavailable,
}

impl Worker {
    async fn run(self, wake: Arc<Notify>) {
        let worker = Arc::new(self);
        loop {
            let due: Vec<(String, String, i64, String, i64)> = match tessera::store::query_as(
                "SELECT order_id, status, amount, currency, attempts FROM payments
                 WHERE status IN ('pending', 'voiding') AND next_try <= $1 ORDER BY next_try LIMIT 64",
            )
            .bind(now_ms())
            .fetch_all(worker.db.pool())
            .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read due payments");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if due.is_empty() {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
            let mut calls = tokio::task::JoinSet::new();
            for (order_id, status, amount, currency, attempts) in due {
                let w = worker.clone();
                calls.spawn(async move {
                    // Work for an order happens in the trace of the order's checkout.
                    let trace = w.trace_of(&order_id).await.unwrap_or_else(TraceContext::new_root);
                    let span = trace.span("payment");
                    let passport = w.keys.mint_header("service:payment", "service:payment", &["system".into()], None, &trace);
                    let ctx = RequestContext { passport, trace, deadline: None };
                    let result = REQUEST
                        .scope(ctx, async {
                            if status == "pending" {
                                w.charge(&order_id, amount, &currency, attempts).await
                            } else {
                                w.void(&order_id, attempts).await
                            }
                        })
                        .instrument(span)
                        .await;
                    if let Err(e) = result {
                        tracing::warn!(order = %order_id, error = %e, "payment step failed; will retry");
                    }
                });
            }
            while calls.join_next().await.is_some() {}
            worker.outbox.wake();
        }
    }

    /// The trace of the command that asked for this payment.
    async fn trace_of(&self, order_id: &str) -> Option<TraceContext> {
        let row: Option<(String,)> =
            tessera::store::query_as("SELECT command FROM payments WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(self.db.pool())
                .await
                .ok()?;
        let command: Event = serde_json::from_str(&row?.0).ok()?;
        command.trace().map(|t| t.child())
    }

    async fn call_charge(&self, order_id: &str, amount: i64, currency: &str) -> Charged {
        let body =
            serde_json::json!({ "amount": amount, "currency": currency, "reference": order_id });
        let result = self
            .provider
            .send_with(
                Method::POST,
                PROVIDER,
                "/v1/charges",
                Some(body.to_string().into_bytes()),
                &[("idempotency-key", order_id)],
            )
            .await;
        match result {
            Ok(_) => Charged::Captured,
            Err(CallError::Status { status, .. }) if status == StatusCode::PAYMENT_REQUIRED => {
                Charged::Declined
            }
            Err(CallError::Status { status, .. }) if status == StatusCode::CONFLICT => {
                Charged::Refused
            }
            Err(CallError::CircuitOpen(_)) => Charged::Unavailable,
            Err(e) => Charged::Unknown(e.to_string()),
        }
    }

    async fn charge(
        &self,
        order_id: &str,
        amount: i64,
        currency: &str,
        attempts: i64,
    ) -> Result<(), tessera::store::DbError> {
        let outcome = self.call_charge(order_id, amount, currency).await;
        let mut tx = self.db.write_tx().await?;
        let row: Option<(String, String)> =
            tessera::store::query_as("SELECT status, command FROM payments WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((status, command)) = row else {
            return Ok(());
        };
        if status != "pending" {
            // Cancelled while we were at the provider: the void path takes it from here.
            return Ok(());
        }
        let command: Event = match serde_json::from_str(&command) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(order = %order_id, error = %e, "stored command unreadable");
                return Ok(());
            }
        };
        let now = now_ms();
        let (new_status, reason, reply) = match outcome {
            Charged::Captured => (
                "authorized",
                None,
                Reply::Ok(serde_json::json!({ "paymentId": order_id })),
            ),
            Charged::Declined => (
                "declined",
                Some("payment_declined"),
                Reply::Failed("payment_declined".into()),
            ),
            Charged::Refused => (
                "voided",
                Some("payment_voided"),
                Reply::Failed("payment_voided".into()),
            ),
            Charged::Unknown(why) if attempts + 1 < self.config.max_attempts => {
                tracing::warn!(order = %order_id, attempt = attempts + 1, error = %why, "provider call failed; retrying");
                let backoff = 100 * 2i64.pow(attempts.clamp(0, 6) as u32);
                tessera::store::query("UPDATE payments SET attempts = attempts + 1, next_try = $2, updated = $3 WHERE order_id = $1")
                    .bind(order_id)
                    .bind(now + backoff)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                return tx.commit().await;
            }
            Charged::Unavailable => {
                // Fail fast while the provider is down; void in case an earlier attempt charged.
                (
                    "voiding",
                    Some("payment_provider_unavailable"),
                    Reply::Failed("payment_provider_unavailable".into()),
                )
            }
            Charged::Unknown(why) => {
                // We cannot tell whether the charge happened: fail the payment and void, so
                // that it certainly did not.
                tracing::warn!(order = %order_id, error = %why, "provider unavailable; failing the payment");
                (
                    "voiding",
                    Some("payment_failed"),
                    Reply::Failed("payment_failed".into()),
                )
            }
        };
        tessera::store::query("UPDATE payments SET status = $2, reason = $3, attempts = attempts + 1, next_try = $4, updated = $4 WHERE order_id = $1")
            .bind(order_id)
            .bind(new_status)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        saga::reply(&mut tx, &command, SOURCE, reply).await?;
        tx.commit().await?;
        tracing::info!(order = %order_id, status = new_status, "payment settled");
        Ok(())
    }

    async fn void(&self, order_id: &str, attempts: i64) -> Result<(), tessera::store::DbError> {
        let path = format!("/v1/charges/{order_id}/void");
        let result = self
            .provider
            .send(Method::POST, PROVIDER, &path, None)
            .await;
        let now = now_ms();
        match result {
            Ok(_) => {
                tessera::store::query("UPDATE payments SET status = 'voided', updated = $2 WHERE order_id = $1 AND status = 'voiding'")
                    .bind(order_id)
                    .bind(now)
                    .execute(self.db.pool())
                    .await?;
                tracing::info!(order = %order_id, "payment voided");
            }
            Err(e) => {
                tracing::warn!(order = %order_id, error = %e, "void failed; retrying");
                let backoff = 200 * 2i64.pow(attempts.clamp(0, 5) as u32);
                tessera::store::query("UPDATE payments SET attempts = attempts + 1, next_try = $2, updated = $3 WHERE order_id = $1")
                    .bind(order_id)
                    .bind(now + backoff)
                    .bind(now)
                    .execute(self.db.pool())
                    .await?;
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    order_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentView {
    order_id: String,
    amount: i64,
    currency: String,
    status: String,
    reason: Option<String>,
}

async fn list(
    State(db): State<Db>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<PaymentView>>, ApiError> {
    let admin = caller.has_role("admin");
    type Row = (String, String, i64, String, String, Option<String>);
    // Each filter by an index: one order by its key, a user's by (user, updated).
    let rows: Vec<Row> = match (&q.order_id, admin) {
        (Some(order_id), _) => {
            tessera::store::query_as(
                "SELECT order_id, user_id, amount, currency, status, reason FROM payments
                 WHERE order_id = $1 AND ($2 OR user_id = $3)",
            )
            .bind(order_id)
            .bind(admin)
            .bind(&caller.id)
            .fetch_all(db.pool())
            .await?
        }
        (None, false) => {
            tessera::store::query_as(
                "SELECT order_id, user_id, amount, currency, status, reason FROM payments
                 WHERE user_id = $1 ORDER BY updated DESC LIMIT 100",
            )
            .bind(&caller.id)
            .fetch_all(db.pool())
            .await?
        }
        (None, true) => {
            tessera::store::query_as(
                "SELECT order_id, user_id, amount, currency, status, reason FROM payments
                 ORDER BY updated DESC LIMIT 100",
            )
            .fetch_all(db.pool())
            .await?
        }
    };
    Ok(Json(
        rows.into_iter()
            .map(
                |(order_id, _, amount, currency, status, reason)| PaymentView {
                    order_id,
                    amount,
                    currency,
                    status,
                    reason,
                },
            )
            .collect(),
    ))
}
