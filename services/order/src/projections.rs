//! Read models of orders (detail, and each user's list), projected from the events in the
//! same transaction that appends them, and rebuildable from the event store at any time.

use tessera::Db;
use tessera::events::Tx;

use crate::aggregate::OrderEvent;

/// Applies one event to the read models.
pub async fn apply(
    tx: &mut Tx,
    id: &str,
    version: i64,
    event: &OrderEvent,
    at: i64,
) -> Result<(), tessera::store::DbError> {
    match event {
        OrderEvent::OrderPlaced {
            user_id,
            items,
            total,
            currency,
        } => {
            let items = serde_json::to_string(items).map_err(tessera::store::DbError::encode)?;
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

async fn stage(
    tx: &mut Tx,
    id: &str,
    version: i64,
    at: i64,
    stage: &str,
) -> Result<(), tessera::store::DbError> {
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
) -> Result<(), tessera::store::DbError> {
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

/// Drops the read models and projects every stored event again; returns (events, orders).
pub async fn rebuild(db: &Db) -> Result<(i64, i64), tessera::store::DbError> {
    let mut tx = db.write_tx().await?;
    tessera::store::query("DELETE FROM order_details")
        .execute(&mut *tx)
        .await?;
    tessera::store::query("DELETE FROM order_list")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, i64, String, i64)> = tessera::store::query_as(
        "SELECT order_id, version, data, at FROM order_events ORDER BY order_id, version",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut orders = 0;
    let events = rows.len() as i64;
    for (id, version, data, at) in rows {
        let event: OrderEvent =
            serde_json::from_str(&data).map_err(tessera::store::DbError::decode)?;
        if version == 1 {
            orders += 1;
        }
        apply(&mut tx, &id, version, &event, at).await?;
    }
    tx.commit().await?;
    Ok((events, orders))
}
