//! The Tessera control plane: the service registry (`registry.rs`), the embedded event log
//! (`events.rs`), the collector of the system's telemetry (`telemetry.rs`), the services'
//! sagas as the console sees and acts on them (`sagas.rs`), and the console itself
//! (`console.rs`), and the services' settings as they change at run time (`config.rs`).
//!
//! Nobody reaches either without a credential (`auth.rs`), and what each caller may do is
//! the policy's (`policy.rs`, `docs/security.md`).
//!
//! It is its own process (`tessera control`), and a server that takes a bound listener and a
//! shutdown future, so tests run it in-process on `127.0.0.1:0`.

pub mod auth;
pub mod config;
pub mod console;
pub mod durable;
pub mod events;
pub mod gateways;
pub mod mail;
pub mod operate;
pub mod policy;
pub mod registry;
pub mod rollouts;
pub mod sagas;
pub mod telemetry;
#[cfg(test)]
mod testing;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

pub use policy::{Grants, Policy};
pub use registry::Registry;
use tessera::identity::ControlKeys;

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// How long after start the registry reports itself as settling (about two heartbeats):
    /// instances known to a previous incarnation are registering again, and readers keep
    /// their last view meanwhile.
    pub settle: Duration,
    /// Where the event log lives.
    pub data_dir: PathBuf,
    /// Where events are when not in the embedded log: a `nats://` URL (`system.bus`); the
    /// event API then stands in front of NATS JetStream.
    pub bus_url: Option<String>,
    /// Where the registry is when not here: an `etcd://` URL (`system.registry`) as etcd's
    /// `root` user, with which the control plane provisions a user per service and turns
    /// authentication on, then serves the registry API in front of etcd.
    pub registry_url: Option<String>,
    /// The Redis the gateways and services share state on, as its `default` user: the control
    /// plane makes each one's Redis user there (`tessera::shared::keep_provisioned`), and keeps
    /// nothing of its own.
    pub shared_url: Option<String>,
    pub log: events::LogConfig,
    /// The keys that check every caller's credential.
    pub keys: Arc<ControlKeys>,
    /// What each service may do.
    pub policy: Arc<Policy>,
    /// How long and how much telemetry the collector keeps.
    pub retention: telemetry::Retention,
    /// What the collector scrapes for metrics besides the registered instances (none: no
    /// scraping).
    pub scraping: Option<telemetry::Scraping>,
    /// With mutual TLS on: every principal of the system (`service:<name>` for each service,
    /// `gateway`, `supervisor`, `admin`); a process whose certificate names none is refused
    /// at the handshake.
    pub principals: Vec<String>,
    /// The system's passport keys: the control plane calls services' operator routes (their
    /// sagas, for the console) with a passport for the admin who asked. None: it does not.
    pub passport_keys: Option<Arc<tessera::PassportKeys>>,
    /// Each service's settings as the manifest gives them: what `tessera config` changes on
    /// top of.
    pub config_base: std::collections::BTreeMap<String, config::Base>,
    /// The manifest's gateways, at their admin listeners (`tessera reload`).
    pub gateways: Vec<gateways::GatewayAdmin>,
}

/// What the control plane serves behind the credential check.
pub struct Apis {
    pub registry: Registry,
    pub log: events::Log,
    pub telemetry: telemetry::Telemetry,
    pub sagas: sagas::Sagas,
    pub mail: mail::Mail,
    pub config: config::Config,
    pub gateways: gateways::Gateways,
    pub rollouts: rollouts::Rollouts,
}

/// The control plane's HTTP API: the registry, the log and the collector behind the credential
/// check; health, metrics and the console's pages (which hold no data) outside it.
pub fn router(apis: Apis, keys: Arc<ControlKeys>, policy: Arc<Policy>) -> Router {
    guarded(
        registry::routes(apis.registry)
            .merge(events::api::routes(apis.log))
            .merge(telemetry::routes(apis.telemetry))
            .merge(sagas::routes(apis.sagas))
            .merge(mail::routes(apis.mail))
            .merge(config::routes(apis.config))
            .merge(gateways::routes(apis.gateways))
            .merge(rollouts::routes(apis.rollouts)),
        keys,
        policy,
    )
    .route_layer(axum::middleware::from_fn(record))
    .merge(console::routes())
    .route("/health/live", get(|| async { "{\"status\":\"live\"}" }))
    .route("/health/ready", get(|| async { "{\"status\":\"ready\"}" }))
    .route("/metrics", get(tessera::metrics::endpoint))
}

/// `routes` behind the credential check, with the policy at hand for their [`policy::Caller`]s.
pub fn guarded(routes: Router, keys: Arc<ControlKeys>, policy: Arc<Policy>) -> Router {
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            keys,
            auth::authenticate,
        ))
        .route_layer(axum::Extension(policy))
}

/// Request count and latency per route, as every Tessera server records them
/// (`http_server_requests_total`, `http_server_request_duration_seconds`).
async fn record(
    route: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let response = next.run(req).await;
    tessera::metrics::record_request(
        route.as_str(),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The etcd password of `user` (`<prefix>-<name>` for a service or the gateway, `root` for
/// the control plane on an etcd of the runner's own): derived from the control keys, so the
/// runner can hand each process its own.
pub fn etcd_password(keys: &ControlKeys, user: &str) -> String {
    keys.secret_for(&format!("etcd:{user}"))
}

/// Every service of the system, with its engine password.
fn each_service(
    config: &ControlConfig,
    password: impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let with_password = |name: String| {
        let pw = password(&name);
        (name, pw)
    };
    config
        .policy
        .services()
        .into_iter()
        .map(with_password)
        .collect()
}

/// The Redis password of `user` (`<prefix>-<name>`, or `default` for a Redis of the runner's
/// own): derived from the control keys, as [`etcd_password`].
pub fn redis_password(keys: &ControlKeys, user: &str) -> String {
    keys.secret_for(&format!("redis:{user}"))
}

/// Keeps Redis's users (the gateways', one per service) made; the processes that share state
/// there connect as theirs, and go on without Redis until they can.
fn spawn_redis_provisioning(url: &str, config: &ControlConfig) -> anyhow::Result<()> {
    let settings = tessera::shared::RedisSettings::parse(url)
        .map_err(|e| anyhow::anyhow!("TESSERA_SHARED_URL: {e}"))?;
    if !settings.is_default_user() {
        tracing::warn!(
            "the shared state's Redis URL names a user of its own: its users are not provisioned here (each process's `<prefix>-<name>` user must exist)"
        );
        return Ok(());
    }
    let password = |name: &str| redis_password(&config.keys, &settings.user_of(name));
    let services = each_service(config, password);
    let gateway = password("gateway");
    tokio::spawn(tessera::shared::keep_provisioned(
        settings, gateway, services,
    ));
    Ok(())
}

/// Makes etcd's users and roles (a user per service, the gateway a reader) and turns its
/// authentication on, retrying until etcd answers.
fn spawn_provisioning(settings: &tessera::registry::etcd::EtcdSettings, config: &ControlConfig) {
    let password = |name: &str| etcd_password(&config.keys, &settings.user_of(name));
    let services = each_service(config, password);
    let readers = vec![("gateway".to_string(), password("gateway"))];
    let settings = settings.clone();
    tokio::spawn(async move {
        let mut told = false;
        loop {
            match tessera::registry::etcd::provision(&settings, &services, &readers).await {
                Ok(()) => break,
                Err(e) if !told => {
                    tracing::warn!(error = %e, "cannot provision etcd's users yet; retrying");
                    told = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::info!(
            services = services.len(),
            "etcd's users and roles are provisioned"
        );
    });
}

/// Serves the control plane on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tessera::metrics::handle();
    let log = match config.bus_url.as_deref() {
        Some(url) if tessera::events::NatsBus::handles(url) => {
            let bus = Arc::new(
                tessera::events::NatsBus::new(url, "control", "control")
                    .map_err(|e| anyhow::anyhow!("TESSERA_BUS_URL: {e}"))?,
            );
            // The system's streams and its services' consumer groups, declared once NATS
            // answers (services may not make streams).
            let declaring = bus.clone();
            let (topics, groups) = (config.policy.topics(), config.policy.consumer_groups());
            tokio::spawn(async move {
                let mut told = false;
                loop {
                    let declared = match declaring.declare(&topics).await {
                        Ok(()) => declaring.declare_groups(&groups).await,
                        Err(e) => Err(e),
                    };
                    let Err(e) = declared else { break };
                    if !told {
                        tracing::warn!(error = %e, "cannot declare the system's streams and groups on NATS yet; retrying");
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                tracing::info!(
                    streams = topics.len(),
                    groups = groups.len(),
                    "the system's streams and consumer groups are declared on NATS"
                );
            });
            events::Log::Nats(bus)
        }
        _ => events::Log::Embedded(
            events::EventLog::open(&config.data_dir, config.log.clone()).await?,
        ),
    };
    if let Some(url) = config.shared_url.as_deref() {
        spawn_redis_provisioning(url, &config)?;
    }
    let registry = match config.registry_url.as_deref() {
        Some(url) => {
            let settings = tessera::registry::etcd::EtcdSettings::parse(url)
                .map_err(|e| anyhow::anyhow!("TESSERA_REGISTRY_URL: {e}"))?;
            if settings.user() == Some("root") {
                spawn_provisioning(&settings, &config);
            } else {
                tracing::warn!(
                    user = settings.user().unwrap_or("(none)"),
                    "the registry's etcd URL names no root user: its users are not provisioned here (each process's `<prefix>-<name>` user must exist)"
                );
            }
            tracing::info!(registry = %settings.redacted(), "the registry is on etcd");
            Registry::on_etcd(settings)
        }
        None => {
            let registry = Registry::new(config.settle);
            registry.spawn_sweeper(Duration::from_millis(200));
            registry
        }
    };
    let tls = tessera::tls::internal::get().map(|tls| {
        let known = config
            .principals
            .iter()
            .map(|p| tls.identity_of(p))
            .collect();
        (tls.as_ref(), known)
    });
    tracing::info!(address = %listener.local_addr()?, mutual_tls = tls.is_some(), "control plane ready");
    let telemetry = telemetry::Telemetry::open(
        &config.data_dir,
        config.retention,
        Some(registry.clone()),
        config.scraping.clone(),
    )
    .await?;
    let operator = operate::Operator::new(config.passport_keys);
    let sagas = sagas::Sagas::new(registry.clone(), operator.clone());
    let mail = mail::Mail::new(registry.clone(), operator.clone());
    let gateways = gateways::Gateways::new(config.gateways, operator.clone());
    // Decisions kept on the registry's etcd when there is one, else in the state directory.
    let durable = durable::Durable::for_system(&config.data_dir, config.registry_url.as_deref())?;
    let rollouts = rollouts::Rollouts::open(durable.clone(), registry.clone()).await?;
    let settings = config::Config::open_in(
        durable,
        &config.data_dir,
        config.config_base,
        registry.clone(),
        operator,
    )
    .await?;
    let apis = Apis {
        registry,
        log,
        telemetry,
        sagas,
        mail,
        config: settings,
        gateways,
        rollouts,
    };
    let router = router(apis, config.keys, config.policy);
    tessera::listen::serve(listener, router, tls, shutdown, Duration::from_secs(10)).await?;
    Ok(())
}
