//! `tessera`: runs a whole system from its manifest, and the platform's own processes.

mod config;
mod control;
mod deploy;
mod engine;
mod env;
mod etcd;
mod generations;
mod human;
mod keys;
mod mail;
mod nats;
mod output;
mod postgres;
mod redis;
mod reload;
mod rollout;
mod supervisor;
mod telemetry;
mod tls;
mod up;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tessera::identity::{Credential, Principal};
use tessera_manifest::Manifest;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Run and inspect a Tessera system")]
struct Cli {
    /// The system manifest.
    #[arg(long, short, global = true, default_value = "tessera.toml")]
    manifest: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// Which of `gateway.replicas` a gateway process is (from 0), as `tessera up` tells it.
pub const GATEWAY_INDEX_ENV: &str = "TESSERA_GATEWAY_INDEX";

#[derive(Subcommand)]
enum Command {
    /// Build (if the manifest says how) and run the whole system until Ctrl-C.
    Up {
        /// Skip the manifest's build step.
        #[arg(long)]
        no_build: bool,
        /// Where the services keep their data: `embedded` (each its SQLite file, or the
        /// manifest's database URLs), or `postgres` (a local PostgreSQL cluster under the state
        /// directory, started and stopped with the system; docs/databases.md).
        #[arg(long, value_enum, default_value_t = up::Profile::Embedded)]
        profile: up::Profile,
        /// The port of the local PostgreSQL (`--profile postgres`).
        #[arg(long, default_value_t = 15432)]
        postgres_port: u16,
        /// The port of the local NATS (`--profile distributed`).
        #[arg(long, default_value_t = 14222)]
        nats_port: u16,
        /// The client port of the local etcd (`--profile distributed`; its peer port is the
        /// next one).
        #[arg(long, default_value_t = 12379)]
        etcd_port: u16,
        /// The port of the local Redis (`--profile distributed`).
        #[arg(long, default_value_t = 16379)]
        redis_port: u16,
        /// Write the processes' log lines as the JSON they are, also in a terminal (they are
        /// written for a person there otherwise).
        #[arg(long)]
        json: bool,
    },
    /// Show the registered instances of a running system.
    Status,
    /// Draw a trace's waterfall (every span, parent to child, on a time axis) and its log
    /// lines, from the control plane's collector.
    Trace { trace_id: String },
    /// Show the system's log lines from the control plane's collector, oldest first.
    Logs {
        /// Only this service's.
        service: Option<String>,
        /// Only this trace's.
        #[arg(long)]
        trace: Option<String>,
        /// Only lines at least this severe: trace, debug, info, warn, error.
        #[arg(long)]
        level: Option<String>,
        /// Only lines whose message contains this.
        #[arg(long)]
        grep: Option<String>,
        /// How many of the latest lines.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: u32,
        /// Keep printing new lines as they arrive.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run the control plane (started by `up`).
    Control,
    /// Run the gateway (started by `up`).
    Gateway,
    /// Print the control-plane credential of a principal (`service:<name>`, `gateway`,
    /// `supervisor`, `admin`), for a process started by other means than `up`.
    Credential { principal: String },
    /// Print the whole environment `up` would give a principal's process (`control`,
    /// `gateway`, `service:<name>`, …) as `KEY='value'` lines: to start it by other means, on
    /// another host for one (its certificate and key files are paths in the state directory).
    Env { principal: String },
    /// Reload every gateway's routes from the manifest, without a restart (`docs/gateway.md`).
    Reload,
    /// Roll out a new version of a service step by step, rolled back on a regression; or
    /// `rollout status [service]`, `rollout abort <service>` (`docs/rollouts.md`).
    Rollout(rollout::RolloutArgs),
    /// Render what runs the system elsewhere (`docs/deploy.md`).
    Deploy {
        #[command(subcommand)]
        target: DeployTarget,
    },
    /// The services' settings while they run: read, change, undo (`docs/config.md`).
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Each sending service's mail queue, and its dead messages; `mail requeue <service>`
    /// sends them again (`docs/mail.md`).
    Mail {
        #[command(subcommand)]
        command: Option<mail::MailCommand>,
    },
    /// NATS JetStream for the system's events (`docs/scale-out.md`).
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// A local PostgreSQL cluster for the system's services (`docs/databases.md`).
    Postgres {
        #[command(subcommand)]
        action: PostgresAction,
    },
}

#[derive(Subcommand)]
enum DeployTarget {
    /// Kubernetes objects, as YAML: a Deployment, Service and PodDisruptionBudget per
    /// process, Secrets, ConfigMaps; the gateway behind a LoadBalancer.
    Kubernetes(deploy::KubernetesArgs),
}

#[derive(Subcommand)]
enum PostgresAction {
    /// Start (initialising on first use) a primary, and a streaming replica on the next
    /// port; prints their URLs.
    Start {
        /// Where the cluster's files live.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 15432)]
        port: u16,
        /// Also a streaming replica, on port + 1.
        #[arg(long)]
        replica: bool,
    },
    /// Stop the cluster in a directory.
    Stop {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum NatsCommand {
    /// Print a `nats-server` configuration for the system: JetStream, a user for the control
    /// plane, and one per service whose password is its credential and whose permissions
    /// are what the manifest grants it. It holds secrets: keep it as the state directory.
    Config {
        /// Where the server listens.
        #[arg(long, default_value = "0.0.0.0:4222")]
        listen: String,
        /// Where JetStream keeps its files.
        #[arg(long, default_value = "/var/lib/nats")]
        store: PathBuf,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Postgres { action } = &cli.command {
        // Needs no manifest: the test suite and a user trying the PostgreSQL profile alike.
        return match action {
            PostgresAction::Start { dir, port, replica } => {
                let local = postgres::start(dir, *port, *replica)?;
                println!("{}", local.primary);
                if let Some(replica) = local.replica {
                    println!("{replica}");
                }
                Ok(())
            }
            PostgresAction::Stop { dir } => postgres::stop(dir),
        };
    }
    let manifest = match Manifest::load(&cli.manifest) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tessera: {e}");
            std::process::exit(2);
        }
    };
    // On one core (a pinned or a one-CPU container) the single-threaded scheduler does the
    // same work without the work-stealing machinery's atomics and wake-ups.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let runtime = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    let base = match cli.manifest.canonicalize() {
        Ok(path) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        Err(e) => {
            eprintln!("tessera: {}: {e}", cli.manifest.display());
            std::process::exit(2);
        }
    };
    let state_dir = base.join(&manifest.system.state_dir);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up {
                no_build,
                profile,
                postgres_port,
                nats_port,
                etcd_port,
                redis_port,
                json,
            } => {
                output::choose_format(json);
                let (name, database, engines) = match profile {
                    up::Profile::Postgres => {
                        ("postgres", up::Database::Postgres(postgres_port), None)
                    }
                    up::Profile::Distributed => (
                        "distributed",
                        up::Database::Embedded,
                        Some(up::LocalEngines {
                            nats: nats_port,
                            etcd: etcd_port,
                            redis: redis_port,
                        }),
                    ),
                    up::Profile::Embedded => ("embedded", up::Database::Embedded, None),
                };
                let manifest = manifest.with_profile(name);
                up::run(&cli.manifest, manifest, no_build, database, engines).await
            }
            Command::Config { command } => config::run(&manifest, &state_dir, command).await,
            Command::Reload => reload::run(&manifest, &state_dir).await,
            Command::Mail { command } => mail::run(&manifest, &state_dir, command).await,
            Command::Rollout(args) => rollout::run(&manifest, &state_dir, args).await,
            Command::Deploy {
                target: DeployTarget::Kubernetes(args),
            } => deploy::kubernetes(&cli.manifest, &manifest, &state_dir, args),
            Command::Nats {
                command: NatsCommand::Config { listen, store },
            } => {
                let config = nats::config(&manifest, &state_dir, &listen, &store)?;
                println!("{config:#}");
                Ok(())
            }
            Command::Status => status(&manifest, &state_dir).await,
            Command::Trace { trace_id } => telemetry::trace(&manifest, &state_dir, &trace_id).await,
            Command::Logs {
                service,
                trace,
                level,
                grep,
                lines,
                follow,
            } => {
                let q = telemetry::LogsQuery {
                    service,
                    trace,
                    level,
                    grep,
                    lines,
                    follow,
                };
                telemetry::logs(&manifest, &state_dir, q).await
            }
            Command::Postgres { .. } => unreachable!("run before the manifest is read"),
            Command::Credential { principal } => {
                let Some(principal) = Principal::parse(&principal) else {
                    anyhow::bail!(
                        "{principal:?} is not service:<name>, gateway, supervisor or admin"
                    );
                };
                println!("{}", keys::credential(&state_dir, &principal)?.token());
                Ok(())
            }
            Command::Env { principal } => {
                if principal != "control" && Principal::parse(&principal).is_none() {
                    anyhow::bail!(
                        "{principal:?} is not control, service:<name>, gateway, supervisor or admin"
                    );
                }
                let passport_keys = keys::passport_keys(&state_dir)?;
                let control_keys = keys::control_keys(&state_dir)?;
                let env = env::of(
                    &manifest,
                    &state_dir,
                    &passport_keys,
                    &control_keys,
                    &principal,
                )?;
                env::print(&env);
                Ok(())
            }
            Command::Control => {
                tessera::log::init("control", "control");
                tessera::admin::Process::init("control", env!("CARGO_PKG_VERSION"));
                let listener = tokio::net::TcpListener::bind(manifest.control.listen)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on {} (control.listen)",
                            manifest.control.listen
                        )
                    })?;
                let config = tessera_control::ControlConfig {
                    settle: std::time::Duration::from_millis(manifest.control.heartbeat_ms * 2),
                    data_dir: state_dir.join("control"),
                    // As `up` gives it (its profile may have chosen the bus), else the
                    // manifest's, as the control plane's own user.
                    bus_url: match std::env::var("TESSERA_BUS_URL") {
                        Ok(url) if !url.is_empty() => Some(url),
                        _ => manifest
                            .bus_of("control")
                            .map(|url| nats::url_of(&url, "control", &state_dir))
                            .transpose()?,
                    },
                    registry_url: match std::env::var("TESSERA_REGISTRY_URL") {
                        Ok(url) if !url.is_empty() => Some(url),
                        _ => manifest
                            .system
                            .registry
                            .as_deref()
                            .map(|url| {
                                etcd::url_of(url, "control", &keys::control_keys(&state_dir)?)
                            })
                            .transpose()?,
                    },
                    shared_url: match std::env::var("TESSERA_SHARED_URL") {
                        Ok(url) if !url.is_empty() => Some(url),
                        _ => manifest
                            .system
                            .shared
                            .as_deref()
                            .map(|url| {
                                redis::url_of(url, "control", &keys::control_keys(&state_dir)?)
                            })
                            .transpose()?,
                    },
                    keys: Arc::new(keys::control_keys(&state_dir)?),
                    policy: Arc::new(policy(&manifest)),
                    log: tessera_control::events::LogConfig {
                        partitions: manifest.control.partitions,
                        lease: std::time::Duration::from_millis(manifest.control.lease_ms),
                        sync: manifest.control.log_sync == tessera_manifest::LogSync::Full,
                        ..Default::default()
                    },
                    retention: tessera_control::telemetry::Retention {
                        max_age: std::time::Duration::from_secs(
                            manifest.telemetry.retention_hours * 3600,
                        ),
                        max_bytes: manifest.telemetry.max_mb * 1024 * 1024,
                    },
                    scraping: Some(tessera_control::telemetry::Scraping {
                        fixed: scraped_platform(&manifest),
                        system: manifest.system.name.clone(),
                        every: std::time::Duration::from_millis(manifest.telemetry.scrape_ms),
                    }),
                    principals: manifest.principals(),
                    // As `up` gives them; a control plane started without them shows no sagas.
                    passport_keys: match std::env::var("TESSERA_PASSPORT_KEYS") {
                        Ok(spec) => Some(Arc::new(
                            tessera::PassportKeys::from_spec(&spec, &manifest.system.name)
                                .context("TESSERA_PASSPORT_KEYS")?,
                        )),
                        Err(_) => None,
                    },
                    gateways: gateway_admins(&manifest),
                    config_base: manifest
                        .services
                        .iter()
                        .map(|(name, spec)| {
                            let base = tessera_control::config::Base {
                                env: spec.env.clone(),
                                secrets: spec.secrets.clone(),
                            };
                            (name.clone(), base)
                        })
                        .collect(),
                };
                tessera_control::serve(listener, config, supervisor::shutdown_signal()).await
            }
            Command::Gateway => {
                // Gateway i of `gateway.replicas` listens on each port + i.
                let index: u32 = match std::env::var(GATEWAY_INDEX_ENV) {
                    Ok(i) => i.parse().context(GATEWAY_INDEX_ENV)?,
                    Err(_) => 0,
                };
                // Read again with its text: what a reload compares the file with.
                // Absolute, not resolved through links: a Kubernetes volume swaps the file's
                // directory behind a link when it changes (`docs/deploy.md`).
                let manifest_path = std::path::absolute(&cli.manifest)?;
                let manifest_text = std::fs::read_to_string(&manifest_path)?;
                let manifest = Manifest::parse(&manifest_text)
                    .map_err(|e| anyhow::anyhow!("{}{e}", manifest_path.display()))?
                    .gateway_replica(index);
                // `gateway-<i>`, unless the environment names it (a pod: `docs/deploy.md`).
                let instance = std::env::var("TESSERA_INSTANCE")
                    .ok()
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| format!("gateway-{index}"));
                tessera::log::init("gateway", &instance);
                tessera::admin::Process::init(&instance, env!("CARGO_PKG_VERSION"));
                // Where the control plane is: the manifest's address, unless the environment
                // says otherwise (a cluster's Service name: `docs/deploy.md`).
                let control_url = std::env::var("TESSERA_CONTROL_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| manifest.control_url());
                let passport_keys = std::env::var("TESSERA_PASSPORT_KEYS")
                    .context("TESSERA_PASSPORT_KEYS is not set (tessera up sets it)")?;
                let listener = tokio::net::TcpListener::bind(manifest.gateway.listen)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on {} (gateway.listen)",
                            manifest.gateway.listen
                        )
                    })?;
                let credential = Credential::from_env()
                    .context("TESSERA_CREDENTIAL")?
                    .context("TESSERA_CREDENTIAL is not set (tessera up sets it)")?;
                let telemetry = tessera::telemetry::start(
                    "gateway",
                    &instance,
                    env!("CARGO_PKG_VERSION"),
                    Some((&control_url, &credential)),
                )
                .context("telemetry")?;
                let admin = tokio::net::TcpListener::bind(manifest.gateway.admin_listen)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on {} (gateway.admin_listen)",
                            manifest.gateway.admin_listen
                        )
                    })?;
                let (tls, certificates) = match &manifest.gateway.tls {
                    Some(settings) => {
                        let tls = tokio::net::TcpListener::bind(settings.listen)
                            .await
                            .with_context(|| {
                                format!("cannot listen on {} (gateway.tls.listen)", settings.listen)
                            })?;
                        let certificates = tls::gateway_certificates(&manifest, &base, &state_dir)?;
                        (Some(tls), certificates)
                    }
                    None => (None, Vec::new()),
                };
                let config = tessera_gateway::GatewayConfig {
                    control_url: control_url.clone(),
                    registry_url: std::env::var("TESSERA_REGISTRY_URL")
                        .ok()
                        .filter(|u| !u.is_empty()),
                    shared_url: std::env::var("TESSERA_SHARED_URL")
                        .ok()
                        .filter(|u| !u.is_empty()),
                    credential,
                    manifest,
                    passport_keys,
                    certificates,
                    source: Some(tessera_gateway::Source {
                        path: manifest_path,
                        text: manifest_text,
                        replica: index,
                    }),
                };
                let listeners = tessera_gateway::Listeners {
                    plain: listener,
                    tls,
                    admin,
                };
                let shutdown = supervisor::shutdown_signal();
                let served = tessera_gateway::serve(config, listeners, shutdown).await;
                telemetry.flush(std::time::Duration::from_secs(2)).await;
                served
            }
        }
    });
    tessera::log::flush();
    result
}

/// The processes of the platform the control plane scrapes that do not register: each
/// gateway (its admin listener) and the control plane itself.
fn scraped_platform(manifest: &Manifest) -> Vec<tessera_control::telemetry::metrics::Target> {
    let mut out: Vec<_> = gateway_admins(manifest)
        .into_iter()
        .map(|g| tessera_control::telemetry::metrics::Target {
            service: "gateway".into(),
            instance: g.id,
            address: g.address,
        })
        .collect();
    out.push(tessera_control::telemetry::metrics::Target {
        service: "control".into(),
        instance: "control".into(),
        address: manifest.control.listen.to_string(),
    });
    out
}

/// Each gateway the manifest runs (`gateway-<i>`), at its admin listener.
fn gateway_admins(manifest: &Manifest) -> Vec<tessera_control::gateways::GatewayAdmin> {
    (0..manifest.gateway.replicas.max(1))
        .map(|i| tessera_control::gateways::GatewayAdmin {
            id: format!("gateway-{i}"),
            address: manifest
                .clone()
                .gateway_replica(i)
                .gateway
                .admin_listen
                .to_string(),
        })
        .collect()
}

/// What each service may do on the control plane, from what the manifest declares.
fn policy(manifest: &Manifest) -> tessera_control::Policy {
    tessera_control::Policy::new(manifest.services.iter().map(|(name, spec)| {
        (
            name.clone(),
            tessera_control::Grants {
                produces: spec.produces.clone(),
                consumes: spec.consumes.clone(),
            },
        )
    }))
}

async fn status(manifest: &Manifest, state_dir: &Path) -> anyhow::Result<()> {
    let url = manifest.control_url();
    tls::install_own_identity(manifest, state_dir, "admin")?;
    let admin = keys::credential(state_dir, &Principal::Admin)?;
    let catalog = tessera::registry::RegistryClient::new(&url, &admin)
        .catalog(None, std::time::Duration::ZERO)
        .await
        .with_context(|| {
            format!("the control plane at {url} does not answer; is the system up?")
        })?;
    println!(
        "{:<14} {:<16} {:<22} {:<8} pid",
        "SERVICE", "INSTANCE", "ADDRESS", "VERSION"
    );
    for (service, instances) in &catalog.services {
        for i in instances {
            let pid = i.metadata.get("pid").map_or("-", String::as_str);
            println!(
                "{service:<14} {:<16} {:<22} {:<8} {pid}",
                i.id, i.address, i.version
            );
        }
    }
    // Rollouts under way: which versions, and the new one's share.
    let (http, base) = control::client(manifest, state_dir)?;
    let rollouts = control::get(&http, &format!("{base}/v1/rollouts")).await?;
    let mut rolling = std::collections::HashSet::new();
    for r in rollouts["rollouts"].as_array().into_iter().flatten() {
        if r["ended_ms"].is_null() {
            let service = r["service"].as_str().unwrap_or("?");
            rolling.insert(service.to_string());
            println!(
                "~ {service}: rolling out {} beside {}, {} at {}% (tessera rollout status {service})",
                r["to"].as_str().unwrap_or("?"),
                r["from"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?"),
                r["weight"]
            );
        }
    }
    for (name, spec) in &manifest.services {
        let live = catalog.services.get(name).map_or(0, Vec::len);
        if live < spec.replicas as usize && !rolling.contains(name) {
            println!("! {name}: {live} of {} replicas registered", spec.replicas);
        }
    }
    Ok(())
}
