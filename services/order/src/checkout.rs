//! The checkout saga: reserve stock, then authorize payment; confirm, or reject and give the
//! stock back.
//!
//! ```text
//! PENDING ──reserve-stock──▶ ──authorize-payment──▶ CONFIRMED   (+ inventory commit)
//!            │ out of stock      │ declined / failed / timeout
//!            ▼                   ▼
//!         REJECTED            release stock ─▶ REJECTED   (+ payment cancel on timeout)
//! ```

use std::time::Duration;

use serde_json::{Value, json};
use tessera::events::{BoxFuture, Event, HandlerError, Tx, outbox};
use tessera::saga::{SagaDef, SagaHooks, SagaState, Step};

use crate::aggregate::{self, OrderEvent, Orders};

pub const SOURCE: &str = "/shop/order";
/// Where order outcomes are published (the notification service listens).
pub const ORDER_EVENTS: &str = "order.events";

/// The saga's definition, with the step timeouts from configuration.
pub fn definition(stock_timeout: Duration, payment_timeout: Duration) -> &'static SagaDef {
    let steps: &'static [Step] = Box::leak(Box::new([
        Step {
            name: "reserve-stock",
            topic: "inventory.commands",
            command: "shop.inventory.reserve",
            compensation: Some("shop.inventory.release"),
            timeout: stock_timeout,
        },
        Step {
            name: "authorize-payment",
            topic: "payment.commands",
            command: "shop.payment.authorize",
            compensation: Some("shop.payment.cancel"),
            timeout: payment_timeout,
        },
    ]));
    Box::leak(Box::new(SagaDef {
        name: "checkout",
        source: SOURCE,
        steps,
    }))
}

/// The order service's side of the saga: every move is an event of the Order aggregate.
pub struct CheckoutHooks {
    /// Where the moves are appended (and projected).
    pub orders: Orders,
}

async fn record(
    orders: &Orders,
    tx: &mut Tx,
    id: &str,
    event: OrderEvent,
) -> Result<bool, HandlerError> {
    let order = aggregate::load(tx, id)
        .await?
        .ok_or_else(|| HandlerError::permanent(format!("saga for unknown order {id}")))?;
    if !order.accepts(&event) {
        tracing::warn!(order = %id, status = order.status.as_str(), event = event.name(), "order already final; ignored");
        return Ok(false);
    }
    orders.append(tx, id, order.version, &event).await?;
    Ok(true)
}

fn outcome(saga: &SagaState, extra: Value) -> Value {
    let mut v = json!({
        "orderId": saga.id,
        "userId": saga.data["userId"],
        "total": saga.data["total"],
        "currency": saga.data["currency"],
    });
    if let (Value::Object(into), Value::Object(from)) = (&mut v, extra) {
        into.extend(from);
    }
    v
}

impl SagaHooks for CheckoutHooks {
    fn step_done<'a>(
        &'a self,
        tx: &'a mut Tx,
        saga: &'a SagaState,
        step: &'static Step,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let event = match step.name {
                "reserve-stock" => OrderEvent::StockReserved {},
                _ => OrderEvent::PaymentAuthorized {
                    payment_id: saga.data["paymentId"]
                        .as_str()
                        .unwrap_or(&saga.id)
                        .to_string(),
                },
            };
            record(&self.orders, tx, &saga.id, event).await.map(drop)
        })
    }

    fn completed<'a>(
        &'a self,
        tx: &'a mut Tx,
        saga: &'a SagaState,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if record(&self.orders, tx, &saga.id, OrderEvent::OrderConfirmed {}).await? {
                let commit = Event::new(SOURCE, "shop.inventory.commit", &saga.id, &saga.data);
                outbox::add(tx, "inventory.commands", &commit).await?;
                let confirmed = Event::new(
                    SOURCE,
                    "shop.order.confirmed",
                    &saga.id,
                    outcome(saga, json!({})),
                );
                outbox::add(tx, ORDER_EVENTS, &confirmed).await?;
                tracing::info!(order = %saga.id, "order confirmed");
            }
            Ok(())
        })
    }

    fn failed<'a>(
        &'a self,
        tx: &'a mut Tx,
        saga: &'a SagaState,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if record(
                &self.orders,
                tx,
                &saga.id,
                OrderEvent::OrderRejected {
                    reason: reason.to_string(),
                },
            )
            .await?
            {
                let rejected = Event::new(
                    SOURCE,
                    "shop.order.rejected",
                    &saga.id,
                    outcome(saga, json!({ "reason": reason })),
                );
                outbox::add(tx, ORDER_EVENTS, &rejected).await?;
                tracing::info!(order = %saga.id, reason, "order rejected");
            }
            Ok(())
        })
    }
}
