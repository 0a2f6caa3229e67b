//! The Order aggregate, event-sourced: its state is the fold of its events.

use serde::{Deserialize, Serialize};
use tessera::events::{HandlerError, Tx};

use crate::projections;
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
pub async fn load(tx: &mut Tx, id: &str) -> Result<Option<Order>, tessera::store::DbError> {
    let rows: Vec<(String,)> = tessera::store::query_as(
        "SELECT data FROM order_events WHERE order_id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let mut order = None;
    for (data,) in rows {
        let event: OrderEvent =
            serde_json::from_str(&data).map_err(tessera::store::DbError::decode)?;
        order = Order::apply(order, id, &event);
    }
    Ok(order)
}

#[derive(Debug)]
pub enum AppendError {
    /// Someone else appended first: reload and decide again.
    Conflict,
    Db(tessera::store::DbError),
}

impl From<AppendError> for HandlerError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => HandlerError::retry("concurrent update of the order"),
            AppendError::Db(e) => e.into(),
        }
    }
}

/// Appends `event` as version `expected + 1`, and updates the read models, in `tx`.
pub async fn append(
    tx: &mut Tx,
    id: &str,
    expected: i64,
    event: &OrderEvent,
) -> Result<i64, AppendError> {
    let version = expected + 1;
    let at = now_ms();
    let data = serde_json::to_string(event)
        .map_err(|e| AppendError::Db(tessera::store::DbError::encode(e)))?;
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
    projections::apply(tx, id, version, event, at)
        .await
        .map_err(AppendError::Db)?;
    Ok(version)
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
