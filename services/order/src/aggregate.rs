//! The Order aggregate, event-sourced: its state is the fold of its events, kept in
//! `order_events` keyed by order id and version, which is the optimistic concurrency check.
//!
//! The aggregate does not know its read models. They subscribe to it: each is a
//! [`Projection`] handed to the event store ([`Orders`]) when the service starts, and the
//! store tells every one of them each event it appends, in the transaction that appends it, so
//! that events and read models commit together or not at all. A rebuild replays the stored
//! events through the same subscribers. (The read models used to be called from here by name,
//! and imported this file back for the events: a circle that this seam cuts.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera::Db;
use tessera::events::{BoxFuture, HandlerError, Tx};
use tessera::store::DbError;

pub use tessera::unix_now_ms as now_ms;

/// A line of an order, priced by the catalog when the order was placed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum OrderEvent {
    OrderPlaced {
        user_id: String,
        items: Vec<Line>,
        total: i64,
        currency: String,
    },
    StockReserved {},
    PaymentAuthorized {
        payment_id: String,
    },
    OrderConfirmed {},
    OrderRejected {
        reason: String,
    },
}

impl OrderEvent {
    pub fn name(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::StockReserved {} => "StockReserved",
            OrderEvent::PaymentAuthorized { .. } => "PaymentAuthorized",
            OrderEvent::OrderConfirmed {} => "OrderConfirmed",
            OrderEvent::OrderRejected { .. } => "OrderRejected",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Confirmed,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Confirmed => "CONFIRMED",
            Status::Rejected => "REJECTED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: Status,
    pub total: i64,
    pub currency: String,
    pub version: i64,
}

impl Order {
    fn apply(order: Option<Order>, id: &str, event: &OrderEvent) -> Option<Order> {
        match (order, event) {
            (
                None,
                OrderEvent::OrderPlaced {
                    user_id,
                    total,
                    currency,
                    ..
                },
            ) => Some(Order {
                id: id.to_string(),
                user_id: user_id.clone(),
                status: Status::Pending,
                total: *total,
                currency: currency.clone(),
                version: 1,
            }),
            (Some(mut o), e) => {
                o.version += 1;
                match e {
                    OrderEvent::OrderConfirmed {} => o.status = Status::Confirmed,
                    OrderEvent::OrderRejected { .. } => o.status = Status::Rejected,
                    _ => {}
                }
                Some(o)
            }
            (None, _) => None,
        }
    }

    /// Whether `event` may follow the current state.
    pub fn accepts(&self, event: &OrderEvent) -> bool {
        self.status == Status::Pending && !matches!(event, OrderEvent::OrderPlaced { .. })
    }
}

/// Rebuilds an order from its events.
pub async fn load(tx: &mut Tx, id: &str) -> Result<Option<Order>, DbError> {
    let rows: Vec<(String,)> = tessera::store::query_as(
        "SELECT data FROM order_events WHERE order_id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let mut order = None;
    for (data,) in rows {
        let event: OrderEvent = serde_json::from_str(&data).map_err(DbError::decode)?;
        order = Order::apply(order, id, &event);
    }
    Ok(order)
}

#[derive(Debug)]
pub enum AppendError {
    /// Someone else appended first: reload and decide again.
    Conflict,
    Db(DbError),
}

impl From<AppendError> for HandlerError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => HandlerError::retry("concurrent update of the order"),
            AppendError::Db(e) => e.into(),
        }
    }
}

/// An event as the store recorded it: what a projection is told.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    pub order_id: &'a str,
    pub version: i64,
    /// When it was appended (unix ms).
    pub at: i64,
    pub event: &'a OrderEvent,
}

/// A read model kept in step with the orders' events.
pub trait Projection: Send + Sync + 'static {
    /// Forgets everything projected so far (a rebuild then replays every event).
    fn reset<'a>(&'a self, tx: &'a mut Tx) -> BoxFuture<'a, Result<(), DbError>>;

    /// Projects one event, in the transaction that appends it.
    fn apply<'a>(
        &'a self,
        tx: &'a mut Tx,
        event: Recorded<'a>,
    ) -> BoxFuture<'a, Result<(), DbError>>;
}

/// The orders' event store, with the projections that subscribe to it.
#[derive(Clone)]
pub struct Orders {
    projections: Arc<[Arc<dyn Projection>]>,
}

impl Orders {
    pub fn new(projections: Vec<Arc<dyn Projection>>) -> Self {
        Self {
            projections: projections.into(),
        }
    }

    /// Appends `event` as version `expected + 1`, and projects it, in `tx`.
    pub async fn append(
        &self,
        tx: &mut Tx,
        id: &str,
        expected: i64,
        event: &OrderEvent,
    ) -> Result<i64, AppendError> {
        let version = expected + 1;
        let at = now_ms();
        let data = serde_json::to_string(event).map_err(|e| AppendError::Db(DbError::encode(e)))?;
        let inserted = tessera::store::query(
            "INSERT INTO order_events (order_id, version, type, data, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(version)
        .bind(event.name())
        .bind(data)
        .bind(at)
        .execute(&mut **tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if tessera::store::is_unique_violation(&e) => return Err(AppendError::Conflict),
            Err(e) => return Err(AppendError::Db(e)),
        }
        let recorded = Recorded {
            order_id: id,
            version,
            at,
            event,
        };
        self.project(tx, recorded).await.map_err(AppendError::Db)?;
        Ok(version)
    }

    async fn project(&self, tx: &mut Tx, event: Recorded<'_>) -> Result<(), DbError> {
        for projection in self.projections.iter() {
            projection.apply(tx, event).await?;
        }
        Ok(())
    }

    /// Resets every projection and projects every stored event again; returns (events, orders).
    pub async fn rebuild(&self, db: &Db) -> Result<(i64, i64), DbError> {
        let mut tx = db.write_tx().await?;
        for projection in self.projections.iter() {
            projection.reset(&mut tx).await?;
        }
        let rows: Vec<(String, i64, String, i64)> = tessera::store::query_as(
            "SELECT order_id, version, data, at FROM order_events ORDER BY order_id, version",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut orders = 0;
        let events = rows.len() as i64;
        for (id, version, data, at) in rows {
            let event: OrderEvent = serde_json::from_str(&data).map_err(DbError::decode)?;
            if version == 1 {
                orders += 1;
            }
            let recorded = Recorded {
                order_id: &id,
                version,
                at,
                event: &event,
            };
            self.project(&mut tx, recorded).await?;
        }
        tx.commit().await?;
        Ok((events, orders))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_events_into_state() {
        let placed = OrderEvent::OrderPlaced {
            user_id: "u".into(),
            items: vec![],
            total: 10,
            currency: "USD".into(),
        };
        let o = Order::apply(None, "o", &placed).unwrap();
        assert_eq!((o.status, o.version), (Status::Pending, 1));
        assert!(o.accepts(&OrderEvent::StockReserved {}));
        let o = Order::apply(Some(o), "o", &OrderEvent::StockReserved {}).unwrap();
        let o = Order::apply(Some(o), "o", &OrderEvent::OrderConfirmed {}).unwrap();
        assert_eq!((o.status, o.version), (Status::Confirmed, 3));
        assert!(
            !o.accepts(&OrderEvent::OrderRejected { reason: "x".into() }),
            "a final state stays final"
        );
        assert!(Order::apply(None, "o", &OrderEvent::StockReserved {}).is_none());
    }

    #[test]
    fn events_serialize_with_their_type() {
        let e = OrderEvent::OrderRejected {
            reason: "out_of_stock".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "OrderRejected", "reason": "out_of_stock"})
        );
        let p = OrderEvent::OrderPlaced {
            user_id: "u".into(),
            items: vec![],
            total: 1,
            currency: "USD".into(),
        };
        assert_eq!(serde_json::to_value(&p).unwrap()["userId"], "u");
        assert_eq!(serde_json::from_value::<OrderEvent>(v).unwrap(), e);
    }
}
