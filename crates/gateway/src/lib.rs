//! The Tessera gateway: the one door into the system.
//!
//! Per request (`proxy.rs`, a composition of one file per stage): match a route by path prefix
//! (`routes.rs`), take from its rate limits (`limit.rs`), verify the client's access token
//! (`authenticate.rs`, `tokens.rs`, cached until it expires), check the route's roles
//! (`authorize.rs`), mint a passport and forward to a live instance through its breaker,
//! bulkhead and retries (`forward.rs`, `upstream.rs`), wrap the answer in the envelope
//! (`wrap.rs`, `envelope.rs`), and write one access-log line. It is its own HTTP/1.1
//! server and client (`tessera_http1::server`, `tessera_http1::pool`), both reading heads in
//! place (`tessera_http1::fields`): no header map, no framework router on the hot path.

pub mod admin;
pub mod authenticate;
pub mod authorize;
pub mod envelope;
pub mod error;
pub mod forward;
pub mod forwarded;
pub mod limit;
pub mod proxy;
pub mod routes;
#[cfg(test)]
mod testing;
pub mod tokens;
pub mod upstream;
pub mod wrap;

/// The HTTP/1.1 parts the gateway is built on: the server core, the client, the fields.
pub use tessera_http1::{fields, pool, server};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tessera::ServiceClient;
use tessera::passport::PassportKeys;
use tessera::registry::Discovery;
use tessera_manifest::Manifest;
use tokio::net::TcpListener;

use crate::forward::Forwarder;
use crate::pool::Pool;
use crate::proxy::Gateway;
use crate::routes::RouteTable;
use crate::tokens::TokenVerifier;

/// Everything the gateway needs to start.
pub struct GatewayConfig {
    pub manifest: Manifest,
    /// `TESSERA_PASSPORT_KEYS`.
    pub passport_keys: String,
    pub control_url: String,
    /// `TESSERA_CREDENTIAL`: the gateway's own, to read the registry.
    pub credential: tessera::identity::Credential,
}

/// Serves the gateway on `listener`, and its admin endpoints on `admin` (`admin.rs`), until
/// `shutdown` completes, then drains connections.
pub async fn serve(
    config: GatewayConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tessera::metrics::handle();
    let manifest = &config.manifest;
    let keys = PassportKeys::from_spec(&config.passport_keys, &manifest.system.name)
        .context("TESSERA_PASSPORT_KEYS")?;
    let discovery = Discovery::start(&config.control_url, &config.credential);
    let service_keys = Arc::new(PassportKeys::from_spec(
        &config.passport_keys,
        &manifest.system.name,
    )?);
    let tokens = manifest.gateway.tokens.clone().map(|t| {
        let client = ServiceClient::new(
            discovery.clone(),
            service_keys.clone(),
            "gateway",
            Duration::from_secs(5),
        );
        let feed = ServiceClient::new(
            discovery.clone(),
            service_keys.clone(),
            "gateway",
            Duration::from_secs(30),
        );
        let verifier = TokenVerifier::new(t, client);
        verifier.spawn_revocation_feed(feed);
        verifier.spawn_key_refresh();
        verifier
    });

    let gateway = Arc::new(Gateway {
        routes: RouteTable::new(&manifest.routes),
        tokens,
        revoke_for: Duration::from_secs(24 * 3600),
        forwarder: Forwarder {
            upstreams: upstream::build(manifest),
            discovery: discovery.clone(),
            keys,
            pool: Pool::new(256, Duration::from_secs(1)),
            proxies: forwarded::TrustedProxies::new(&manifest.gateway.trusted_proxies),
            timeout: Duration::from_millis(manifest.gateway.upstream_timeout_ms),
            max_response: manifest.gateway.max_response_bytes,
        },
    });
    let sweeper = Arc::downgrade(&gateway);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            match sweeper.upgrade() {
                Some(gateway) => gateway.forwarder.pool.sweep(),
                None => break,
            }
        }
    });
    discovery.wait_loaded(Duration::from_secs(5)).await;
    let limits = server::Limits {
        header_timeout: Duration::from_millis(manifest.gateway.header_timeout_ms),
        idle_timeout: Duration::from_millis(manifest.gateway.idle_timeout_ms),
        body_timeout: Duration::from_millis(manifest.gateway.body_timeout_ms),
        min_body_rate: manifest.gateway.min_body_rate,
        max_body: manifest.gateway.max_body_bytes,
        max_connections: manifest.gateway.max_connections,
    };
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin_address = admin.local_addr()?;
    let admin = tokio::spawn(server::serve(
        admin,
        Arc::new(admin::Admin {
            gateway: gateway.clone(),
        }),
        admin::Admin::limits(&limits),
        async move {
            let mut stopped = admin_stopped;
            let _ = stopped.wait_for(|s| *s).await;
        },
        admin::DRAIN,
    ));
    tracing::info!(address = %listener.local_addr()?, admin = %admin_address, routes = manifest.routes.len(), "gateway ready");
    server::serve(listener, gateway, limits, shutdown, Duration::from_secs(10)).await;
    // The admin endpoints answer while the public side drains, and stop after it.
    let _ = stop_admin.send(true);
    let _ = admin.await;
    tracing::info!("gateway stopped");
    Ok(())
}
