//! Tessera Shop's `order` service.
//!
//! - The Order aggregate is event-sourced (`aggregate.rs`): `order_events` keyed by order id
//!   and version, with optimistic concurrency; state is the fold of the events.
//! - Read models (order detail, each user's list) are projections of those events
//!   (`projections.rs`), updated in the same transaction and rebuildable from scratch.
//! - Placing an order starts the checkout saga (`checkout.rs`), which this service orchestrates.
//! - Prices come from the catalog, never from the client; an `Idempotency-Key` makes a retried
//!   POST return the same order instead of placing another.

pub mod aggregate;
pub mod checkout;
pub mod projections;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera::client::{REQUEST, RequestContext};
use tessera::events::outbox::Outbox;
use tessera::events::{Consumer, Event, outbox};
use tessera::saga::Saga;
use tessera::store::Tx;
use tessera::{ApiError, Caller, Db, Json, Migration, Path, Query, Service, ServiceClient};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::aggregate::{Line, OrderEvent};

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

const MAX_LINES: usize = 20;
const MAX_QUANTITY: i64 = 1000;

#[derive(Clone)]
pub struct AppState {
    db: Db,
    catalog: ServiceClient,
    placer: Placer,
}

pub async fn run() -> anyhow::Result<()> {
    Service::new("order")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let stock_timeout = ctx
                .settings
                .millis_or("ORDER_STOCK_TIMEOUT_MS", Duration::from_secs(10))?;
            let payment_timeout = ctx
                .settings
                .millis_or("ORDER_PAYMENT_TIMEOUT_MS", Duration::from_secs(15))?;
            let saga = Arc::new(Saga::new(checkout::definition(
                stock_timeout,
                payment_timeout,
            )));
            let events = ctx.events();
            let hooks = Arc::new(checkout::CheckoutHooks);
            events.consume(
                Consumer::new(saga.reply_topic(), "order"),
                saga.clone().handler(hooks.clone()),
            );
            saga.clone().spawn_ticker(
                ctx.db().clone(),
                hooks,
                events.outbox.clone(),
                Duration::from_millis(250),
            );
            let state = AppState {
                db: ctx.db().clone(),
                // Prices from the catalog; while it is down, the last prices it gave.
                catalog: ctx
                    .client
                    .with_timeout(Duration::from_secs(1))
                    .with_fallback_cache("catalog", 10_000),
                placer: Placer::start(ctx.db().clone(), saga, events.outbox.clone()),
            };
            Ok(router(state))
        })
        .await
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LineInput {
    product_id: Uuid,
    quantity: i64,
}

#[derive(Deserialize)]
struct CatalogPage {
    items: Vec<CatalogProduct>,
}

#[derive(Deserialize)]
struct CatalogProduct {
    id: String,
    name: String,
    price: i64,
    currency: String,
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
    if req.items.is_empty() || req.items.len() > MAX_LINES {
        return Err(ApiError::bad_request(
            "invalid_items",
            format!("an order has 1 to {MAX_LINES} lines"),
        ));
    }
    let mut seen = HashSet::new();
    for line in &req.items {
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return Err(ApiError::bad_request(
                "invalid_quantity",
                format!("quantity must be 1 to {MAX_QUANTITY}"),
            ));
        }
        if !seen.insert(line.product_id) {
            return Err(ApiError::bad_request(
                "duplicate_product",
                "list each product once",
            ));
        }
    }

    // Prices from the catalog, as the caller.
    let mut ids: Vec<String> = req.items.iter().map(|l| l.product_id.to_string()).collect();
    ids.sort();
    let page: CatalogPage = st
        .catalog
        .get(
            "catalog",
            &format!("/api/catalog/products/lookup?ids={}", ids.join(",")),
        )
        .await?;
    let mut lines = Vec::with_capacity(req.items.len());
    let mut total: i64 = 0;
    let mut currency: Option<String> = None;
    for input in &req.items {
        let id = input.product_id.to_string();
        let product =
            page.items.iter().find(|p| p.id == id).ok_or_else(|| {
                ApiError::bad_request("unknown_product", format!("no product {id}"))
            })?;
        match &currency {
            None => currency = Some(product.currency.clone()),
            Some(c) if *c != product.currency => {
                return Err(ApiError::bad_request(
                    "mixed_currencies",
                    "all products of an order must share a currency",
                ));
            }
            Some(_) => {}
        }
        total = product
            .price
            .checked_mul(input.quantity)
            .and_then(|t| t.checked_add(total))
            .ok_or_else(|| {
                ApiError::bad_request("total_too_large", "the order total is too large")
            })?;
        lines.push(Line {
            product_id: id,
            name: product.name.clone(),
            quantity: input.quantity,
            unit_price: product.price,
        });
    }
    let currency = currency.unwrap_or_default();
    if total <= 0 {
        return Err(ApiError::bad_request(
            "invalid_total",
            "the order total must be positive",
        ));
    }

    let order_id = Uuid::now_v7().to_string();
    let placed = OrderEvent::OrderPlaced {
        user_id: caller.id.clone(),
        items: lines.clone(),
        total,
        currency: currency.clone(),
    };
    let data = json!({
        "orderId": order_id,
        "userId": caller.id,
        "items": lines.iter().map(|l| json!({"productId": l.product_id, "quantity": l.quantity})).collect::<Vec<_>>(),
        "total": total,
        "currency": currency,
    });
    let placement = Placement {
        user: caller.id.clone(),
        key,
        order_id: order_id.clone(),
        placed,
        data,
        ctx: REQUEST.try_with(Clone::clone).ok(),
    };
    match st.placer.place(placement).await? {
        Placed::New => {
            tracing::info!(order = %order_id, user = %caller.id, total, "order placed");
            Ok(accepted(&order_id, "PENDING"))
        }
        Placed::Twin(existing) => Ok(accepted(&existing, &status_of(&st.db, &existing).await?)),
    }
}

/// An order priced and checked, ready to be stored.
struct Placement {
    user: String,
    key: Option<String>,
    order_id: String,
    placed: OrderEvent,
    data: Value,
    /// The placing request's context: the saga's first command continues its trace.
    ctx: Option<RequestContext>,
}

enum Placed {
    New,
    /// The same `Idempotency-Key` placed this order before.
    Twin(String),
}

/// An order waiting for the placer, and where its outcome goes.
type Queued = (Placement, oneshot::Sender<Result<Placed, ApiError>>);

/// The most orders stored in one transaction.
const PLACE_BATCH: usize = 64;

/// Stores placed orders. Orders placed at the same moment share one transaction: one commit
/// for all, and each table's last page written once instead of once per order. If any of
/// them fails, that transaction rolls back and each is stored alone, so one order's failure
/// is its own.
#[derive(Clone)]
struct Placer {
    queue: mpsc::Sender<Queued>,
}

impl Placer {
    fn start(db: Db, saga: Arc<Saga>, outbox: Outbox) -> Self {
        let (queue, rx) = mpsc::channel(1024);
        tokio::spawn(place_loop(db, saga, outbox, rx));
        Self { queue }
    }

    async fn place(&self, placement: Placement) -> Result<Placed, ApiError> {
        let (reply, placed) = oneshot::channel();
        let gone = || ApiError::unavailable("the order store is stopping");
        self.queue
            .send((placement, reply))
            .await
            .map_err(|_| gone())?;
        placed.await.map_err(|_| gone())?
    }
}

async fn place_loop(db: Db, saga: Arc<Saga>, outbox: Outbox, mut rx: mpsc::Receiver<Queued>) {
    while let Some(first) = rx.recv().await {
        // The first order wakes this task at once; let the requests that are ready with it
        // reach the queue too.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < PLACE_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if batch.len() > 1
            && let Ok(results) = store_together(&db, &saga, &batch).await
        {
            outbox.wake();
            for ((_, reply), placed) in batch.into_iter().zip(results) {
                let _ = reply.send(Ok(placed));
            }
            continue;
        }
        for (placement, reply) in batch {
            let stored = store_one(&db, &saga, &placement).await;
            if stored.is_ok() {
                outbox.wake();
            }
            let _ = reply.send(stored);
        }
    }
}

async fn store_together(db: &Db, saga: &Saga, batch: &[Queued]) -> Result<Vec<Placed>, ApiError> {
    let mut tx = db.write_tx().await?;
    let mut results = Vec::with_capacity(batch.len());
    for (placement, _) in batch {
        results.push(write_placement(&mut tx, saga, placement).await?);
    }
    tx.commit().await?;
    Ok(results)
}

async fn store_one(db: &Db, saga: &Saga, placement: &Placement) -> Result<Placed, ApiError> {
    let mut tx = db.write_tx().await?;
    let placed = write_placement(&mut tx, saga, placement).await?;
    if let Placed::New = placed {
        tx.commit().await?;
    }
    Ok(placed)
}

/// Writes one order in `tx`, in the context of the request that placed it.
async fn write_placement(
    tx: &mut Tx,
    saga: &Saga,
    placement: &Placement,
) -> Result<Placed, ApiError> {
    let write = async {
        let Placement {
            user,
            key,
            order_id,
            placed,
            data,
            ..
        } = placement;
        if let Some(key) = key {
            // Checked again under the write lock: a concurrent twin may have won (in an
            // earlier transaction, or earlier in this one).
            let twin: Option<(String,)> = tessera::store::query_as(
                "SELECT order_id FROM idempotency WHERE user_id = $1 AND key = $2",
            )
            .bind(user)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some((existing,)) = twin {
                return Ok(Placed::Twin(existing));
            }
            tessera::store::query(
                "INSERT INTO idempotency (user_id, key, order_id) VALUES ($1, $2, $3)",
            )
            .bind(user)
            .bind(key)
            .bind(order_id)
            .execute(&mut **tx)
            .await?;
        }
        aggregate::append(tx, order_id, 0, placed)
            .await
            .map_err(|e| match e {
                aggregate::AppendError::Conflict => ApiError::conflict("conflict", "try again"),
                aggregate::AppendError::Db(e) => e.into(),
            })?;
        outbox::add(
            tx,
            checkout::ORDER_EVENTS,
            &Event::new(checkout::SOURCE, "shop.order.placed", order_id, data),
        )
        .await?;
        saga.start(tx, order_id, data.clone()).await?;
        Ok(Placed::New)
    };
    match placement.ctx.clone() {
        Some(ctx) => REQUEST.scope(ctx, write).await,
        None => write.await,
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
    .fetch_optional(db.pool())
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
    .fetch_all(st.db.pool())
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
         WHERE user_id = $1 AND ($2 IS NULL OR order_id < $2) ORDER BY order_id DESC LIMIT $3",
    )
    .bind(&caller.id)
    .bind(before.as_deref())
    .bind(i64::from(limit) + 1)
    .fetch_all(st.db.pool())
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
    let (events, orders) = projections::rebuild(&st.db).await?;
    tracing::info!(events, orders, by = %caller.id, "projections rebuilt");
    Ok(Json(json!({ "events": events, "orders": orders })))
}
