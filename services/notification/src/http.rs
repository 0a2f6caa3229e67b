//! The notification API: a signed-in customer reads the messages sent to them, or hears
//! them as they come (`live.rs`).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use tessera::{ApiError, Caller, Db, Json};

use crate::live::{Feed, Notifications};

pub fn router(db: Db) -> Router {
    let feed = Feed::start(db.clone(), Notifications);
    Router::new()
        .route("/api/notifications", get(list))
        .with_state(db)
        .merge(
            Router::new()
                .route(
                    "/api/notifications/live",
                    get(tessera::feed::live::<Notifications>),
                )
                .with_state(feed),
        )
}

/// One message, as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub id: String,
    pub order_id: String,
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub created: i64,
}

/// A message as its columns are read: id, order_id, kind, subject, body, created.
pub type ViewRow = (String, String, String, String, String, i64);

impl From<ViewRow> for View {
    fn from((id, order_id, kind, subject, body, created): ViewRow) -> Self {
        Self {
            id,
            order_id,
            kind,
            subject,
            body,
            created,
        }
    }
}

async fn list(State(db): State<Db>, caller: Caller) -> Result<Json<Vec<View>>, ApiError> {
    let rows: Vec<ViewRow> = tessera::store::query_as(
        "SELECT id, order_id, kind, subject, body, created FROM notifications WHERE user_id = $1 ORDER BY created DESC, id DESC LIMIT 100",
    )
    .bind(&caller.id)
    .fetch_all(db.read())
    .await?;
    Ok(Json(rows.into_iter().map(View::from).collect()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use serde_json::{Value, json};
    use tessera::events::Event;
    use tessera::testing::{App, handle};

    use super::*;
    use crate::messages::RecordingSender;
    use crate::schema::MIGRATIONS;
    use crate::worker::OrderOutcomes;

    /// The router on a fresh database.
    async fn notifications() -> App {
        App::new("notification", MIGRATIONS, router).await
    }

    /// `who`'s notifications, asked as a customer.
    async fn inbox(n: &App, who: &str) -> (StatusCode, Value) {
        n.call((who, &["user"]), "GET", "/api/notifications", None)
            .await
    }

    /// Delivers one `order.events` event to the consumer's handler.
    async fn deliver(n: &App, ty: &str, data: Value) {
        let outcomes = OrderOutcomes {
            sender: Arc::new(RecordingSender),
        };
        let event = Event::new("/shop/order", ty, "o", data);
        handle(&n.db, &outcomes, &event).await;
    }

    fn texts(list: &Value) -> Vec<(&str, &str, &str, &str)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["orderId"].as_str().unwrap(),
                    n["kind"].as_str().unwrap(),
                    n["subject"].as_str().unwrap(),
                    n["body"].as_str().unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn customers_read_their_own_messages_once_each() {
        let n = notifications().await;
        let confirmed =
            json!({ "orderId": "o1", "userId": "ann", "total": 1250, "currency": "EUR" });
        deliver(&n, "shop.order.confirmed", confirmed.clone()).await;
        // Redelivered: still one message.
        deliver(&n, "shop.order.confirmed", confirmed).await;
        deliver(
            &n,
            "shop.order.rejected",
            json!({ "orderId": "o2", "userId": "ann", "reason": "out_of_stock" }),
        )
        .await;
        deliver(
            &n,
            "shop.order.placed",
            json!({ "orderId": "o3", "userId": "ann", "total": 1, "currency": "EUR" }),
        )
        .await;
        deliver(
            &n,
            "shop.order.rejected",
            json!({ "orderId": "o4", "userId": "bob" }),
        )
        .await;

        let (status, list) = inbox(&n, "ann").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            texts(&list),
            [
                (
                    "o2",
                    "order_rejected",
                    "Your order o2 could not be placed",
                    "We are sorry: out_of_stock. You have not been charged."
                ),
                (
                    "o1",
                    "order_confirmed",
                    "Your order o1 is confirmed",
                    "We have your payment of 12.50 EUR and your items are on their way."
                ),
            ],
            "newest first, nothing for a placed order, nothing of Bob's"
        );
        let (_, list) = inbox(&n, "bob").await;
        assert_eq!(
            texts(&list),
            [(
                "o4",
                "order_rejected",
                "Your order o4 could not be placed",
                "We are sorry: it could not be completed. You have not been charged."
            )]
        );
    }

    #[tokio::test]
    async fn anonymous_callers_have_no_messages() {
        let n = notifications().await;
        let (status, body) = inbox(&n, "anonymous").await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &json!("unauthenticated"))
        );
    }
}
