//! Tessera Shop's `catalog` service: products, browsed by anyone, managed by admins.
//!
//! - `http.rs`: the API (the router and its handlers), with keyset pagination.
//! - `products.rs`: a product, and what a new or changed one must be.
//! - `schema.rs`: the database, with a demo catalog.

pub mod http;
pub mod products;
pub mod schema;

use tessera::Service;

pub use crate::schema::MIGRATIONS;

pub async fn run() -> anyhow::Result<()> {
    Service::new("catalog")
        .migrations(MIGRATIONS)
        .run(|ctx| async move { Ok(http::router(ctx.db().clone())) })
        .await
}
