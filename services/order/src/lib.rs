//! Tessera Shop's `order` service.
//!
//! - The Order aggregate is event-sourced (`aggregate.rs`): `order_events` keyed by order id
//!   and version, with optimistic concurrency; state is the fold of the events.
//! - Read models (order detail, each user's list) are projections of those events
//!   (`projections.rs`): they subscribe to the aggregate's event store, are updated in the
//!   transaction that appends each event, and are rebuildable from scratch.
//! - Placing an order (`place.rs`) starts the checkout saga (`checkout.rs`), which this
//!   service orchestrates; its replies and timeouts are handled in the background
//!   (`worker.rs`).
//! - Prices come from the catalog, never from the client; an `Idempotency-Key` makes a retried
//!   POST return the same order instead of placing another.
//! - `http.rs` is the API: the router and its handlers.

pub mod aggregate;
pub mod checkout;
pub mod http;
pub mod place;
pub mod projections;
pub mod schema;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tessera::Service;
use tessera::saga::Saga;

use crate::aggregate::Orders;
use crate::checkout::CheckoutHooks;
use crate::http::AppState;
use crate::place::Placer;
use crate::projections::ReadModels;
pub use crate::schema::MIGRATIONS;

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
            let orders = Orders::new(vec![Arc::new(ReadModels)]);
            let hooks = Arc::new(CheckoutHooks {
                orders: orders.clone(),
            });
            worker::start(&ctx, saga.clone(), hooks);
            let outbox = ctx.events().outbox.clone();
            let state = AppState {
                db: ctx.db().clone(),
                // Prices from the catalog; while it is down, the last prices it gave.
                catalog: ctx
                    .client
                    .with_timeout(Duration::from_secs(1))
                    .with_fallback_cache("catalog", 10_000),
                placer: Placer::start(ctx.db().clone(), saga, orders.clone(), move || {
                    outbox.wake()
                }),
                orders,
            };
            Ok(http::router(state))
        })
        .await
}
