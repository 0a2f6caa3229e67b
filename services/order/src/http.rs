//! The order API: the router and its handlers.
//!
//! Writes go through [`place`](crate::place) (new orders) and reads come from the read models
//! (`order_details`, `order_list`) and, for an order's history, the event store itself. Every
//! route needs a signed-in caller; an order is visible to its owner and to admins only.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera::{ApiError, Caller, Db, Json, Path, Query, ServiceClient};
use uuid::Uuid;

use crate::aggregate::Orders;
use crate::place::{self, LineInput, Placed, Placement, Placer};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Calls the catalog for prices.
    pub catalog: ServiceClient,
    pub placer: Placer,
    /// The event store, for rebuilding the read models.
    pub orders: Orders,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/orders", post(place).get(mine))
        .route("/api/orders/projections/rebuild", post(rebuild))
        .route("/api/orders/{id}", get(detail))
        .route("/api/orders/{id}/history", get(history))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    items: Vec<LineInput>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 200 visible characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

async fn existing_order(
    db: &Db,
    user: &str,
    key: &str,
) -> Result<Option<String>, tessera::store::DbError> {
    let row: Option<(String,)> = tessera::store::query_as(
        "SELECT order_id FROM idempotency WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|r| r.0))
}

async fn status_of(db: &Db, order_id: &str) -> Result<String, tessera::store::DbError> {
    let (status,): (String,) =
        tessera::store::query_as("SELECT status FROM order_details WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(db.pool())
            .await?;
    Ok(status)
}

fn accepted(order_id: &str, status: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "orderId": order_id, "status": status })),
    )
        .into_response()
}

async fn place(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(req): Json<PlaceOrder>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if let Some(key) = &key
        && let Some(order_id) = existing_order(&st.db, &caller.id, key).await?
    {
        return Ok(accepted(&order_id, &status_of(&st.db, &order_id).await?));
    }
    place::check(&req.items)?;
    let priced = place::price(&st.catalog, &req.items).await?;
    let total = priced.total;
    let placement = Placement::new(&caller.id, key, priced);
    let order_id = placement.order_id.clone();
    match st.placer.place(placement).await? {
        Placed::New => {
            tracing::info!(order = %order_id, user = %caller.id, total, "order placed");
            Ok(accepted(&order_id, "PENDING"))
        }
        Placed::Twin(existing) => Ok(accepted(&existing, &status_of(&st.db, &existing).await?)),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderView {
    order_id: String,
    user_id: String,
    status: String,
    stage: String,
    items: Value,
    total: i64,
    currency: String,
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    version: i64,
}

type DetailRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    i64,
    i64,
    i64,
);

async fn find(db: &Db, caller: &Caller, id: &Uuid) -> Result<OrderView, ApiError> {
    let row: Option<DetailRow> = tessera::store::query_as(
        "SELECT order_id, user_id, status, stage, items, total, currency, reason, created_at, updated_at, version
         FROM order_details WHERE order_id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(db.read())
    .await?;
    let (
        order_id,
        user_id,
        status,
        stage,
        items,
        total,
        currency,
        reason,
        created_at,
        updated_at,
        version,
    ) = row.ok_or_else(|| ApiError::not_found("no such order"))?;
    // Someone else's order is not found, rather than forbidden: its existence is not told.
    if user_id != caller.id && !caller.has_role("admin") {
        return Err(ApiError::not_found("no such order"));
    }
    Ok(OrderView {
        order_id,
        user_id,
        status,
        stage,
        items: serde_json::from_str(&items).unwrap_or(Value::Null),
        total,
        currency,
        reason,
        created_at,
        updated_at,
        version,
    })
}

async fn detail(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(find(&st.db, &caller, &id).await?))
}

async fn history(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    find(&st.db, &caller, &id).await?;
    let rows: Vec<(i64, String, String, i64)> = tessera::store::query_as(
        "SELECT version, type, data, at FROM order_events WHERE order_id = $1 ORDER BY version",
    )
    .bind(id.to_string())
    .fetch_all(st.db.read())
    .await?;
    let events: Vec<Value> = rows
        .into_iter()
        .map(|(version, ty, data, at)| {
            json!({ "version": version, "type": ty, "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null), "at": at })
        })
        .collect();
    Ok(Json(json!({ "orderId": id.to_string(), "events": events })))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn mine(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be 1 to 100",
        ));
    }
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            let bad =
                || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
            let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
            let id = String::from_utf8(raw).map_err(|_| bad())?;
            Uuid::parse_str(&id).map_err(|_| bad())?;
            Some(id)
        }
    };
    let mut rows: Vec<(String, String, i64, String, i64)> = tessera::store::query_as(
        "SELECT order_id, status, total, currency, created_at FROM order_list
         WHERE user_id = $1 AND (CAST($2 AS TEXT) IS NULL OR order_id < $2) ORDER BY order_id DESC LIMIT $3",
    )
    .bind(&caller.id)
    .bind(before.as_deref())
    .bind(i64::from(limit) + 1)
    .fetch_all(st.db.read())
    .await?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| URL_SAFE_NO_PAD.encode(&r.0))
    } else {
        None
    };
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(id, status, total, currency, created)| {
            json!({ "orderId": id, "status": status, "total": total, "currency": currency, "createdAt": created })
        })
        .collect();
    Ok(Json(json!({ "items": items, "nextCursor": next })))
}

async fn rebuild(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let (events, orders) = st.orders.rebuild(&st.db).await?;
    tracing::info!(events, orders, by = %caller.id, "projections rebuilt");
    Ok(Json(json!({ "events": events, "orders": orders })))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tessera::PassportKeys;
    use tessera::registry::Discovery;
    use tessera::saga::{Saga, SagaDef, SagaHooks, SagaState};
    use tessera::testing::{ADMIN, ANN, App, BOB, TempDb};

    use super::*;
    use crate::aggregate::Line;
    use crate::checkout::{self, CheckoutHooks};
    use crate::place::Priced;
    use crate::projections::ReadModels;
    use crate::schema::MIGRATIONS;

    /// The router on a fresh database, with the real placer and event store; no catalog is
    /// reachable, so an order that gets as far as pricing answers 503.
    struct Shop {
        app: App,
        orders: Orders,
        placer: Placer,
        saga: &'static SagaDef,
    }

    async fn shop() -> Shop {
        // The service's tables and the library's (outbox, sagas), as the runtime opens them.
        let mut migrations = MIGRATIONS.to_vec();
        migrations.extend_from_slice(tessera::events::MIGRATIONS);
        let db = TempDb::new("order", &migrations).await;
        let orders = Orders::new(vec![Arc::new(ReadModels)]);
        let saga = checkout::definition(Duration::from_secs(10), Duration::from_secs(15));
        let placer = Placer::start(db.clone(), Arc::new(Saga::new(saga)), orders.clone(), || {});
        let keys = PassportKeys::from_spec(&PassportKeys::generate_spec(), "test").unwrap();
        let catalog = ServiceClient::new(
            Discovery::fixed([]),
            Arc::new(keys),
            "order",
            Duration::from_secs(1),
        );
        let router = router(AppState {
            db: db.clone(),
            catalog,
            placer: placer.clone(),
            orders: orders.clone(),
        });
        Shop {
            app: App { db, router },
            orders,
            placer,
            saga,
        }
    }

    impl Shop {
        /// Stores an order of `user`'s through the placer, as a priced POST does.
        async fn placed(&self, user: &str, key: Option<&str>, quantity: i64) -> String {
            let priced = Priced {
                lines: vec![Line {
                    product_id: Uuid::now_v7().to_string(),
                    name: "Mug".into(),
                    quantity,
                    unit_price: 1250,
                }],
                total: 1250 * quantity,
                currency: "EUR".into(),
            };
            let placement = Placement::new(user, key.map(str::to_string), priced);
            let id = placement.order_id.clone();
            assert!(matches!(
                self.placer.place(placement).await.unwrap(),
                Placed::New
            ));
            id
        }
    }

    fn order_of(lines: usize) -> Value {
        let items: Vec<Value> = (0..lines)
            .map(|_| json!({ "productId": Uuid::now_v7(), "quantity": 1 }))
            .collect();
        json!({ "items": items })
    }

    #[tokio::test]
    async fn anonymous_callers_are_refused() {
        let shop = shop().await;
        let anonymous = ("anonymous", &[] as &[&str]);
        for (method, uri, body) in [
            ("POST", "/api/orders", Some(order_of(1))),
            ("GET", "/api/orders", None),
            ("GET", &format!("/api/orders/{}", Uuid::now_v7()), None),
        ] {
            let (status, body) = shop.app.call(anonymous, method, uri, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
            assert_eq!(body["code"], "unauthenticated");
        }
    }

    #[tokio::test]
    async fn bad_orders_are_refused_before_pricing() {
        let shop = shop().await;
        let product = Uuid::now_v7();
        let long_key = "k".repeat(201);
        // (body, Idempotency-Key, error code)
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (order_of(0), None, "invalid_items"),
            (order_of(21), None, "invalid_items"),
            (
                json!({ "items": [{ "productId": product, "quantity": 0 }] }),
                None,
                "invalid_quantity",
            ),
            (
                json!({ "items": [{ "productId": product, "quantity": 1001 }] }),
                None,
                "invalid_quantity",
            ),
            (
                json!({ "items": [
                    { "productId": product, "quantity": 1 },
                    { "productId": product, "quantity": 2 },
                ] }),
                None,
                "duplicate_product",
            ),
            (
                json!({ "items": [{ "productId": "mug", "quantity": 1 }] }),
                None,
                "invalid_body",
            ),
            (
                json!({ "items": [{ "productId": product, "quantity": 1, "price": 1 }] }),
                None,
                "invalid_body",
            ),
            (order_of(1), Some(""), "invalid_idempotency_key"),
            (order_of(1), Some(&long_key), "invalid_idempotency_key"),
        ];
        for (body, key, code) in cases {
            let headers: Vec<(&str, &str)> =
                key.map(|k| ("idempotency-key", k)).into_iter().collect();
            let (status, answer) = shop
                .app
                .call_with(ANN, "POST", "/api/orders", &headers, Some(body.clone()))
                .await;
            assert_eq!(
                (status, answer["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{body}"
            );
        }
        // A good order gets past the checks, to the catalog (which is not there).
        let (status, _) = shop
            .app
            .call(ANN, "POST", "/api/orders", Some(order_of(20)))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let rows: (i64,) = tessera::store::query_as("SELECT COUNT(*) FROM order_events")
            .fetch_one(shop.app.db.pool())
            .await
            .unwrap();
        assert_eq!(rows.0, 0, "nothing was stored");
    }

    #[tokio::test]
    async fn a_retried_post_returns_the_order_its_key_placed() {
        let shop = shop().await;
        let first = shop.placed("ann", Some("k1"), 2).await;
        // The retry is answered from the key, without pricing (no catalog here) or storing.
        let (status, body) = shop
            .app
            .call_with(
                ANN,
                "POST",
                "/api/orders",
                &[("idempotency-key", "k1")],
                Some(order_of(1)),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body, json!({ "orderId": first, "status": "PENDING" }));
        // Keys are per user: Bob's "k1" is a new order (which needs the catalog).
        let (status, _) = shop
            .app
            .call_with(
                BOB,
                "POST",
                "/api/orders",
                &[("idempotency-key", "k1")],
                Some(order_of(1)),
            )
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // A twin that reaches the placer gets the first order too.
        let priced = Priced {
            lines: vec![],
            total: 1,
            currency: "EUR".into(),
        };
        let twin = Placement::new("ann", Some("k1".into()), priced);
        match shop.placer.place(twin).await.unwrap() {
            Placed::Twin(id) => assert_eq!(id, first),
            Placed::New => panic!("a second order for the same key"),
        }
    }

    #[tokio::test]
    async fn an_order_is_shown_to_its_owner_and_admins_only() {
        let shop = shop().await;
        let id = shop.placed("ann", None, 3).await;
        let detail = format!("/api/orders/{id}");
        let history = format!("/api/orders/{id}/history");

        let (status, order) = shop.app.call(ANN, "GET", &detail, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(order["orderId"], id.as_str());
        assert_eq!(order["userId"], "ann");
        assert_eq!(
            (&order["status"], &order["stage"], &order["version"]),
            (&json!("PENDING"), &json!("placed"), &json!(1))
        );
        assert_eq!(
            (&order["total"], &order["currency"]),
            (&json!(3750), &json!("EUR"))
        );
        assert_eq!(order["items"][0]["quantity"], 3);
        assert_eq!(order["items"][0]["unitPrice"], 1250);

        let (status, events) = shop.app.call(ANN, "GET", &history, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(events["events"].as_array().unwrap().len(), 1);
        assert_eq!(events["events"][0]["type"], "OrderPlaced");
        assert_eq!(events["events"][0]["data"]["total"], 3750);

        // Someone else's order does not exist for them; an admin sees it.
        for uri in [&detail, &history] {
            let (status, body) = shop.app.call(BOB, "GET", uri, None).await;
            assert_eq!(
                (status, &body["code"]),
                (StatusCode::NOT_FOUND, &json!("not_found"))
            );
            let (status, _) = shop.app.call(ADMIN, "GET", uri, None).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
        let (status, body) = shop.app.call(ANN, "GET", "/api/orders/mug", None).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_path"))
        );
    }

    #[tokio::test]
    async fn the_read_models_follow_the_checkout() {
        let shop = shop().await;
        let confirmed = shop.placed("ann", None, 1).await;
        let rejected = shop.placed("ann", None, 1).await;
        let hooks = CheckoutHooks {
            orders: shop.orders.clone(),
        };
        let state = |id: &str| SagaState {
            id: id.to_string(),
            step: 1,
            status: "running".into(),
            data: json!({ "orderId": id, "userId": "ann", "total": 1250, "currency": "EUR", "paymentId": "p1" }),
        };
        let mut tx = shop.app.db.write_tx().await.unwrap();
        let saga = state(&confirmed);
        hooks
            .step_done(&mut tx, &saga, &shop.saga.steps[0])
            .await
            .unwrap();
        hooks
            .step_done(&mut tx, &saga, &shop.saga.steps[1])
            .await
            .unwrap();
        hooks.completed(&mut tx, &saga).await.unwrap();
        hooks
            .failed(&mut tx, &state(&rejected), "out_of_stock")
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let (_, order) = shop
            .app
            .call(ANN, "GET", &format!("/api/orders/{confirmed}"), None)
            .await;
        assert_eq!(
            (&order["status"], &order["stage"], &order["version"]),
            (&json!("CONFIRMED"), &json!("confirmed"), &json!(4))
        );
        let (_, order) = shop
            .app
            .call(ANN, "GET", &format!("/api/orders/{rejected}"), None)
            .await;
        assert_eq!(
            (&order["status"], &order["reason"], &order["version"]),
            (&json!("REJECTED"), &json!("out_of_stock"), &json!(2))
        );
        let (_, list) = shop.app.call(ANN, "GET", "/api/orders", None).await;
        let statuses: Vec<(&str, &str)> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["orderId"].as_str().unwrap(),
                    o["status"].as_str().unwrap(),
                )
            })
            .collect();
        assert!(
            statuses.contains(&(confirmed.as_str(), "CONFIRMED")),
            "{list}"
        );
        assert!(
            statuses.contains(&(rejected.as_str(), "REJECTED")),
            "{list}"
        );
        let (_, history) = shop
            .app
            .call(
                ANN,
                "GET",
                &format!("/api/orders/{confirmed}/history"),
                None,
            )
            .await;
        let types: Vec<&str> = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "OrderPlaced",
                "StockReserved",
                "PaymentAuthorized",
                "OrderConfirmed"
            ]
        );
    }

    #[tokio::test]
    async fn my_orders_come_newest_first_a_page_at_a_time() {
        let shop = shop().await;
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(shop.placed("ann", None, 1).await);
        }
        shop.placed("bob", None, 1).await;
        mine.sort();
        mine.reverse();

        let (status, page) = shop.app.call(ANN, "GET", "/api/orders?limit=2", None).await;
        assert_eq!(status, StatusCode::OK);
        let ids = |page: &Value| -> Vec<String> {
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["orderId"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&page), mine[..2]);
        assert_eq!(page["items"][0]["total"], 1250);
        let cursor = page["nextCursor"]
            .as_str()
            .expect("a next page")
            .to_string();
        let (_, page) = shop
            .app
            .call(
                ANN,
                "GET",
                &format!("/api/orders?limit=2&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(ids(&page), mine[2..]);
        assert_eq!(page["nextCursor"], Value::Null);

        for (query, code) in [
            ("limit=0", "invalid_limit"),
            ("limit=101", "invalid_limit"),
            ("cursor=bm90LWEtdXVpZA", "invalid_cursor"),
            ("cursor=!!", "invalid_cursor"),
            ("limit=x", "invalid_query"),
        ] {
            let (status, body) = shop
                .app
                .call(ANN, "GET", &format!("/api/orders?{query}"), None)
                .await;
            assert_eq!(
                (status, body["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{query}"
            );
        }
    }

    #[tokio::test]
    async fn admins_rebuild_the_read_models_from_the_events() {
        let shop = shop().await;
        let a = shop.placed("ann", None, 1).await;
        let b = shop.placed("bob", None, 2).await;
        let mut tx = shop.app.db.write_tx().await.unwrap();
        shop.orders
            .append(
                &mut tx,
                &b,
                1,
                &crate::aggregate::OrderEvent::OrderConfirmed {},
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let rebuild = "/api/orders/projections/rebuild";
        let (status, body) = shop.app.call(ANN, "POST", rebuild, None).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::FORBIDDEN, &json!("forbidden"))
        );

        // Lose the read models, then rebuild them.
        for table in ["order_details", "order_list"] {
            tessera::store::query(&format!("DELETE FROM {table}"))
                .execute(shop.app.db.pool())
                .await
                .unwrap();
        }
        let (status, body) = shop.app.call(ADMIN, "POST", rebuild, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "events": 3, "orders": 2 }));
        let (_, order) = shop
            .app
            .call(BOB, "GET", &format!("/api/orders/{b}"), None)
            .await;
        assert_eq!(
            (&order["status"], &order["version"]),
            (&json!("CONFIRMED"), &json!(2))
        );
        let (_, list) = shop.app.call(ANN, "GET", "/api/orders", None).await;
        assert_eq!(list["items"][0]["orderId"], a.as_str());
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
    }
}
