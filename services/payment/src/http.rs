//! The payment API: a customer reads their payments, an admin everyone's.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tessera::{ApiError, Caller, Db, Json, Query};

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/payments", get(list))
        .with_state(db)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    order_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentView {
    order_id: String,
    amount: i64,
    currency: String,
    status: String,
    reason: Option<String>,
}

async fn list(
    State(db): State<Db>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<PaymentView>>, ApiError> {
    let admin = caller.has_role("admin");
    type Row = (String, String, i64, String, String, Option<String>);
    // Each filter by an index: one order by its key, a user's by (user, updated).
    let rows: Vec<Row> = match (&q.order_id, admin) {
        (Some(order_id), _) => {
            tessera::store::query_as(
                "SELECT order_id, user_id, amount, currency, status, reason FROM payments
                 WHERE order_id = $1 AND ($2 OR user_id = $3)",
            )
            .bind(order_id)
            .bind(admin)
            .bind(&caller.id)
            .fetch_all(db.read())
            .await?
        }
        (None, false) => {
            tessera::store::query_as(
                "SELECT order_id, user_id, amount, currency, status, reason FROM payments
                 WHERE user_id = $1 ORDER BY updated DESC LIMIT 100",
            )
            .bind(&caller.id)
            .fetch_all(db.read())
            .await?
        }
        (None, true) => {
            tessera::store::query_as(
                "SELECT order_id, user_id, amount, currency, status, reason FROM payments
                 ORDER BY updated DESC LIMIT 100",
            )
            .fetch_all(db.read())
            .await?
        }
    };
    Ok(Json(
        rows.into_iter()
            .map(
                |(order_id, _, amount, currency, status, reason)| PaymentView {
                    order_id,
                    amount,
                    currency,
                    status,
                    reason,
                },
            )
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use serde_json::{Value, json};
    use tessera::events::Event;
    use tessera::testing::{ADMIN, ANN, App, BOB, Who, handle};
    use tokio::sync::Notify;

    use super::*;
    use crate::commands::Commands;
    use crate::schema::MIGRATIONS;

    /// The router on a fresh database, with the helpers below.
    struct Payments(App);

    async fn payments() -> Payments {
        Payments(App::new("payment", MIGRATIONS, router).await)
    }

    impl Payments {
        async fn list(&self, who: Who<'_>, query: &str) -> (StatusCode, Value) {
            self.0
                .call(who, "GET", &format!("/api/payments{query}"), None)
                .await
        }

        /// The (orderId, amount, status) of each payment `who` sees, sorted by order.
        async fn seen(&self, who: Who<'_>, query: &str) -> Vec<(String, i64, String)> {
            let (status, list) = self.list(who, query).await;
            assert_eq!(status, StatusCode::OK, "{list}");
            let mut seen: Vec<(String, i64, String)> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["orderId"].as_str().unwrap().to_string(),
                        p["amount"].as_i64().unwrap(),
                        p["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            seen.sort();
            seen
        }

        /// Runs one `payment.commands` command as the consumer would.
        async fn command(&self, ty: &str, order: &str, user: &str, total: i64) {
            let commands = Commands {
                wake: Arc::new(Notify::new()),
            };
            let data =
                json!({ "orderId": order, "userId": user, "total": total, "currency": "EUR" });
            let event = Event::new("/shop/order", ty, order, data);
            handle(&self.0.db, &commands, &event).await;
        }
    }

    fn row(order: &str, amount: i64, status: &str) -> (String, i64, String) {
        (order.to_string(), amount, status.to_string())
    }

    #[tokio::test]
    async fn customers_see_their_own_payments_and_admins_all() {
        let p = payments().await;
        p.command("shop.payment.authorize", "o1", "ann", 1250).await;
        p.command("shop.payment.authorize", "o2", "bob", 700).await;
        p.command("shop.payment.authorize", "o3", "ann", 0).await; // refused: no payment
        p.command("shop.payment.cancel", "o1", "ann", 1250).await;
        p.command("shop.payment.cancel", "o4", "ann", 300).await; // before its authorize
        p.command("shop.payment.authorize", "o4", "ann", 300).await;

        let ann = [row("o1", 1250, "voiding"), row("o4", 300, "cancelled")];
        assert_eq!(p.seen(ANN, "").await, ann);
        assert_eq!(p.seen(ANN, "?orderId=o1").await, ann[..1]);
        assert_eq!(p.seen(ANN, "?orderId=o2").await, [], "Bob's payment");
        assert_eq!(p.seen(BOB, "").await, [row("o2", 700, "pending")]);
        assert_eq!(
            p.seen(ADMIN, "").await,
            [ann[0].clone(), row("o2", 700, "pending"), ann[1].clone()]
        );
        assert_eq!(
            p.seen(ADMIN, "?orderId=o2").await,
            [row("o2", 700, "pending")]
        );
    }

    #[tokio::test]
    async fn anonymous_callers_are_refused() {
        let p = payments().await;
        let (status, body) = p.list(("anonymous", &[]), "").await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &json!("unauthenticated"))
        );
    }
}
