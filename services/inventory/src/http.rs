//! The inventory API, for admins: read the stock, and set how much of a product is available.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tessera::{ApiError, Caller, Db, Json, Path};
use uuid::Uuid;

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/inventory", get(list))
        .route("/api/inventory/{product_id}", get(read).put(set))
        .with_state(db)
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
    use axum::http::StatusCode;
    use serde_json::{Value, json};
    use tessera::events::Event;
    use tessera::testing::{ADMIN, ANN, ANYONE, App, handle};

    use super::*;
    use crate::schema::MIGRATIONS;
    use crate::worker::Commands;

    /// The router on a fresh database (the demo products have 100 each).
    async fn inventory() -> App {
        App::new("inventory", MIGRATIONS, router).await
    }

    const KEYBOARD: &str = "0190f000-0000-7000-8000-000000000001";

    /// Runs one inventory command as the consumer would.
    async fn command(inventory: &App, ty: &str, order: &str, items: Value) {
        let event = Event::new(
            "/shop/order",
            ty,
            order,
            json!({ "orderId": order, "items": items }),
        );
        handle(&inventory.db, &Commands, &event).await;
    }

    #[tokio::test]
    async fn the_stock_is_for_admins_only() {
        let inventory = inventory().await;
        let one = format!("/api/inventory/{KEYBOARD}");
        for (who, status, code) in [
            (ANYONE, StatusCode::UNAUTHORIZED, "unauthenticated"),
            (ANN, StatusCode::FORBIDDEN, "forbidden"),
        ] {
            for (method, uri, body) in [
                ("GET", "/api/inventory", None),
                ("GET", one.as_str(), None),
                ("PUT", one.as_str(), Some(json!({ "available": 0 }))),
            ] {
                let (got, answer) = inventory.call(who, method, uri, body).await;
                assert_eq!(
                    (got, answer["code"].as_str()),
                    (status, Some(code)),
                    "{method} {uri}"
                );
            }
        }
        let (_, stock) = inventory.call(ADMIN, "GET", &one, None).await;
        assert_eq!(stock["available"], 100, "unchanged");
    }

    #[tokio::test]
    async fn stock_set_is_read_back() {
        let inventory = inventory().await;
        let (status, all) = inventory.call(ADMIN, "GET", "/api/inventory", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(all.as_array().unwrap().len(), 25);
        assert_eq!(
            all[0],
            json!({ "productId": KEYBOARD, "available": 100, "reserved": 0 })
        );

        let new = Uuid::now_v7();
        let uri = format!("/api/inventory/{new}");
        let (status, answer) = inventory.call(ADMIN, "GET", &uri, None).await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::NOT_FOUND, &json!("not_found"))
        );
        for available in [7, 3] {
            let (status, set) = inventory
                .call(ADMIN, "PUT", &uri, Some(json!({ "available": available })))
                .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                set,
                json!({ "productId": new.to_string(), "available": available, "reserved": 0 })
            );
        }
        let (_, read) = inventory.call(ADMIN, "GET", &uri, None).await;
        assert_eq!(read["available"], 3);

        for (body, code) in [
            (json!({ "available": -1 }), "invalid_available"),
            (json!({ "available": 1_000_000_001 }), "invalid_available"),
            (json!({ "available": 1, "reserved": 0 }), "invalid_body"),
            (json!({}), "invalid_body"),
        ] {
            let (status, answer) = inventory.call(ADMIN, "PUT", &uri, Some(body.clone())).await;
            assert_eq!(
                (status, answer["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{body}"
            );
        }
        let (status, answer) = inventory
            .call(ADMIN, "GET", "/api/inventory/keyboard", None)
            .await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_path"))
        );
    }

    #[tokio::test]
    async fn reservations_move_stock_between_available_and_reserved() {
        let inventory = inventory().await;
        let uri = format!("/api/inventory/{KEYBOARD}");
        let stock = || async { inventory.call(ADMIN, "GET", &uri, None).await.1 };
        let lines = json!([
            { "productId": KEYBOARD, "quantity": 2 },
            { "productId": KEYBOARD, "quantity": 3 },
        ]);

        command(&inventory, "shop.inventory.reserve", "o1", lines.clone()).await;
        let held = stock().await;
        assert_eq!(
            (&held["available"], &held["reserved"]),
            (&json!(95), &json!(5))
        );
        // Idempotent per order: the same reserve again holds nothing more.
        command(&inventory, "shop.inventory.reserve", "o1", lines.clone()).await;
        assert_eq!(stock().await["available"], 95);

        command(&inventory, "shop.inventory.release", "o1", json!([])).await;
        let released = stock().await;
        assert_eq!(
            (&released["available"], &released["reserved"]),
            (&json!(100), &json!(0))
        );

        command(&inventory, "shop.inventory.reserve", "o2", lines.clone()).await;
        command(&inventory, "shop.inventory.commit", "o2", json!([])).await;
        let sold = stock().await;
        assert_eq!(
            (&sold["available"], &sold["reserved"]),
            (&json!(95), &json!(0))
        );

        // More than there is: nothing is held.
        let too_many = json!([{ "productId": KEYBOARD, "quantity": 96 }]);
        command(&inventory, "shop.inventory.reserve", "o3", too_many).await;
        assert_eq!(stock().await["available"], 95);
    }
}
