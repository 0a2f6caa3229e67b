//! Tessera Shop's `notification` service: when an order is confirmed or rejected, the customer
//! is told, exactly once.
//!
//! It consumes `order.events` (`worker.rs`); what a message says and how it leaves (recorded
//! in the database, in the consumer's transaction, hence exactly once) is in `messages.rs`.
//! Customers read theirs through the API (`http.rs`), or as they come on a WebSocket
//! (`live.rs`).

pub mod http;
pub mod live;
pub mod messages;
pub mod schema;
pub mod worker;

use tessera::Service;

pub use crate::messages::{Message, RecordingSender, Sender};
pub use crate::schema::MIGRATIONS;

pub async fn run() -> anyhow::Result<()> {
    Service::new("notification")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let mailing = tessera::mail::start(&ctx)?;
            worker::start(&ctx, mailing);
            Ok(http::router(ctx.db().clone()))
        })
        .await
}
