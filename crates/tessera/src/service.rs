//! The service runtime: from configuration to a registered, observable HTTP server.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tessera::{Caller, Json, Service};
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     Service::new("hello")
//!         .run(|_ctx| async {
//!             Ok(Router::new().route("/api/hello", get(|caller: Caller| async move {
//!                 Json(serde_json::json!({ "hello": caller.id }))
//!             })))
//!         })
//!         .await
//! }
//! ```
//!
//! [`Service::run`] reads the configuration, opens and migrates the database, builds the
//! router, wraps it in the request middleware (passport, trace, metrics, log line), serves it
//! (and `/metrics` and `/status/*` on the admin listener, `admin.rs`), registers with the
//! control plane and only then reports ready. On SIGTERM or Ctrl-C it
//! reports not-ready, deregisters, stops accepting and drains in-flight requests within
//! `TESSERA_SHUTDOWN_GRACE_MS`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use crate::client::{REQUEST, RequestContext, ServiceClient};
use crate::config::{ConfigError, ServiceConfig, Settings};
use crate::error::ApiError;
use crate::events::consumer::ConsumerEnv;
use crate::events::outbox::Outbox;
use crate::events::{Bus, Consumer, ControlBus, Handler, NatsBus};
use crate::health::Health;
use crate::live::{Declared, Live, Watcher};
use crate::passport::{self, PassportError, PassportKeys};
use crate::registry::{Discovery, Instance, Registrar, Registration};
use crate::saga::{Saga, SagaHooks, Sagas};
use crate::store::{Db, Migration};
use crate::trace::{self, Span, TraceContext};

/// What a service's code gets to build its router.
#[derive(Clone)]
pub struct Context {
    pub config: ServiceConfig,
    /// Every configuration value, for the service's own keys.
    pub settings: Settings,
    db: Option<Db>,
    pub client: ServiceClient,
    pub keys: Arc<PassportKeys>,
    pub health: Health,
    events: Arc<std::sync::OnceLock<Events>>,
    events_stop: tokio::sync::watch::Receiver<bool>,
    /// The system's Redis, when it has one (`TESSERA_SHARED_URL`).
    shared: Option<Arc<tessera_shared::Shared>>,
    /// The settings structs declared live, which follow `tessera config`.
    declared: Declared,
    /// Whether this instance sends mail (`crate::mail::start`): the registry says so.
    pub(crate) mailing: Arc<std::sync::atomic::AtomicBool>,
}

impl Context {
    /// Settings that follow the system's configuration as it changes (`tessera config set`,
    /// `docs/config.md`): `parse` reads them from the values in force now (an error stops the
    /// start, naming the key) and again at each change, which is taken only if it parses;
    /// [`Live::get`] is the current snapshot, [`Live::on_change`] a hook.
    pub fn live<T: Send + Sync + 'static>(
        &self,
        parse: impl Fn(&Settings) -> Result<T, ConfigError> + Send + Sync + 'static,
    ) -> Result<Live<T>, ConfigError> {
        self.declared.declare(parse)
    }

    /// The state this service's replicas share with each other, on the system's Redis; None
    /// on one machine's embedded defaults.
    pub fn shared(&self) -> Option<&Arc<tessera_shared::Shared>> {
        self.shared.as_ref()
    }

    /// A read-through cache named `<service>.<name>` (`tessera_shared::Cache`), entries
    /// living `ttl` at most: on the system's Redis when it has one, shared by every replica
    /// (under keys only this service's Redis user may touch); else in this process's memory.
    /// Invalidate it from the events that change what it holds, consumed in
    /// [`Context::cache_group`]: every replica sees them when each cache is its own.
    pub fn cache(&self, name: &str, ttl: std::time::Duration) -> tessera_shared::Cache {
        let name = format!("{}.{name}", self.config.service);
        match &self.shared {
            Some(shared) => tessera_shared::Cache::shared(shared.clone(), &name, ttl),
            None => tessera_shared::Cache::local(&name, ttl),
        }
    }

    /// The consumer group in which to consume the events that invalidate [`Context::cache`]:
    /// the service's own when the cache is shared (one replica's invalidation serves all),
    /// else one of this instance's own (`<service>.cache.<instance>`), so that every replica
    /// invalidates its own memory.
    pub fn cache_group(&self) -> String {
        match &self.shared {
            Some(_) => self.config.service.clone(),
            None => format!("{}.cache.{}", self.config.service, self.config.instance),
        }
    }

    /// The service's database. Panics if the service declared no migrations, which is a
    /// programming error caught by the first start.
    pub fn db(&self) -> &Db {
        self.db
            .as_ref()
            .expect("Service::migrations was not called, so this service has no database")
    }

    /// Events: the outbox and consumers, started on first use. Panics without a database or a
    /// bus (no `TESSERA_BUS_URL` or `TESSERA_CONTROL_URL`), a configuration error caught at start.
    pub fn events(&self) -> &Events {
        self.events.get_or_init(|| {
            let (Some(db), Some(bus_url)) = (&self.db, &self.config.bus_url) else {
                panic!("events need a database (Service::migrations) and a bus (TESSERA_BUS_URL or TESSERA_CONTROL_URL)");
            };
            let bus: Arc<dyn Bus> = if NatsBus::handles(bus_url) {
                Arc::new(
                    NatsBus::new(bus_url, &self.config.service, &self.config.instance)
                        .expect("the config checked the bus URL")
                        .with_producers(self.config.producers.clone()),
                )
            } else {
                Arc::new(ControlBus::new(bus_url, credential(&self.config)))
            };
            let (outbox, relay) =
                Outbox::start(db.clone(), bus.clone(), self.config.instance.clone(), self.events_stop.clone());
            Events {
                env: ConsumerEnv {
                    db: db.clone(),
                    bus: bus.clone(),
                    instance: self.config.instance.clone(),
                    passport: {
                        let keys = self.keys.clone();
                        let me = format!("service:{}", self.config.service);
                        let roles = ["system".to_string()];
                        Arc::new(move |trace| keys.mint_header(&me, &me, &roles, None, trace))
                    },
                    outbox: outbox.clone(),
                    producers: self.config.producers.clone(),
                    stuck: Default::default(),
                },
                bus,
                outbox,
                stop: self.events_stop.clone(),
                group: self.config.service.clone(),
                sagas: Sagas::default(),
                tasks: Arc::default(),
                relay: Arc::new(std::sync::Mutex::new(Some(relay))),
            }
        })
    }
}

/// A service's access to the bus: wake the outbox after a commit, start consumers.
#[derive(Clone)]
pub struct Events {
    pub bus: Arc<dyn Bus>,
    pub outbox: Outbox,
    env: ConsumerEnv,
    stop: tokio::sync::watch::Receiver<bool>,
    /// The service's own consumer group (its name).
    group: String,
    /// The sagas it orchestrates.
    sagas: Sagas,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    relay: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Events {
    /// The events this service's consumers are stuck on (compensations that keep failing).
    pub fn stuck(&self) -> Vec<crate::events::consumer::StuckEvent> {
        self.env.stuck.list()
    }

    /// Starts a consumer that runs until the service stops.
    pub fn consume(&self, consumer: Consumer, handler: impl Handler) {
        let task = consumer.spawn(self.env.clone(), Arc::new(handler), self.stop.clone());
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Runs `saga`, which this service orchestrates: consumes its replies (in the service's
    /// group), times out its overdue steps every `tick`, and shows it to operators, with
    /// their actions, under `/status/sagas` (the console's sagas page).
    pub fn run_saga(&self, saga: Arc<Saga>, hooks: Arc<dyn SagaHooks>, tick: std::time::Duration) {
        self.consume(
            Consumer::new(saga.reply_topic(), &self.group),
            saga.clone().handler(hooks.clone()),
        );
        saga.clone().spawn_ticker(
            self.env.db.clone(),
            hooks.clone(),
            self.outbox.clone(),
            tick,
        );
        self.sagas.add(saga, hooks);
    }

    /// The sagas this service orchestrates.
    pub fn sagas(&self) -> &Sagas {
        &self.sagas
    }

    /// The database the events are kept in (the service's).
    pub fn db(&self) -> &Db {
        &self.env.db
    }
}

/// A service under construction.
pub struct Service {
    name: &'static str,
    migrations: &'static [Migration],
}

impl Service {
    /// `name` is the default of `TESSERA_SERVICE`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            migrations: &[],
        }
    }

    /// The schema migrations of this service's database; without them it gets none.
    pub fn migrations(mut self, migrations: &'static [Migration]) -> Self {
        self.migrations = migrations;
        self
    }

    /// Runs the service from the process environment until SIGTERM or Ctrl-C. A bad
    /// configuration exits with status 2 and a message naming the key.
    pub async fn run<F, Fut>(self, build: F) -> anyhow::Result<()>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = anyhow::Result<Router>>,
    {
        let settings = Settings::from_env();
        let config = match ServiceConfig::from_settings(&settings, self.name) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                std::process::exit(2);
            }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (TESSERA_LISTEN)", config.listen))?;
        self.serve(config, settings, listener, shutdown_signal(), build)
            .await
    }

    /// Runs on a bound listener until `shutdown` completes.
    pub async fn serve<F, Fut>(
        self,
        config: ServiceConfig,
        settings: Settings,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        build: F,
    ) -> anyhow::Result<()>
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = anyhow::Result<Router>>,
    {
        crate::log::init(&config.service, &config.instance);
        let process = crate::admin::Process::init(&config.instance, &config.version);
        crate::metrics::handle();
        let telemetry = crate::telemetry::start(
            &config.service,
            &config.instance,
            &config.version,
            config
                .control_url
                .as_deref()
                .zip(config.credential.as_ref()),
        )
        .context("telemetry")?;
        let keys = Arc::new(
            PassportKeys::from_spec(&config.passport_keys, &config.system)
                .context("TESSERA_PASSPORT_KEYS")?,
        );
        let db = if self.migrations.is_empty() {
            None
        } else {
            let url = config
                .database_url
                .clone()
                .unwrap_or_else(|| Db::default_url(&config.data_dir, &config.service));
            let mut migrations = self.migrations.to_vec();
            migrations.extend_from_slice(crate::events::MIGRATIONS);
            migrations.extend_from_slice(tessera_mail::MIGRATIONS);
            Some(open_database(&url, &config.database_replicas, &migrations).await?)
        };
        let discovery = match &config.control_url {
            Some(url) => {
                Discovery::for_system(config.registry_url.as_deref(), url, credential(&config))
                    .map_err(|e| anyhow::anyhow!("TESSERA_REGISTRY_URL: {e}"))?
            }
            None => Discovery::fixed([]),
        };
        let client = ServiceClient::new(
            discovery,
            keys.clone(),
            &config.service,
            config.call_timeout,
        );
        let health = Health::default();
        let (stop_events, events_stopped) = tokio::sync::watch::channel(false);
        let shared = match &config.shared_url {
            Some(url) => Some(
                tessera_shared::RedisSettings::parse(url)
                    .and_then(tessera_shared::Shared::new)
                    .map_err(|e| anyhow::anyhow!("TESSERA_SHARED_URL: {e}"))?,
            ),
            None => None,
        };
        // The settings in force: the manifest's (this process's environment) with the control
        // plane's changes on top, followed from here on.
        let watcher = match (&config.control_url, &config.credential) {
            (Some(url), Some(credential)) => Some(Watcher::new(url, credential, &config.service)),
            _ => None,
        };
        let (changes, version) = match &watcher {
            Some(watcher) => watcher.first().await,
            None => Default::default(),
        };
        let declared = Declared::new(&settings, changes, version);
        let settings = declared.settings();
        let ctx = Context {
            declared: declared.clone(),
            shared,
            config: config.clone(),
            settings,
            db: db.clone(),
            client,
            keys: keys.clone(),
            health: health.clone(),
            events: Arc::default(),
            events_stop: events_stopped,
            mailing: Arc::default(),
        };
        let events = ctx.events.clone();
        let mailing = ctx.mailing.clone();
        let admin_router = crate::admin::router(&health, ctx.client.clone());
        let mut app = build(ctx).await?;
        if let Some(db) = &db {
            app = app.merge(crate::status::routes(db.clone(), events.clone()));
        }
        app = app.merge(crate::status::config_routes(declared.clone()));
        let router = app
            .fallback(|| async { ApiError::not_found("no such route") })
            .layer(RequestLayer {
                keys,
                fault_rate: config.fault_rate,
            })
            .merge(health.routes())
            .layer(DefaultBodyLimit::max(config.max_body_bytes));

        let address = listener.local_addr()?;
        let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (TESSERA_ADMIN_LISTEN)",
                    config.admin_listen
                )
            })?;
        let (admin_address, admin) = crate::admin::serve(admin_listener, admin_router, {
            let mut drained = drain_rx.clone();
            async move {
                let _ = drained.wait_for(|d| *d).await;
            }
        })?;
        let tls = tessera_tls::internal::get()
            .map(|tls| (tls.as_ref(), crate::listen::callers_from_env(tls)));
        let server = crate::listen::serve(
            listener,
            router,
            tls,
            async move {
                let _ = drain_rx.wait_for(|d| *d).await;
            },
            std::time::Duration::from_secs(30),
        );
        let server = tokio::spawn(server);

        let registration = match &config.control_url {
            Some(url) => {
                let reg = Registration {
                    instance: Instance {
                        id: config.instance.clone(),
                        service: config.service.clone(),
                        address: address.to_string(),
                        version: config.version.clone(),
                        metadata: BTreeMap::from([
                            ("pid".to_string(), process.pid.to_string()),
                            ("started".to_string(), process.started.to_string()),
                            ("restarts".to_string(), process.restarts.to_string()),
                            (
                                crate::admin::METADATA_KEY.to_string(),
                                admin_address.to_string(),
                            ),
                        ])
                        .into_iter()
                        .chain(sagas_metadata(&events))
                        .chain(
                            mailing
                                .load(std::sync::atomic::Ordering::Relaxed)
                                .then(|| (MAIL_METADATA_KEY.to_string(), "smtp".to_string())),
                        )
                        .collect(),
                        weight: None,
                    },
                    ttl_ms: config.ttl.as_millis() as u64,
                };
                let registrar =
                    Registrar::new(config.registry_url.as_deref(), url, credential(&config))
                        .map_err(|e| anyhow::anyhow!("TESSERA_REGISTRY_URL: {e}"))?;
                // Waits until registered: the control plane may be starting alongside us.
                Some(registrar.register(reg, config.heartbeat).await)
            }
            None => None,
        };
        let following = watcher.map(|w| tokio::spawn(w.follow(declared)));
        health.set_ready(true);
        tracing::info!(address = %address, admin = %admin_address, instance = %config.instance, "ready");

        shutdown.await;
        if let Some(following) = following {
            following.abort();
        }
        tracing::info!("shutting down: deregistering, then draining in-flight requests");
        health.set_ready(false);
        if let Some(registered) = registration {
            registered.leave(std::time::Duration::from_secs(3)).await;
        }
        let _ = drain_tx.send(true);
        match tokio::time::timeout(config.shutdown_grace, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error while draining"),
            Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
            Err(_) => tracing::warn!("drain deadline passed; abandoning in-flight requests"),
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), admin).await;
        // Consumers finish the event in hand; the relay publishes what is pending.
        let _ = stop_events.send(true);
        if let Some(events) = events.get() {
            let tasks =
                std::mem::take(&mut *events.tasks.lock().unwrap_or_else(|e| e.into_inner()));
            for task in tasks {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
            }
            let relay = events
                .relay
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(relay) = relay {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), relay).await;
            }
        }
        if let Some(db) = db {
            db.close().await;
        }
        tracing::info!("stopped");
        telemetry.flush(std::time::Duration::from_secs(2)).await;
        crate::log::flush();
        Ok(())
    }
}

/// The key of the registry metadata that names the sagas an instance orchestrates (comma
/// separated): the control plane asks those instances for them.
pub const SAGAS_METADATA_KEY: &str = "sagas";

/// The key of the registry metadata of an instance that sends mail (`tessera::mail`): the
/// control plane asks those for their queue (`/v1/mail`).
pub const MAIL_METADATA_KEY: &str = "mail";

fn sagas_metadata(events: &std::sync::OnceLock<Events>) -> Option<(String, String)> {
    let names = events.get()?.sagas().names();
    (!names.is_empty()).then(|| (SAGAS_METADATA_KEY.to_string(), names.join(",")))
}

/// Passport, trace, deadline, metrics and one log line, around every request but health. A plain tower layer rather than `axum::middleware::from_fn`: no boxed inner service
/// and no request taken apart and rebuilt per request.
#[derive(Clone)]
struct RequestLayer {
    keys: Arc<PassportKeys>,
    /// `TESSERA_FAULT_RATE`.
    fault_rate: f64,
}

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            keys: self.keys.clone(),
            fault_rate: self.fault_rate,
            inner,
        }
    }
}

#[derive(Clone)]
struct RequestService<S> {
    keys: Arc<PassportKeys>,
    fault_rate: f64,
    inner: S,
}

impl<S> tower::Service<Request> for RequestService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();

        let verified = match req.headers().get(passport::HEADER) {
            None => Err(PassportError::Missing),
            Some(v) => match v.to_str() {
                Ok(t) => self.keys.verify(t).map(|p| (p, v.clone())),
                Err(_) => Err(PassportError::Malformed),
            },
        };
        let caller_span = req
            .headers()
            .get(trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let parent = caller_span.or_else(|| {
            verified
                .as_ref()
                .ok()
                .and_then(|(p, _)| TraceContext::from_trace_id(&p.tid))
        });
        let trace = match parent {
            Some(p) => p.child(),
            None => TraceContext::new_root(),
        };
        // The request's server span: the caller's span (its `traceparent`) is its parent.
        let mut span = Span::open(
            &trace,
            caller_span.map(|c| c.span_id),
            "request",
            trace::Kind::Server,
        );
        let deadline = crate::client::deadline_of(req.headers());
        // How far the caller has seen the database's log (read-your-writes with replicas).
        let read_after = req
            .headers()
            .get(crate::store::session::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::store::session::parse);

        // The handler runs inside the request context (the passport and trace its calls and
        // log lines carry); refusals answer without running it.
        let work = match verified {
            Err(e) => {
                crate::log::in_trace(
                    &trace,
                    || tracing::warn!(reason = %e, path = req.uri().path(), "request refused: passport"),
                );
                Err(ApiError::unauthorized(e.to_string()))
            }
            Ok(_) if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) => {
                // The caller has given up already: do not start work that can no longer matter.
                Err(ApiError::new(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "deadline_exceeded",
                    "the caller's deadline has passed",
                ))
            }
            Ok(_) if self.fault_rate > 0.0 && rand::random::<f64>() < self.fault_rate => {
                Err(ApiError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "fault_injected",
                    "a fault injected on purpose (TESSERA_FAULT_RATE)",
                ))
            }
            Ok((passport, token)) => {
                req.extensions_mut().insert(passport);
                req.extensions_mut().insert(trace);
                let ctx = RequestContext {
                    passport: token,
                    trace,
                    deadline,
                };
                Ok(crate::store::session::scope(
                    read_after,
                    REQUEST.scope(ctx, self.inner.call(req)),
                ))
            }
        };
        Box::pin(async move {
            let response = match work {
                Err(refusal) => refusal.into_response(),
                Ok(work) => {
                    let (result, wrote) = match deadline {
                        None => work.await,
                        Some(d) => tokio::time::timeout_at(d, work).await.unwrap_or_else(|_| {
                            let late = ApiError::new(
                                http::StatusCode::GATEWAY_TIMEOUT,
                                "deadline_exceeded",
                                "the caller's deadline passed",
                            );
                            (Ok(late.into_response()), None)
                        }),
                    };
                    let mut response = match result {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    // What it wrote, for the caller to send back and read it from a replica.
                    if let Some(lsn) = wrote
                        && let Ok(value) =
                            http::HeaderValue::from_str(&crate::store::session::format(lsn))
                    {
                        response
                            .headers_mut()
                            .insert(crate::store::session::HEADER, value);
                    }
                    response
                }
            };
            let elapsed = start.elapsed();
            let status = response.status().as_u16();
            let route = route.as_ref().map_or("unmatched", |m| m.as_str());
            if span.is_recording() {
                span.name_pair(method.as_str(), route);
                span.set("http.request.method", &method);
                span.set("http.route", route);
                span.set("http.response.status_code", status);
                if status >= 500 {
                    span.fail("answered with a server error");
                }
            }
            drop(span);
            crate::metrics::record_request(route, method.as_str(), status, elapsed);
            crate::log::in_trace(&trace, || {
                tracing::info!(
                    target: "request",
                    method = method.as_str(),
                    route,
                    status,
                    latency_ms = elapsed.as_micros() as f64 / 1000.0,
                    "request"
                )
            });
            Ok(response)
        })
    }
}

/// The process's credential, which the config requires wherever there is a control plane.
fn credential(config: &ServiceConfig) -> &crate::identity::Credential {
    config
        .credential
        .as_ref()
        .expect("the config requires a credential with a control plane")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Opens and migrates the service's database. One that cannot be reached yet (starting
/// alongside the service, or down) is waited for, with a log line naming it (its password
/// hidden) and a growing pause; anything else (a wrong password, no such database, a
/// migration that fails) ends the start with the reason.
async fn open_database(
    url: &str,
    replicas: &[String],
    migrations: &[crate::Migration],
) -> anyhow::Result<Db> {
    let key = "TESSERA_DATABASE_URL";
    let mut pause = std::time::Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        match Db::open_replicated(url, replicas, migrations).await {
            Ok(db) => {
                if attempt > 0 {
                    tracing::info!(database = %Db::redact_url(url), "database reachable");
                }
                return Ok(db);
            }
            Err(crate::store::StoreError::Db(e)) if e.is_unavailable() => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(error = %e, attempt, "database unreachable; retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => {
                return Err(anyhow::anyhow!("{e}"))
                    .with_context(|| format!("opening the database ({key})"));
            }
        }
    }
}
