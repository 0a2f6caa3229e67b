//! The payment worker: outside any transaction, it calls the provider for each due payment
//! with the order id as the idempotency key, then records the outcome and replies to the saga
//! in one transaction (one for all the outcomes that arrived together). It voids at the
//! provider what the saga gave up on. It also starts the consumer of `payment.commands`
//! (`commands.rs`), which wakes it.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tessera::client::{REQUEST, RequestContext};
use tessera::events::outbox::Outbox;
use tessera::events::{Consumer, Event, Tx};
use tessera::resilience::Resilience;
use tessera::saga::{self, Reply};
use tessera::trace::Span;
use tessera::unix_now_ms as now_ms;
use tessera::{CallError, Context, Db, ServiceClient};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::commands::{COMMANDS, Commands, SOURCE};
use crate::config::PaymentConfig;

/// The provider, by its service name.
const PROVIDER: &str = "payment-provider";

/// Starts the commands' consumer and the worker; they run until the service stops.
pub fn start(ctx: &Context, config: PaymentConfig) {
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
}

struct Worker {
    keys: Arc<tessera::PassportKeys>,
    db: Db,
    provider: ServiceClient,
    outbox: Outbox,
    config: PaymentConfig,
}

/// What the provider said about a charge.
#[derive(Debug)]
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

/// A payment the worker found due, with the command that asked for it.
struct Due {
    order_id: String,
    status: String,
    amount: i64,
    currency: String,
    attempts: i64,
    command: Option<Event>,
}

/// A charge the provider answered, waiting to be recorded.
struct Outcome {
    due: Due,
    charged: Charged,
    ctx: RequestContext,
    span: tracing::Span,
    /// The worker's span for the payment: recorded when the outcome is dropped, settled.
    _recorded: Span,
}

impl Worker {
    /// How long a claim on a due payment lasts: the provider call with its retries, and the
    /// record after it.
    fn claim_ms(&self) -> i64 {
        (self.config.call_timeout.as_millis() as i64).saturating_mul(3) + 2000
    }

    async fn run(self, wake: Arc<Notify>) {
        let worker = Arc::new(self);
        loop {
            // Claimed, not just read: the claim moves `next_try` past the time a call and its
            // record take, in one statement, so another replica's worker does not take the
            // same payments meanwhile (its claim re-checks `next_try` on the row it waits
            // for, and skips it), and a worker that dies leaves its claims to expire and be
            // taken again.
            let now = now_ms();
            let due: Vec<(String, String, i64, String, i64, String)> =
                match tessera::store::query_as(
                    "UPDATE payments SET next_try = $2
                 WHERE order_id IN (SELECT order_id FROM payments
                                    WHERE status IN ('pending', 'voiding') AND next_try <= $1
                                    ORDER BY next_try LIMIT 64)
                   AND status IN ('pending', 'voiding') AND next_try <= $1
                 RETURNING order_id, status, amount, currency, attempts, command",
                )
                .bind(now)
                .bind(now + worker.claim_ms())
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
            for (order_id, status, amount, currency, attempts, command) in due {
                let due = Due {
                    command: serde_json::from_str(&command).ok(),
                    order_id,
                    status,
                    amount,
                    currency,
                    attempts,
                };
                let w = worker.clone();
                calls.spawn(async move { w.call(due).await });
            }
            // Outcomes that are in at the same moment are recorded in one transaction: one
            // commit for the lot, and each answer still waits only for its own call.
            while let Some(first) = calls.join_next().await {
                // The first call to finish wakes this task at once; let the calls whose
                // answers arrived with it finish too before looking.
                tokio::task::yield_now().await;
                let mut outcomes: Vec<Outcome> = Vec::new();
                for joined in
                    std::iter::once(first).chain(std::iter::from_fn(|| calls.try_join_next()))
                {
                    match joined {
                        Ok(Some(outcome)) => outcomes.push(outcome),
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "payment call panicked"),
                    }
                }
                if outcomes.is_empty() {
                    continue;
                }
                // A conflict with a concurrent transaction (a cancel of one of these
                // payments, say) is tried again at once: the answers are in hand.
                let mut conflicts = 0;
                let settled = loop {
                    match worker.settle(&outcomes).await {
                        Err(e) if e.is_conflict() && conflicts < 20 => {
                            conflicts += 1;
                            tokio::time::sleep(Duration::from_millis(
                                rand::random::<u64>() % 5 + 1,
                            ))
                            .await;
                        }
                        other => break other,
                    }
                };
                if let Err(e) = settled {
                    // Nothing was recorded: the payments stay claimed until their claim
                    // expires, then are due again, and the provider answers a charge again
                    // with the same outcome (the order id is its key).
                    tracing::warn!(error = %e, payments = outcomes.len(), "cannot record payments; will retry");
                }
                worker.outbox.wake();
            }
        }
    }

    /// Calls the provider for one due payment, in the trace of the order's checkout: a charge
    /// comes back to be recorded; a void is recorded here.
    async fn call(&self, due: Due) -> Option<Outcome> {
        // The worker's own span in the checkout's trace: the provider call and the record
        // of its outcome are its children.
        let parent = due.command.as_ref().and_then(|c| c.trace());
        let (mut recorded, trace) = Span::work(parent.as_ref(), "payment");
        if recorded.is_recording() {
            recorded.rename(if due.status == "pending" {
                "payment charge"
            } else {
                "payment void"
            });
            recorded.set("tessera.order.id", due.order_id.clone());
            recorded.set("tessera.attempt", due.attempts);
        }
        let span = trace.span("payment");
        let passport = self.keys.mint_header(
            "service:payment",
            "service:payment",
            &["system".into()],
            None,
            &trace,
        );
        let ctx = RequestContext {
            passport,
            trace,
            deadline: None,
        };
        if due.status != "pending" {
            let voided = REQUEST
                .scope(ctx, self.void(&due.order_id, due.attempts))
                .instrument(span.clone())
                .await;
            if let Err(e) = voided {
                recorded.fail(e.to_string());
                span.in_scope(|| tracing::warn!(order = %due.order_id, error = %e, "cannot record the void; will retry"));
            }
            return None;
        }
        if due.command.is_none() {
            // Without its command there is no one to answer: make sure it is never charged.
            span.in_scope(
                || tracing::error!(order = %due.order_id, "stored command unreadable; voiding"),
            );
            let now = now_ms();
            let marked = tessera::store::query("UPDATE payments SET status = 'voiding', reason = 'payment_failed', next_try = $2, updated = $2 WHERE order_id = $1 AND status = 'pending'")
                .bind(&due.order_id)
                .bind(now)
                .execute(self.db.pool())
                .await;
            if let Err(e) = marked {
                tracing::warn!(order = %due.order_id, error = %e, "cannot mark the payment");
            }
            return None;
        }
        let charged = REQUEST
            .scope(
                ctx.clone(),
                self.call_charge(&due.order_id, due.amount, &due.currency),
            )
            .instrument(span.clone())
            .await;
        if recorded.is_recording() {
            recorded.set("tessera.charge", format!("{charged:?}"));
        }
        Some(Outcome {
            due,
            charged,
            ctx,
            span,
            _recorded: recorded,
        })
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

    /// Records what the provider said about each charge, and answers the saga, in one
    /// transaction.
    async fn settle(&self, outcomes: &[Outcome]) -> Result<(), tessera::store::DbError> {
        let mut tx = self.db.write_tx().await?;
        let mut settled = Vec::with_capacity(outcomes.len());
        for Outcome {
            due,
            charged,
            ctx,
            span,
            ..
        } in outcomes
        {
            let status = REQUEST
                .scope(ctx.clone(), self.record(&mut tx, due, charged))
                .instrument(span.clone())
                .await?;
            settled.push((&due.order_id, status, span));
        }
        tx.commit().await?;
        for (order_id, status, span) in settled {
            if let Some(status) = status {
                span.in_scope(|| tracing::info!(order = %order_id, status, "payment settled"));
            }
        }
        Ok(())
    }

    /// Records one charge's outcome in `tx`; returns the payment's new status, if it settled.
    async fn record(
        &self,
        tx: &mut Tx,
        due: &Due,
        charged: &Charged,
    ) -> Result<Option<&'static str>, tessera::store::DbError> {
        let order_id = due.order_id.as_str();
        let row: Option<(String,)> =
            tessera::store::query_as("SELECT status FROM payments WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&mut **tx)
                .await?;
        if row.is_none_or(|(status,)| status != "pending") {
            // Cancelled while we were at the provider: the void path takes it from here.
            return Ok(None);
        }
        let Some(command) = &due.command else {
            return Ok(None);
        };
        let attempts = due.attempts;
        let now = now_ms();
        let (new_status, reason, reply) = match charged {
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
                    .execute(&mut **tx)
                    .await?;
                return Ok(None);
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
            .execute(&mut **tx)
            .await?;
        saga::reply(tx, command, SOURCE, reply).await?;
        Ok(Some(new_status))
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
