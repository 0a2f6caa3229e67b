//! The versions of a service a rollout runs, started and stopped by `tessera up`.
//!
//! The control plane publishes, per service, its generations (`GET
//! /v1/rollouts/generations`, `tessera_control::rollouts`): the manifest's own, and each
//! version a rollout brought, with its command, settings and replicas, and whether it is
//! retired. The runner follows it by long poll, as the supervisor: a new generation's
//! processes are started (`<service>-<version>-<i>`, `TESSERA_VERSION` set, supervised and
//! restarted like any other), a retired one's are stopped with SIGTERM (each instance leaves
//! the registry, finishes what it has in flight and exits), the manifest's included once a
//! rollout replaced it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::output::say;
use crate::supervisor::{ProcSpec, supervise};

/// How `up` starts a service's instances.
#[derive(Clone)]
pub struct Launch {
    /// The manifest's program and arguments (a relative program resolved against `cwd`).
    pub argv: Vec<String>,
    /// What every instance gets: the platform's environment and the manifest's settings.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub registry: tessera::registry::RegistryClient,
}

#[derive(Deserialize)]
struct Published {
    index: u64,
    services: BTreeMap<String, Vec<Generation>>,
}

#[derive(Clone, Deserialize)]
struct Generation {
    version: String,
    command: Option<Vec<String>>,
    env: BTreeMap<String, String>,
    replicas: u32,
    retired: bool,
    manifest: bool,
}

/// Follows the generations until `stop`: `launches` says how each service is started,
/// `manifest_stops` stops the manifest's instances of a service.
pub async fn follow(
    http: reqwest::Client,
    base: String,
    launches: BTreeMap<String, Launch>,
    manifest_stops: HashMap<String, watch::Sender<bool>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut running: HashMap<(String, String), (watch::Sender<bool>, JoinSet<()>)> = HashMap::new();
    let mut index: Option<u64> = None;
    let mut color = 100;
    loop {
        let url = match index {
            Some(i) => format!("{base}/v1/rollouts/generations?after={i}&wait=25"),
            None => format!("{base}/v1/rollouts/generations"),
        };
        let answer = tokio::select! {
            a = http.get(&url).timeout(Duration::from_secs(35)).send() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let published = match answer {
            Ok(resp) if resp.status().is_success() => resp.json::<Published>().await.ok(),
            _ => None,
        };
        let Some(published) = published else {
            // The control plane restarting, or older than this runner: later.
            index = None;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.wait_for(|s| *s) => break,
            }
        };
        index = Some(published.index);
        let mut wanted = std::collections::HashSet::new();
        for (service, generations) in &published.services {
            let Some(launch) = launches.get(service) else {
                continue;
            };
            for g in generations {
                if g.manifest {
                    if g.retired
                        && let Some(stop) = manifest_stops.get(service)
                        && !*stop.borrow()
                    {
                        say(&format!(
                            "{service}: version {} replaced; stopping its instances",
                            g.version
                        ));
                        let _ = stop.send(true);
                    }
                    continue;
                }
                let key = (service.clone(), g.version.clone());
                if g.retired {
                    continue;
                }
                wanted.insert(key.clone());
                if running.contains_key(&key) {
                    continue;
                }
                say(&format!(
                    "{service}: starting version {} ({} instance(s))",
                    g.version, g.replicas
                ));
                let (tx, rx) = watch::channel(false);
                let mut tasks = JoinSet::new();
                for spec in specs(service, launch, g) {
                    color += 1;
                    tasks.spawn(supervise(spec, color, rx.clone(), grace));
                }
                running.insert(key, (tx, tasks));
            }
        }
        // Retired, or no longer published: drained and stopped.
        let gone: Vec<(String, String)> = running
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some((tx, mut tasks)) = running.remove(&key) {
                say(&format!("{}: stopping version {}", key.0, key.1));
                let _ = tx.send(true);
                tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
            }
        }
    }
    for (_, (tx, mut tasks)) in running {
        let _ = tx.send(true);
        while tasks.join_next().await.is_some() {}
    }
}

/// The processes of generation `g` of `service`.
fn specs(service: &str, launch: &Launch, g: &Generation) -> Vec<ProcSpec> {
    let mut argv = g.command.clone().unwrap_or_else(|| launch.argv.clone());
    if argv[0].contains('/') && std::path::Path::new(&argv[0]).is_relative() {
        argv[0] = launch.cwd.join(&argv[0]).to_string_lossy().into_owned();
    }
    (1..=g.replicas)
        .map(|replica| {
            let instance = format!("{service}-{}-{replica}", g.version);
            let mut env = launch.env.clone();
            env.extend(g.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            // Beside the running version: its listeners on free ports of the same host, not on
            // the fixed ones the manifest may give the service.
            for (key, value) in env.iter_mut() {
                if (key == "TESSERA_LISTEN" || key == "TESSERA_ADMIN_LISTEN")
                    && let Ok(mut address) = value.parse::<std::net::SocketAddr>()
                {
                    address.set_port(0);
                    *value = address.to_string();
                }
            }
            env.push(("TESSERA_INSTANCE".into(), instance.clone()));
            env.push(("TESSERA_VERSION".into(), g.version.clone()));
            ProcSpec {
                registry: Some((launch.registry.clone(), instance.clone())),
                name: instance,
                argv: argv.clone(),
                env,
                cwd: launch.cwd.clone(),
            }
        })
        .collect()
}
