//! Placing an order: check the lines, price them from the catalog, and store the order.
//!
//! Prices come from the catalog, never from the client. Storing an order writes, in one
//! transaction, its `Idempotency-Key`, its first event (and so its read models), the
//! `shop.order.placed` event for the outbox and the start of the checkout saga: a `202` means
//! all of them are stored. Orders placed at the same moment share that transaction (see
//! [`Placer`]).

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tessera::client::{REQUEST, RequestContext};
use tessera::events::{Event, outbox};
use tessera::saga::Saga;
use tessera::store::Tx;
use tessera::store::session;
use tessera::{ApiError, Db, ServiceClient};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::aggregate::{self, Line, OrderEvent, Orders};
use crate::checkout;

const MAX_LINES: usize = 20;
const MAX_QUANTITY: i64 = 1000;

/// A line as the customer asks for it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LineInput {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// 400 unless an order may have these lines: 1 to 20, quantities 1 to 1000, each product once.
pub fn check(items: &[LineInput]) -> Result<(), ApiError> {
    if items.is_empty() || items.len() > MAX_LINES {
        return Err(ApiError::bad_request(
            "invalid_items",
            format!("an order has 1 to {MAX_LINES} lines"),
        ));
    }
    let mut seen = HashSet::new();
    for line in items {
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
    Ok(())
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

/// Lines with the catalog's prices.
pub struct Priced {
    pub lines: Vec<Line>,
    pub total: i64,
    pub currency: String,
}

/// Prices checked lines from the catalog, as the caller.
pub async fn price(catalog: &ServiceClient, items: &[LineInput]) -> Result<Priced, ApiError> {
    let mut ids: Vec<String> = items.iter().map(|l| l.product_id.to_string()).collect();
    ids.sort();
    let page: CatalogPage = catalog
        .get(
            "catalog",
            &format!("/api/catalog/products/lookup?ids={}", ids.join(",")),
        )
        .await?;
    let mut lines = Vec::with_capacity(items.len());
    let mut total: i64 = 0;
    let mut currency: Option<String> = None;
    for input in items {
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
    Ok(Priced {
        lines,
        total,
        currency,
    })
}

/// An order priced and checked, ready to be stored.
pub struct Placement {
    user: String,
    key: Option<String>,
    pub order_id: String,
    placed: OrderEvent,
    data: Value,
    /// The placing request's context: the saga's first command continues its trace.
    ctx: Option<RequestContext>,
}

impl Placement {
    /// A new order of `user`'s (with a new id), in the context of the current request.
    pub fn new(user: &str, key: Option<String>, priced: Priced) -> Self {
        let Priced {
            lines,
            total,
            currency,
        } = priced;
        let order_id = Uuid::now_v7().to_string();
        let data = json!({
            "orderId": order_id,
            "userId": user,
            "items": lines.iter().map(|l| json!({"productId": l.product_id, "quantity": l.quantity})).collect::<Vec<_>>(),
            "total": total,
            "currency": currency,
        });
        let placed = OrderEvent::OrderPlaced {
            user_id: user.to_string(),
            items: lines,
            total,
            currency,
        };
        Self {
            user: user.to_string(),
            key,
            order_id,
            placed,
            data,
            ctx: REQUEST.try_with(Clone::clone).ok(),
        }
    }
}

pub enum Placed {
    New,
    /// The same `Idempotency-Key` placed this order before.
    Twin(String),
}

/// An order waiting for the placer, and where its outcome goes.
/// An order to store, and where to answer: the outcome, and where the commit reached the
/// database's log (for the request to read its own write from a replica).
/// Conflicts an order may meet before its request is answered 503.
const MAX_CONFLICTS: u64 = 50;

type Queued = (
    Placement,
    oneshot::Sender<(Result<Placed, ApiError>, Option<u64>)>,
);

/// The most orders stored in one transaction.
const PLACE_BATCH: usize = 64;

/// Stores placed orders. Orders placed at the same moment share one transaction: one commit
/// for all, and each table's last page written once instead of once per order. If any of
/// them fails, that transaction rolls back and each is stored alone, so one order's failure
/// is its own.
#[derive(Clone)]
pub struct Placer {
    queue: mpsc::Sender<Queued>,
}

/// What storing an order needs.
struct Store {
    db: Db,
    saga: Arc<Saga>,
    orders: Orders,
}

impl Placer {
    /// Starts the task that stores orders; it calls `stored` after each commit (to wake the
    /// outbox's relay).
    pub fn start(
        db: Db,
        saga: Arc<Saga>,
        orders: Orders,
        stored: impl Fn() + Send + 'static,
    ) -> Self {
        let (queue, rx) = mpsc::channel(1024);
        let store = Store { db, saga, orders };
        tokio::spawn(place_loop(store, stored, rx));
        Self { queue }
    }

    pub async fn place(&self, placement: Placement) -> Result<Placed, ApiError> {
        let (reply, placed) = oneshot::channel();
        let gone = || ApiError::unavailable("the order store is stopping");
        self.queue
            .send((placement, reply))
            .await
            .map_err(|_| gone())?;
        let (placed, wrote) = placed.await.map_err(|_| gone())?;
        // Written by the placing task on this request's behalf.
        if let Some(lsn) = wrote {
            tessera::store::session::record(lsn);
        }
        placed
    }
}

async fn place_loop(store: Store, stored: impl Fn(), mut rx: mpsc::Receiver<Queued>) {
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
        if batch.len() > 1 {
            let (together, wrote) = session::scope(None, store.together(&batch)).await;
            if let Ok(results) = together {
                stored();
                for ((_, reply), placed) in batch.into_iter().zip(results) {
                    let _ = reply.send((Ok(placed), wrote));
                }
                continue;
            }
        }
        for (placement, reply) in batch {
            let (outcome, wrote) = session::scope(None, store.one(&placement)).await;
            if outcome.is_ok() {
                stored();
            }
            let _ = reply.send((outcome, wrote));
        }
    }
}

impl Store {
    async fn together(&self, batch: &[Queued]) -> Result<Vec<Placed>, ApiError> {
        let mut tx = self.db.write_tx().await?;
        let mut results = Vec::with_capacity(batch.len());
        for (placement, _) in batch {
            results.push(self.write(&mut tx, placement).await?);
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Stores one order; a conflict with a concurrent transaction (another replica placing
    /// or settling at the same moment) is tried again at once, after a short random pause.
    async fn one(&self, placement: &Placement) -> Result<Placed, ApiError> {
        let mut conflicts = 0;
        loop {
            match self.try_one(placement).await {
                Err(e) if e.is_conflict() && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    let pause = 500 + rand::random::<u64>() % (1000 * conflicts.min(10));
                    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_one(&self, placement: &Placement) -> Result<Placed, ApiError> {
        let mut tx = self.db.write_tx().await?;
        let placed = self.write(&mut tx, placement).await?;
        if let Placed::New = placed {
            tx.commit().await?;
        }
        Ok(placed)
    }

    /// Writes one order in `tx`, in the context of the request that placed it.
    async fn write(&self, tx: &mut Tx, placement: &Placement) -> Result<Placed, ApiError> {
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
            self.orders
                .append(tx, order_id, 0, placed)
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
            self.saga.start(tx, order_id, data.clone()).await?;
            Ok(Placed::New)
        };
        match placement.ctx.clone() {
            Some(ctx) => REQUEST.scope(ctx, write).await,
            None => write.await,
        }
    }
}
