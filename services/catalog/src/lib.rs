//! Tessera Shop's `catalog` service: products, browsed by anyone, managed by admins.
//!
//! - `http.rs`: the API (the router and its handlers), with keyset pagination; lists and
//!   lookups read through the catalog's cache.
//! - `products.rs`: a product, and what a new or changed one must be.
//! - `worker.rs`: the catalog's own product events, which invalidate its cache.
//! - `schema.rs`: the database, with a demo catalog.

pub mod http;
pub mod products;
pub mod schema;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tessera::Service;

pub use crate::schema::MIGRATIONS;

/// How long a cached list or product lives at most (an invalidation ends it sooner).
const CACHE_TTL: Duration = Duration::from_secs(300);

pub async fn run() -> anyhow::Result<()> {
    Service::new("catalog")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let cache = Arc::new(ctx.cache("products", CACHE_TTL));
            let events = ctx.events();
            worker::start(&ctx, cache.clone());
            let outbox = events.outbox.clone();
            Ok(http::router(http::AppState {
                db: ctx.db().clone(),
                cache,
                wake: Arc::new(move || outbox.wake()),
            }))
        })
        .await
}
