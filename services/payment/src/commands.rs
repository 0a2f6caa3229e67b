//! The commands of the checkout saga on `payment.commands`, each recorded in the consumer's
//! transaction: `shop.payment.authorize` records a `pending` payment (the worker charges it);
//! `shop.payment.cancel`, the saga's compensation, turns it into `voiding`, or leaves a
//! `cancelled` tombstone so that a late authorize charges nothing.

use std::sync::Arc;

use serde::Deserialize;
use tessera::events::{BoxFuture, Event, Handler, HandlerError, Tx};
use tessera::saga::{self, Reply};
use tessera::unix_now_ms as now_ms;
use tokio::sync::Notify;

/// The topic the commands arrive on.
pub const COMMANDS: &str = "payment.commands";
/// The source of this service's events (replies to the saga).
pub const SOURCE: &str = "/shop/payment";

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

/// Records each command, then wakes the worker.
pub struct Commands {
    pub wake: Arc<Notify>,
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
