//! Stock per product: reserved, released and committed per order, as the checkout saga asks.
//!
//! Every command is idempotent per order id (the `reservations` row records where each order
//! stands), and stock can never go negative: the check and the decrement happen in one write
//! transaction, and a `CHECK` constraint backs it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera::events::{Event, HandlerError, Tx};
use tessera::saga::{self, Reply};
use tessera::unix_now;

const SOURCE: &str = "/shop/inventory";

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct Line {
    product_id: String,
    quantity: i64,
}

/// The data of every inventory command.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderData {
    order_id: String,
    #[serde(default)]
    items: Vec<Line>,
}

/// Merges lines of the same product.
fn totals(items: &[Line]) -> Result<BTreeMap<&str, i64>, HandlerError> {
    let mut by_product = BTreeMap::new();
    for line in items {
        if line.quantity <= 0 {
            return Err(HandlerError::permanent("quantities must be positive"));
        }
        *by_product.entry(line.product_id.as_str()).or_insert(0) += line.quantity;
    }
    Ok(by_product)
}

/// Reserves the order's items if all are in stock, and answers the saga either way.
pub async fn reserve(tx: &mut Tx, command: &Event, order: &OrderData) -> Result<(), HandlerError> {
    let existing: Option<(String,)> =
        tessera::store::query_as("SELECT status FROM reservations WHERE order_id = $1")
            .bind(&order.order_id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some((status,)) = existing {
        // Seen before: answer the same again.
        let outcome = match status.as_str() {
            "reserved" | "committed" => Reply::Ok(serde_json::json!({})),
            "rejected" => Reply::Failed("out_of_stock".into()),
            _ => Reply::Failed("reservation_released".into()),
        };
        saga::reply(tx, command, SOURCE, outcome).await?;
        return Ok(());
    }
    let wanted = totals(&order.items)?;
    let mut short = Vec::new();
    for (product, quantity) in &wanted {
        let available: Option<(i64,)> =
            tessera::store::query_as("SELECT available FROM stock WHERE product_id = $1")
                .bind(*product)
                .fetch_optional(&mut **tx)
                .await?;
        if available.is_none_or(|(a,)| a < *quantity) {
            short.push(*product);
        }
    }
    let items = serde_json::to_string(&order.items)?;
    if !short.is_empty() {
        record(tx, &order.order_id, "rejected", &items).await?;
        tracing::info!(order = %order.order_id, short = ?short, "out of stock");
        saga::reply(tx, command, SOURCE, Reply::Failed("out_of_stock".into())).await?;
        return Ok(());
    }
    for (product, quantity) in &wanted {
        tessera::store::query("UPDATE stock SET available = available - $2, reserved = reserved + $2 WHERE product_id = $1")
            .bind(*product)
            .bind(*quantity)
            .execute(&mut **tx)
            .await?;
    }
    record(tx, &order.order_id, "reserved", &items).await?;
    saga::reply(tx, command, SOURCE, Reply::Ok(serde_json::json!({}))).await?;
    Ok(())
}

/// Gives an order's reserved stock back.
pub async fn release(tx: &mut Tx, order: &OrderData) -> Result<(), HandlerError> {
    let existing: Option<(String, String)> =
        tessera::store::query_as("SELECT status, items FROM reservations WHERE order_id = $1")
            .bind(&order.order_id)
            .fetch_optional(&mut **tx)
            .await?;
    match existing {
        Some((status, items)) if status == "reserved" => {
            let lines: Vec<Line> = serde_json::from_str(&items)?;
            for (product, quantity) in totals(&lines)? {
                tessera::store::query("UPDATE stock SET available = available + $2, reserved = reserved - $2 WHERE product_id = $1")
                    .bind(product)
                    .bind(quantity)
                    .execute(&mut **tx)
                    .await?;
            }
            update(tx, &order.order_id, "released").await?;
            tracing::info!(order = %order.order_id, "reservation released");
        }
        Some(_) => {} // already released, committed or never reserved: nothing to give back
        None => {
            // Released before it was reserved (a timed-out saga): a later reserve must not hold stock.
            record(tx, &order.order_id, "released", "[]").await?;
        }
    }
    Ok(())
}

/// Turns an order's reservation into a sale.
pub async fn commit(tx: &mut Tx, order: &OrderData) -> Result<(), HandlerError> {
    let existing: Option<(String, String)> =
        tessera::store::query_as("SELECT status, items FROM reservations WHERE order_id = $1")
            .bind(&order.order_id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some((status, items)) = existing
        && status == "reserved"
    {
        let lines: Vec<Line> = serde_json::from_str(&items)?;
        for (product, quantity) in totals(&lines)? {
            tessera::store::query(
                "UPDATE stock SET reserved = reserved - $2 WHERE product_id = $1",
            )
            .bind(product)
            .bind(quantity)
            .execute(&mut **tx)
            .await?;
        }
        update(tx, &order.order_id, "committed").await?;
    }
    Ok(())
}

async fn record(
    tx: &mut Tx,
    order_id: &str,
    status: &str,
    items: &str,
) -> Result<(), tessera::store::DbError> {
    tessera::store::query(
        "INSERT INTO reservations (order_id, status, items, updated) VALUES ($1, $2, $3, $4)",
    )
    .bind(order_id)
    .bind(status)
    .bind(items)
    .bind(unix_now() as i64)
    .execute(&mut **tx)
    .await
    .map(drop)
}

async fn update(tx: &mut Tx, order_id: &str, status: &str) -> Result<(), tessera::store::DbError> {
    tessera::store::query("UPDATE reservations SET status = $2, updated = $3 WHERE order_id = $1")
        .bind(order_id)
        .bind(status)
        .bind(unix_now() as i64)
        .execute(&mut **tx)
        .await
        .map(drop)
}
