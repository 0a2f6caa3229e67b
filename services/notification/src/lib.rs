//! Tessera Shop's `notification` service: when an order is confirmed or rejected, the customer
//! is told, exactly once.
//!
//! It consumes `order.events`. Sending goes through the [`Sender`] seam; the default records
//! the message in the service's database, in the same transaction as the inbox record, which
//! is what makes it exactly once. (A sender that talks to an SMTP server is at least once: it
//! would send first and record after.)

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tessera::events::{BoxFuture, Consumer, Event, Handler, HandlerError, Tx};
use tessera::{ApiError, Caller, Db, Json, Migration, Service, unix_now};

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

/// A message for a customer.
#[derive(Debug, Clone)]
pub struct Message {
    pub order_id: String,
    pub user_id: String,
    pub kind: &'static str,
    pub subject: String,
    pub body: String,
}

/// How messages leave.
pub trait Sender: Send + Sync + 'static {
    fn send<'a>(
        &'a self,
        tx: &'a mut Tx,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// Records messages in the database (the outbox of a mail system, for the demo).
pub struct RecordingSender;

impl Sender for RecordingSender {
    fn send<'a>(
        &'a self,
        tx: &'a mut Tx,
        m: &'a Message,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tessera::store::query(
                "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
                 VALUES ($1, $2, $3, $4, 'recorded', $5, $6, $7) ON CONFLICT (order_id, kind) DO NOTHING",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&m.order_id)
            .bind(&m.user_id)
            .bind(m.kind)
            .bind(&m.subject)
            .bind(&m.body)
            .bind(unix_now() as i64)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }
}

pub async fn run() -> anyhow::Result<()> {
    Service::new("notification")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let mut consumer = Consumer::new("order.events", "notification");
            consumer.max_attempts = 10;
            ctx.events().consume(
                consumer,
                OrderOutcomes {
                    sender: Arc::new(RecordingSender),
                },
            );
            Ok(router(ctx.db().clone()))
        })
        .await
}

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/notifications", get(list))
        .with_state(db)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    order_id: String,
    user_id: String,
    #[serde(default)]
    total: i64,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    reason: Option<String>,
}

struct OrderOutcomes {
    sender: Arc<dyn Sender>,
}

impl Handler for OrderOutcomes {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let (kind, confirmed) = match event.ty.as_str() {
                "shop.order.confirmed" => ("order_confirmed", true),
                "shop.order.rejected" => ("order_rejected", false),
                _ => return Ok(()), // other order events are not for customers
            };
            let o: Outcome = event.data_as()?;
            let amount = format!("{}.{:02} {}", o.total / 100, o.total % 100, o.currency);
            let message = if confirmed {
                Message {
                    subject: format!("Your order {} is confirmed", o.order_id),
                    body: format!(
                        "We have your payment of {amount} and your items are on their way."
                    ),
                    order_id: o.order_id,
                    user_id: o.user_id,
                    kind,
                }
            } else {
                let reason = o
                    .reason
                    .unwrap_or_else(|| "it could not be completed".into());
                Message {
                    subject: format!("Your order {} could not be placed", o.order_id),
                    body: format!("We are sorry: {reason}. You have not been charged."),
                    order_id: o.order_id,
                    user_id: o.user_id,
                    kind,
                }
            };
            self.sender.send(tx, &message).await?;
            tracing::info!(order = %message.order_id, kind, "customer notified");
            Ok(())
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct View {
    id: String,
    order_id: String,
    kind: String,
    subject: String,
    body: String,
    created: i64,
}

async fn list(State(db): State<Db>, caller: Caller) -> Result<Json<Vec<View>>, ApiError> {
    let rows: Vec<(String, String, String, String, String, i64)> = tessera::store::query_as(
        "SELECT id, order_id, kind, subject, body, created FROM notifications WHERE user_id = $1 ORDER BY created DESC, id DESC LIMIT 100",
    )
    .bind(&caller.id)
    .fetch_all(db.pool())
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, order_id, kind, subject, body, created)| View {
                id,
                order_id,
                kind,
                subject,
                body,
                created,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use tessera::Db;
    use tessera::store::{query, query_as};

    #[tokio::test]
    async fn notifications_survive_the_move_to_without_rowid() {
        let dir = std::env::temp_dir().join(format!("shop-notification-{}", uuid::Uuid::new_v4()));
        let url = Db::default_url(&dir, "notification");
        let before = Db::open(&url, &MIGRATIONS[..1]).await.unwrap();
        query(
            "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
             VALUES ('n1', 'o1', 'u1', 'order_confirmed', 'log', 's', 'b', 9)",
        )
        .execute(before.pool())
        .await
        .unwrap();
        before.close().await;

        let db = Db::open(&url, MIGRATIONS).await.unwrap();
        let row: (String, String, i64) =
            query_as("SELECT id, body, created FROM notifications WHERE user_id = 'u1'")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(row, ("n1".into(), "b".into(), 9));
        // One notification per order and kind, still.
        assert!(
            query(
                "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
                 VALUES ('n2', 'o1', 'u1', 'order_confirmed', 'log', 's', 'b', 10)",
            )
            .execute(db.pool())
            .await
            .is_err()
        );
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
