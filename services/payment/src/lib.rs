//! Tessera Shop's `payment` service: authorizes orders through the external payment provider.
//!
//! Commands arrive on `payment.commands`: `shop.payment.authorize` records a `pending`
//! payment; `shop.payment.cancel` (the saga's compensation) turns it into `voiding` or
//! `cancelled`. A worker, outside any transaction, calls the provider for each due payment
//! with the order id as the idempotency key, then records the outcome and replies to the saga
//! in one transaction (one for all the outcomes that arrived together). So, whatever is
//! retried or redelivered:
//! - there is at most one charge per order (the provider dedups by key);
//! - a payment the saga gave up on is voided at the provider, even if the charge went through
//!   after all (a timeout does not say it did not), so a rejected order is never charged.
//!
//! `commands.rs` records the commands, `worker.rs` talks to the provider, `http.rs` is the API.

pub mod commands;
pub mod config;
pub mod http;
pub mod schema;
pub mod worker;

use tessera::Service;

pub use crate::commands::COMMANDS;
pub use crate::config::PaymentConfig;
pub use crate::schema::MIGRATIONS;

pub async fn run() -> anyhow::Result<()> {
    Service::new("payment")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let config = PaymentConfig::from_settings(&ctx.settings)?;
            worker::start(&ctx, config);
            Ok(http::router(ctx.db().clone()))
        })
        .await
}
