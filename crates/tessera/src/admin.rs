//! A service's admin listener: `/metrics` and `/status/resilience` (and `/health/*` again),
//! on an address of its own, loopback by default.
//!
//! What they tell (request counts per route, the client's breakers and the instances it
//! calls) is for the operator and the platform's tools, and the main port answers nothing but
//! `/health/*` without a passport (`docs/passport.md`). A listener of their own keeps them off
//! it by where they are bound, with no passport to mint for a scraper. Its address is
//! `TESSERA_ADMIN_LISTEN` (the runner, or an operator, may set it; by default a free loopback
//! port), and the instance registers it as its `admin` metadata, so tools find it in the
//! registry.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::ServiceClient;
use crate::health::Health;

/// The key of the instance's registry metadata that holds its admin address.
pub const METADATA_KEY: &str = "admin";

/// The admin endpoints.
pub fn router(health: &Health, client: ServiceClient) -> Router {
    health
        .routes()
        .route("/metrics", get(crate::metrics::endpoint))
        .route(
            "/status/resilience",
            get(move || {
                let status = client.status();
                async move { axum::Json(status) }
            }),
        )
}

/// Serves `router` on `listener` until `stop` completes; the address it serves on.
pub fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "admin listener failed");
        }
    });
    Ok((address, task))
}
