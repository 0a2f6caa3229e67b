//! Tessera Shop's `inventory` service: stock per product, reserved, released and committed
//! per order.
//!
//! It takes commands from `inventory.commands` (`shop.inventory.reserve`, `.release`,
//! `.commit`; `worker.rs`) and answers saga commands on their reply topic. Every command is
//! idempotent per order id, and stock can never go negative (`stock.rs`). Admins read and set
//! the stock through the API (`http.rs`).

pub mod http;
pub mod schema;
pub mod stock;
pub mod worker;

use tessera::Service;

pub use crate::schema::MIGRATIONS;
pub use crate::worker::COMMANDS;

pub async fn run() -> anyhow::Result<()> {
    Service::new("inventory")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            worker::start(&ctx);
            Ok(http::router(ctx.db().clone()))
        })
        .await
}
