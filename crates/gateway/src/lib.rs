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
//! HTTPS and HTTP/2 (hyper's) feed the same request path (`listen.rs`).

pub mod admin;
pub mod authenticate;
pub mod authorize;
pub mod envelope;
pub mod error;
pub mod files;
pub mod forward;
pub mod forwarded;
pub mod grpc;
pub mod limit;
pub mod listen;
pub mod proxy;
pub mod reload;
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
    /// `TESSERA_REGISTRY_URL`: the registry on etcd, read as the gateway's etcd user; none:
    /// the control plane's.
    pub registry_url: Option<String>,
    /// `TESSERA_SHARED_URL`: the Redis the system's gateways share (`redis://…`); none: each
    /// gateway's own memory.
    pub shared_url: Option<String>,
    /// `TESSERA_CREDENTIAL`: the gateway's own, to read the registry.
    pub credential: tessera::identity::Credential,
    /// The HTTPS listener's certificates (`gateway.tls`, paths resolved), the first the
    /// default; empty when HTTPS is off.
    pub certificates: Vec<tessera_tls::CertificateFiles>,
    /// The manifest's file, to reload the routes from (`reload.rs`); none: they stay.
    pub source: Option<Source>,
}

/// Where the gateway's manifest came from.
pub struct Source {
    pub path: std::path::PathBuf,
    /// The text `manifest` was parsed from.
    pub text: String,
    /// Which of `gateway.replicas` this gateway is.
    pub replica: u32,
}

/// The sockets the gateway serves on, bound by its caller.
pub struct Listeners {
    /// `gateway.listen`: plain HTTP.
    pub plain: TcpListener,
    /// `gateway.tls.listen`: HTTPS, when on.
    pub tls: Option<TcpListener>,
    /// `gateway.admin_listen`.
    pub admin: TcpListener,
}

/// Serves the gateway on its public listeners (`listen.rs`), and its admin endpoints on their
/// own (`admin.rs`), until `shutdown` completes, then drains connections.
pub async fn serve(
    config: GatewayConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        plain: listener,
        tls,
        admin,
    } = listeners;
    tessera::metrics::handle();
    let manifest = &config.manifest;
    // Where the manifest's relative paths start: its own directory.
    let base = config
        .source
        .as_ref()
        .and_then(|s| s.path.parent())
        .unwrap_or(std::path::Path::new(""));
    let keys = PassportKeys::from_spec(&config.passport_keys, &manifest.system.name)
        .context("TESSERA_PASSPORT_KEYS")?;
    let discovery = Discovery::for_system(
        config.registry_url.as_deref(),
        &config.control_url,
        &config.credential,
    )
    .map_err(|e| anyhow::anyhow!("TESSERA_REGISTRY_URL: {e}"))?;
    let service_keys = Arc::new(PassportKeys::from_spec(
        &config.passport_keys,
        &manifest.system.name,
    )?);
    let shared = match &config.shared_url {
        Some(url) => {
            let settings = tessera_shared::RedisSettings::parse(url)
                .map_err(|e| anyhow::anyhow!("TESSERA_SHARED_URL: {e}"))?;
            tracing::info!(redis = %settings.redacted(), "rate limits and revocations shared on redis");
            Some(
                tessera_shared::Shared::new(settings)
                    .map_err(|e| anyhow::anyhow!("TESSERA_SHARED_URL: {e}"))?,
            )
        }
        None => None,
    };
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
        if let Some(shared) = &shared {
            verifier.share_revocations(shared.clone());
        }
        verifier.spawn_key_refresh();
        verifier
    });

    let gateway = Arc::new(Gateway {
        routes: arc_swap::ArcSwap::from_pointee(
            RouteTable::from_manifest(manifest, None, base).map_err(|e| anyhow::anyhow!(e))?,
        ),
        tokens,
        revoke_for: Duration::from_secs(24 * 3600),
        forwarder: Forwarder {
            discovery: discovery.clone(),
            keys,
            pool: Pool::new(256, Duration::from_secs(1)),
            proxies: forwarded::TrustedProxies::new(&manifest.gateway.trusted_proxies),
            timeout: Duration::from_millis(manifest.gateway.upstream_timeout_ms),
            max_response: manifest.gateway.max_response_bytes,
            anonymous: Default::default(),
        },
        tunnel_idle: Duration::from_millis(manifest.gateway.websocket_idle_timeout_ms),
        tunnel_max: Duration::from_millis(manifest.gateway.websocket_max_ms),
        streams: Default::default(),
        shared,
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
    // A gateway that knows no instance can route nothing: wait for the registry a while (an
    // etcd being provisioned takes a moment), then serve anyway (503 until it is read).
    discovery.wait_loaded(Duration::from_secs(15)).await;
    let limits = server::Limits {
        header_timeout: Duration::from_millis(manifest.gateway.header_timeout_ms),
        idle_timeout: Duration::from_millis(manifest.gateway.idle_timeout_ms),
        body_timeout: Duration::from_millis(manifest.gateway.body_timeout_ms),
        min_body_rate: manifest.gateway.min_body_rate,
        max_body: manifest.gateway.max_body_bytes,
        max_connections: manifest.gateway.max_connections,
    };
    let reloader = config.source.map(|source| {
        Arc::new(reload::Reloader::new(
            gateway.clone(),
            source.path,
            source.replica,
            manifest.clone(),
            source.text,
        ))
    });
    if let Some(reloader) = &reloader {
        reloader.clone().spawn_watch();
    }
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin_address = admin.local_addr()?;
    let admin = tokio::spawn(server::serve(
        admin,
        Arc::new(admin::Admin {
            gateway: gateway.clone(),
            reloader,
        }),
        admin::Admin::limits(&limits),
        async move {
            let mut stopped = admin_stopped;
            let _ = stopped.wait_for(|s| *s).await;
        },
        admin::DRAIN,
    ));
    let limits = Arc::new(limits);
    let http2 = Arc::new(manifest.gateway.http2.clone());
    let slots = server::Slots::new(limits.max_connections);
    let protocols = || listen::Protocols {
        limits: limits.clone(),
        http2: http2.clone(),
        slots: slots.clone(),
    };
    // One shutdown for every public listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut public = tokio::task::JoinSet::new();
    let mut plain_handler = None;
    if let (Some(listener), Some(settings)) = (tls, &manifest.gateway.tls) {
        let certificates = Arc::new(tessera_tls::Certificates::load(
            &config.certificates,
            tessera_tls::provider(),
        )?);
        certificates.spawn_reload(Duration::from_millis(settings.reload_ms));
        let tls_config =
            tessera_tls::server_config(certificates, &listen::alpn(&manifest.gateway.http2))?;
        let https_port = listener.local_addr()?.port();
        tracing::info!(address = %listener.local_addr()?, http2 = manifest.gateway.http2.enabled, "HTTPS on");
        plain_handler = listen::plain_handler(settings.plain, https_port);
        public.spawn(listen::serve(
            listener,
            Some(tessera_tls::TlsAcceptor::from(tls_config)),
            gateway.clone(),
            protocols(),
            stopped(),
            DRAIN,
        ));
    }
    tracing::info!(address = %listener.local_addr()?, admin = %admin_address, routes = manifest.routes.len(), "gateway ready");
    match plain_handler {
        Some(redirect) => public.spawn(listen::serve(
            listener,
            None,
            Arc::new(redirect),
            protocols(),
            stopped(),
            DRAIN,
        )),
        None => public.spawn(listen::serve(
            listener,
            None,
            gateway.clone(),
            protocols(),
            stopped(),
            DRAIN,
        )),
    };
    shutdown.await;
    let _ = stop.send(true);
    while public.join_next().await.is_some() {}
    // The admin endpoints answer while the public side drains, and stop after it.
    let _ = stop_admin.send(true);
    let _ = admin.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// How long connections get to finish once the gateway is told to stop.
const DRAIN: Duration = Duration::from_secs(10);
