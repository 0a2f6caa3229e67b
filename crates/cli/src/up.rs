//! `tessera up`: build, start the control plane, the services and the gateway, wait until all
//! are ready, print where they are, keep them running, and stop them in order on Ctrl-C or
//! SIGTERM (gateway first, so no request arrives at a service that is leaving; control plane
//! last, so services can deregister).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tessera::identity::Principal;
use tessera::registry::RegistryClient;
use tessera_manifest::Manifest;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::keys;
use crate::output::say;
use crate::supervisor::{ProcSpec, shutdown_signal, supervise};

const GRACE: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a system's services keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Each service's embedded SQLite file (or the manifest's database URLs).
    Embedded,
    /// A local PostgreSQL cluster under the state directory, a database per service.
    Postgres,
    /// Events on a local NATS JetStream and the registry on a local etcd, under the state
    /// directory (a user per service on each, with what the manifest grants it), instead of
    /// the control plane's embedded log and registry.
    Distributed,
}

/// The engines `up` starts for the distributed profile, on these loopback ports.
pub struct LocalEngines {
    pub nats: u16,
    pub etcd: u16,
    pub redis: u16,
}

/// What `up` starts for the services' data.
pub enum Database {
    Embedded,
    /// A local PostgreSQL on this port.
    Postgres(u16),
}

pub async fn run(
    manifest_path: &Path,
    mut manifest: Manifest,
    no_build: bool,
    database: Database,
    engines: Option<LocalEngines>,
) -> anyhow::Result<()> {
    let manifest_path = manifest_path
        .canonicalize()
        .with_context(|| format!("cannot find {}", manifest_path.display()))?;
    let base = manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let state_dir = base.join(&manifest.system.state_dir);
    std::fs::create_dir_all(state_dir.join("data"))
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let passport_keys = keys::passport_keys(&state_dir)?;
    let control_keys = keys::control_keys(&state_dir)?;
    // Stopped when this function returns, however it returns.
    let _database = match database {
        Database::Postgres(port) => {
            let cluster = crate::postgres::for_system(&mut manifest, &state_dir, port)?;
            say(&format!(
                "PostgreSQL: {} (a database per service; files in {})",
                tessera::Db::redact_url(&cluster.primary),
                cluster.dir.display()
            ));
            Some(cluster)
        }
        Database::Embedded => None,
    };
    // Events on a local NATS, unless the manifest names a bus of its own.
    let _nats = match engines.as_ref().map(|e| e.nats) {
        Some(port) if manifest.system.bus.is_none() => {
            let server = crate::nats::start_local(&manifest, &state_dir, port)?;
            say(&format!(
                "NATS JetStream: {} (a user per service; files in {})",
                server.url,
                server.engine.dir.display()
            ));
            manifest.system.bus = Some(server.url.clone());
            Some(server)
        }
        _ => None,
    };
    // The registry on a local etcd, unless the manifest names one.
    let _etcd = match engines.as_ref().map(|e| e.etcd) {
        Some(port) if manifest.system.registry.is_none() => {
            let (engine, url) = crate::etcd::start_local(&manifest, &state_dir, port)?;
            say(&format!(
                "etcd: {url} (the registry; a user per service; files in {})",
                engine.dir.display()
            ));
            manifest.system.registry = Some(url);
            Some(engine)
        }
        _ => None,
    };
    // What the gateways share on a local Redis, unless the manifest names one.
    let _redis = match engines.as_ref().map(|e| e.redis) {
        Some(port) if manifest.system.shared.is_none() => {
            let (engine, url) =
                crate::redis::start_local(&manifest, &state_dir, port, &control_keys)?;
            say(&format!(
                "Redis: 127.0.0.1:{port} (the gateways' limits and revocations, the services' caches; a user per process{})",
                if manifest.mtls() { "; TLS only" } else { "" }
            ));
            manifest.system.shared = Some(url);
            Some(engine)
        }
        _ => None,
    };
    // Made here, once, before any gateway starts (each gateway reads them).
    crate::tls::gateway_certificates(&manifest, &base, &state_dir)
        .context("gateway.tls: the certificates")?;

    if let (Some(build), false) = (&manifest.system.build, no_build) {
        let argv = build.argv();
        say(&format!("building: {}", argv.join(" ")));
        let status = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&base)
            .status()
            .await
            .with_context(|| format!("cannot run the build command {:?}", argv[0]))?;
        if !status.success() {
            bail!("the build command failed ({status})");
        }
        reexec_if_rebuilt()?;
    }
    let start = Instant::now();

    let exe = std::env::current_exe().context("cannot find the tessera executable")?;
    let exe = exe.to_string_lossy().into_owned();
    let manifest_arg = manifest_path.to_string_lossy().into_owned();
    let control_url = manifest.control_url();
    // Mutual TLS: the runner's own identity (it reads the registry), made before any call.
    crate::tls::install_own_identity(&manifest, &state_dir, "supervisor")?;
    crate::tls::spawn_rotation(manifest.clone(), state_dir.clone());
    // The supervisor's own credential: to see who registered, and to remove dead instances.
    let registry = RegistryClient::new(&control_url, &control_keys.issue(&Principal::Supervisor));
    let env_of = |principal: &str| {
        crate::env::of(
            &manifest,
            &state_dir,
            &passport_keys,
            &control_keys,
            principal,
        )
    };
    let platform = |name: &str, sub: &str, principal: &str| -> anyhow::Result<ProcSpec> {
        Ok(ProcSpec {
            name: name.to_string(),
            argv: vec![
                exe.clone(),
                "--manifest".into(),
                manifest_arg.clone(),
                sub.into(),
            ],
            env: env_of(principal)?,
            cwd: base.clone(),
            registry: None,
        })
    };

    let mut services = Vec::new();
    // How each service's instances start, for the versions rollouts bring (`generations.rs`).
    let mut launches = std::collections::BTreeMap::new();
    for (name, spec) in &manifest.services {
        let mut argv = spec.command.argv();
        if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
            argv[0] = base.join(&argv[0]).to_string_lossy().into_owned();
        }
        let mut launch_env = env_of(&format!("service:{name}"))?;
        launch_env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        launches.insert(
            name.clone(),
            crate::generations::Launch {
                argv: argv.clone(),
                env: launch_env,
                cwd: base.clone(),
                registry: registry.clone(),
            },
        );
        for replica in 1..=spec.replicas {
            let instance = format!("{name}-{replica}");
            let mut env = env_of(&format!("service:{name}"))?;
            env.push(("TESSERA_INSTANCE".into(), instance.clone()));
            env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            services.push(ProcSpec {
                registry: Some((registry.clone(), instance.clone())),
                name: instance,
                argv: argv.clone(),
                env,
                cwd: base.clone(),
            });
        }
    }

    // Three groups, stopped in reverse order of start.
    let (stop_control, control_rx) = watch::channel(false);
    let (stop_services, services_rx) = watch::channel(false);
    let (stop_gateway, gateway_rx) = watch::channel(false);
    let mut control_tasks = JoinSet::new();
    let mut service_tasks = JoinSet::new();
    let mut gateway_tasks = JoinSet::new();
    let mut manifest_stops: std::collections::HashMap<String, watch::Sender<bool>> =
        std::collections::HashMap::new();
    let mut color = 0;
    let mut next_color = || {
        color += 1;
        color - 1
    };

    let started = async {
        control_tasks.spawn(supervise(
            {
                // The control plane reads the keys from the state directory, or from the
                // variable the runner itself was given (and no other child is).
                let mut control = platform("control", "control", "control")?;
                if let Ok(keys) = std::env::var(tessera::identity::KEYS_ENV) {
                    control.env.push((tessera::identity::KEYS_ENV.into(), keys));
                }
                control
            },
            next_color(),
            control_rx,
            GRACE,
        ));
        wait_http_ok(&format!("{control_url}/health/ready"))
            .await
            .context("the control plane did not start")?;
        for spec in &services {
            // Each service's instances stop on their own channel too: a rollout that replaces
            // the manifest's version stops them (`generations.rs`).
            let own = manifest_stops
                .entry(service_of(&spec.name))
                .or_insert_with(|| watch::channel(false).0)
                .subscribe();
            let mut all = services_rx.clone();
            let (either, stop) = watch::channel(false);
            tokio::spawn(async move {
                let mut own = own;
                tokio::select! {
                    _ = all.wait_for(|s| *s) => {}
                    _ = own.wait_for(|s| *s) => {}
                }
                let _ = either.send(true);
            });
            service_tasks.spawn(supervise(spec.clone(), next_color(), stop, GRACE));
        }
        wait_registered(&registry, services.iter().map(|s| s.name.as_str())).await?;
        // The versions rollouts run beside (or instead of) the manifest's.
        service_tasks.spawn(crate::generations::follow(
            tessera::registry::control_http(&control_keys.issue(&Principal::Supervisor)),
            tessera::registry::control_base(&control_url),
            std::mem::take(&mut launches),
            std::mem::take(&mut manifest_stops),
            services_rx.clone(),
            GRACE,
        ));
        for index in 0..manifest.gateway.replicas {
            let mut spec = platform("gateway", "gateway", "gateway")?;
            if manifest.gateway.replicas > 1 {
                spec.name = format!("gateway-{index}");
                spec.env
                    .push((crate::GATEWAY_INDEX_ENV.into(), index.to_string()));
            }
            gateway_tasks.spawn(supervise(spec, next_color(), gateway_rx.clone(), GRACE));
        }
        for index in 0..manifest.gateway.replicas {
            let listen = manifest.clone().gateway_replica(index).gateway.listen;
            wait_http_ok(&format!("http://{listen}/health/ready"))
                .await
                .with_context(|| format!("gateway {index} did not start"))?;
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        r = started => r,
        _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    match &outcome {
        Ok(()) => {
            say(&format!("ready in {:.2}s", start.elapsed().as_secs_f64()));
            for index in 0..manifest.gateway.replicas {
                say(&format!(
                    "  gateway        http://{}",
                    manifest.clone().gateway_replica(index).gateway.listen
                ));
            }
            if let Some(tls) = &manifest.gateway.tls {
                say(&format!(
                    "  gateway        https://{}  (HTTP/2, HTTP/1.1)",
                    tls.listen
                ));
                if tls.certificates.is_empty() {
                    let ca = crate::tls::development_ca(&state_dir, &manifest)?;
                    say(&format!(
                        "                 development certificate; trust {} (README)",
                        ca.certificate().display()
                    ));
                }
            }
            say(&format!(
                "  gateway admin  http://{}  (/metrics, /status/resilience)",
                manifest.gateway.admin_listen
            ));
            say(&format!("  control plane  {control_url}"));
            if manifest.console.login {
                say(&format!(
                    "  console        {control_url}/console/  (sign in: tessera credential admin)"
                ));
            } else {
                // A local development system: the URL signs in (the credential is in the
                // fragment, which the browser never sends).
                let admin = crate::keys::credential(&state_dir, &Principal::Admin)?;
                say(&format!(
                    "  console        {control_url}/console/#credential={}",
                    admin.token()
                ));
            }
            for (name, spec) in &manifest.services {
                let routes: Vec<&str> = manifest
                    .routes
                    .iter()
                    .filter(|r| &r.service == name)
                    .map(|r| r.prefix.as_str())
                    .collect();
                let reach = if routes.is_empty() {
                    "internal".to_string()
                } else {
                    routes.join(", ")
                };
                say(&format!(
                    "  {name:<16} {} replica(s)  {reach}",
                    spec.replicas
                ));
            }
            say("press Ctrl-C to stop");
            shutdown_signal().await;
        }
        Err(e) => say(&format!("start failed: {e:#}")),
    }

    say("stopping: gateway, then services, then the control plane");
    let _ = stop_gateway.send(true);
    while gateway_tasks.join_next().await.is_some() {}
    let _ = stop_services.send(true);
    while service_tasks.join_next().await.is_some() {}
    let _ = stop_control.send(true);
    while control_tasks.join_next().await.is_some() {}
    say("stopped");
    outcome
}

/// The service an instance's process name belongs to: `catalog-2` → `catalog`.
fn service_of(process: &str) -> String {
    process
        .rsplit_once('-')
        .map_or(process, |(service, _)| service)
        .to_string()
}

/// If the build replaced this very binary, carries on as the new one (without building again),
/// so that the platform processes started from it are the version just built.
fn reexec_if_rebuilt() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::fs::read_link("/proc/self/exe").context("cannot read /proc/self/exe")?;
    let Some(path) = exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) else {
        return Ok(());
    };
    say("the build replaced this tessera binary; continuing as the new one");
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--no-build".into());
    let err = std::process::Command::new(path).args(args).exec();
    Err(err).with_context(|| format!("cannot run {path}"))
}

async fn wait_http_ok(url: &str) -> anyhow::Result<()> {
    let client = crate::tls::control_client();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} was not ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_registered<'a>(
    registry: &RegistryClient,
    instances: impl Iterator<Item = &'a str>,
) -> anyhow::Result<()> {
    let expected: Vec<&str> = instances.collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut index = None;
    loop {
        let catalog = registry.catalog(index, Duration::from_secs(1)).await;
        if let Ok(catalog) = catalog {
            let missing: Vec<&str> = expected
                .iter()
                .copied()
                .filter(|id| !catalog.services.values().flatten().any(|i| i.id == *id))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not registered within {READY_TIMEOUT:?}: {}",
                    missing.join(", ")
                );
            }
            index = Some(catalog.index);
        } else {
            if Instant::now() > deadline {
                bail!("the control plane stopped answering");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
