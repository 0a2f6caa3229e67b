//! Read models of orders (detail, and each user's list): a [`Projection`] of the Order
//! aggregate's events. The event store hands it each event in the transaction that appends
//! it, and replays them all through it on a rebuild, so it depends on the aggregate and never
//! the other way round.

use tessera::events::{BoxFuture, Tx};
use tessera::store::DbError;

use crate::aggregate::{OrderEvent, Projection, Recorded};

/// The `order_details` and `order_list` tables.
pub struct ReadModels;

impl Projection for ReadModels {
    fn reset<'a>(&'a self, tx: &'a mut Tx) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(async move {
            tessera::store::query("DELETE FROM order_details")
                .execute(&mut **tx)
                .await?;
            tessera::store::query("DELETE FROM order_list")
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut Tx,
        event: Recorded<'a>,
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(apply(tx, event))
    }
}

/// Applies one event to the read models.
async fn apply(tx: &mut Tx, recorded: Recorded<'_>) -> Result<(), DbError> {
    let Recorded {
        order_id: id,
        version,
        at,
        event,
    } = recorded;
    match event {
        OrderEvent::OrderPlaced {
            user_id,
            items,
            total,
            currency,
        } => {
            let items = serde_json::to_string(items).map_err(DbError::encode)?;
            tessera::store::query(
                "INSERT INTO order_details (order_id, user_id, status, stage, items, total, currency, created_at, updated_at, version)
                 VALUES ($1, $2, 'PENDING', 'placed', $3, $4, $5, $6, $6, $7)",
            )
            .bind(id)
            .bind(user_id)
            .bind(items)
            .bind(total)
            .bind(currency)
            .bind(at)
            .bind(version)
            .execute(&mut **tx)
            .await?;
            tessera::store::query(
                "INSERT INTO order_list (user_id, order_id, status, total, currency, created_at) VALUES ($1, $2, 'PENDING', $3, $4, $5)",
            )
            .bind(user_id)
            .bind(id)
            .bind(total)
            .bind(currency)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        OrderEvent::StockReserved {} => stage(tx, id, version, at, "stock_reserved").await?,
        OrderEvent::PaymentAuthorized { .. } => {
            stage(tx, id, version, at, "payment_authorized").await?
        }
        OrderEvent::OrderConfirmed {} => finish(tx, id, version, at, "CONFIRMED", None).await?,
        OrderEvent::OrderRejected { reason } => {
            finish(tx, id, version, at, "REJECTED", Some(reason)).await?
        }
    }
    Ok(())
}

async fn stage(tx: &mut Tx, id: &str, version: i64, at: i64, stage: &str) -> Result<(), DbError> {
    tessera::store::query(
        "UPDATE order_details SET stage = $2, updated_at = $3, version = $4 WHERE order_id = $1",
    )
    .bind(id)
    .bind(stage)
    .bind(at)
    .bind(version)
    .execute(&mut **tx)
    .await
    .map(drop)
}

async fn finish(
    tx: &mut Tx,
    id: &str,
    version: i64,
    at: i64,
    status: &str,
    reason: Option<&String>,
) -> Result<(), DbError> {
    tessera::store::query(
        "UPDATE order_details SET status = $2, stage = lower($2), reason = $3, updated_at = $4, version = $5 WHERE order_id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(reason)
    .bind(at)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    // By the list's whole key (user, order): by the order alone it would scan every order.
    tessera::store::query(
        "UPDATE order_list SET status = $2
         WHERE user_id = (SELECT user_id FROM order_details WHERE order_id = $1) AND order_id = $1",
    )
    .bind(id)
    .bind(status)
    .execute(&mut **tx)
    .await
    .map(drop)
}
