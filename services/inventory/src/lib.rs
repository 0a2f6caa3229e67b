//! Tessera Shop's `inventory` service: stock per product, reserved, released and committed
//! per order.
//!
//! It takes commands from `inventory.commands` (`shop.inventory.reserve`, `.release`,
//! `.commit`) and answers saga commands on their reply topic. Every command is idempotent per
//! order id (the `reservations` row records where each order stands), and stock can never go
//! negative: the check and the decrement happen in one write transaction, and a `CHECK`
//! constraint backs it.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tessera::events::{BoxFuture, Consumer, Event, Handler, HandlerError, Tx};
use tessera::saga::{self, Reply};
use tessera::{ApiError, Caller, Db, Json, Migration, Path, Service, unix_now};
use uuid::Uuid;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sqlite: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "tables without rowid",
        sqlite: include_str!("../migrations/0002_without_rowid.sql"),
    },
];

pub const COMMANDS: &str = "inventory.commands";
const SOURCE: &str = "/shop/inventory";

pub async fn run() -> anyhow::Result<()> {
    Service::new("inventory")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            ctx.events()
                .consume(Consumer::new(COMMANDS, "inventory"), Commands);
            Ok(router(ctx.db().clone()))
        })
        .await
}

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/inventory", get(list))
        .route("/api/inventory/{product_id}", get(read).put(set))
        .with_state(db)
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct Line {
    product_id: String,
    quantity: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderData {
    order_id: String,
    #[serde(default)]
    items: Vec<Line>,
}

struct Commands;

impl Handler for Commands {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let order: OrderData = event.data_as()?;
            match event.ty.as_str() {
                "shop.inventory.reserve" => reserve(tx, event, &order).await,
                "shop.inventory.release" => release(tx, &order).await,
                "shop.inventory.commit" => commit(tx, &order).await,
                other => Err(HandlerError::permanent(format!("unknown command {other}"))),
            }
        })
    }
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

async fn reserve(tx: &mut Tx, command: &Event, order: &OrderData) -> Result<(), HandlerError> {
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

async fn release(tx: &mut Tx, order: &OrderData) -> Result<(), HandlerError> {
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

async fn commit(tx: &mut Tx, order: &OrderData) -> Result<(), HandlerError> {
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StockView {
    product_id: String,
    available: i64,
    reserved: i64,
}

async fn list(State(db): State<Db>, caller: Caller) -> Result<Json<Vec<StockView>>, ApiError> {
    caller.require_role("admin")?;
    let rows: Vec<(String, i64, i64)> = tessera::store::query_as(
        "SELECT product_id, available, reserved FROM stock ORDER BY product_id",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(product_id, available, reserved)| StockView {
                product_id,
                available,
                reserved,
            })
            .collect(),
    ))
}

async fn read(
    State(db): State<Db>,
    caller: Caller,
    Path(product): Path<Uuid>,
) -> Result<Json<StockView>, ApiError> {
    caller.require_role("admin")?;
    let row: Option<(i64, i64)> =
        tessera::store::query_as("SELECT available, reserved FROM stock WHERE product_id = $1")
            .bind(product.to_string())
            .fetch_optional(db.pool())
            .await?;
    let (available, reserved) =
        row.ok_or_else(|| ApiError::not_found("no stock record for this product"))?;
    Ok(Json(StockView {
        product_id: product.to_string(),
        available,
        reserved,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    available: i64,
}

async fn set(
    State(db): State<Db>,
    caller: Caller,
    Path(product): Path<Uuid>,
    Json(body): Json<SetStock>,
) -> Result<Json<StockView>, ApiError> {
    caller.require_role("admin")?;
    if !(0..=1_000_000_000).contains(&body.available) {
        return Err(ApiError::bad_request(
            "invalid_available",
            "available must be 0 to 10^9",
        ));
    }
    let (available, reserved): (i64, i64) = tessera::store::query_as(
        "INSERT INTO stock (product_id, available, reserved) VALUES ($1, $2, 0)
         ON CONFLICT (product_id) DO UPDATE SET available = excluded.available RETURNING available, reserved",
    )
    .bind(product.to_string())
    .bind(body.available)
    .fetch_one(db.pool())
    .await?;
    tracing::info!(product = %product, available, by = %caller.id, "stock set");
    Ok(Json(StockView {
        product_id: product.to_string(),
        available,
        reserved,
    }))
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use tessera::Db;
    use tessera::store::{query, query_as};

    #[tokio::test]
    async fn stock_and_reservations_survive_the_move_to_without_rowid() {
        let dir = std::env::temp_dir().join(format!("shop-inventory-{}", uuid::Uuid::new_v4()));
        let url = Db::default_url(&dir, "inventory");
        let before = Db::open(&url, &MIGRATIONS[..1]).await.unwrap();
        query("UPDATE stock SET available = 7, reserved = 3 WHERE product_id = '0190f000-0000-7000-8000-000000000001'")
            .execute(before.pool())
            .await
            .unwrap();
        query("INSERT INTO reservations (order_id, status, items, updated) VALUES ('o1', 'reserved', '[]', 5)")
            .execute(before.pool())
            .await
            .unwrap();
        before.close().await;

        let db = Db::open(&url, MIGRATIONS).await.unwrap();
        let stock: (i64, i64) = query_as(
            "SELECT available, reserved FROM stock WHERE product_id = '0190f000-0000-7000-8000-000000000001'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(stock, (7, 3));
        let reservation: (String, String, i64) =
            query_as("SELECT status, items, updated FROM reservations WHERE order_id = 'o1'")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(reservation, ("reserved".into(), "[]".into(), 5));
        // The constraints came along.
        assert!(
            query("UPDATE stock SET available = -1 WHERE product_id = '0190f000-0000-7000-8000-000000000001'")
                .execute(db.pool())
                .await
                .is_err()
        );
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
