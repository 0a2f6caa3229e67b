//! The Tessera control plane. Today: the service registry (`registry.rs`); the event log,
//! configuration and telemetry join it in later issues.
//!
//! It is its own process (`tessera control`), and a server that takes a bound listener and a
//! shutdown future, so tests run it in-process on `127.0.0.1:0`.

pub mod registry;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

pub use registry::Registry;

/// The control plane's HTTP API.
pub fn router(registry: Registry) -> Router {
    registry::routes(registry)
        .route("/health/live", get(|| async { "{\"status\":\"live\"}" }))
        .route("/health/ready", get(|| async { "{\"status\":\"ready\"}" }))
        .route("/metrics", get(tessera::metrics::endpoint))
}

/// Serves the control plane on `listener` until `shutdown` completes. For `settle` after start
/// the registry reports itself as settling (set it to about two heartbeats): instances known
/// to a previous incarnation are registering again, and readers keep their last view.
pub async fn serve(
    listener: TcpListener,
    settle: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tessera::metrics::handle();
    let registry = Registry::new(settle);
    registry.spawn_sweeper(Duration::from_millis(200));
    tracing::info!(address = %listener.local_addr()?, "control plane ready");
    axum::serve(listener, router(registry)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
