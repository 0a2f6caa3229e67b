//! `tessera deploy kubernetes`: the system of the manifest as Kubernetes objects
//! (`tessera_deploy`), each process given what `tessera up` would give it (`env.rs`), with
//! the system's keys and credentials from the state directory.
//!
//! The output holds those secrets (as Secrets): it is for `kubectl apply`, not for a
//! repository. `docs/deploy.md` walks through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tessera_deploy::{Plan, Process, Role, ServicePlan, paths};
use tessera_manifest::Manifest;

use crate::{env, keys};

#[derive(clap::Args)]
pub struct KubernetesArgs {
    /// The image with `tessera` and the services' binaries (built by the repository's
    /// Dockerfile); default: `<system name>:latest`.
    #[arg(long)]
    image: Option<String>,
    /// An image of its own for a service (one written in another language): `NAME=IMAGE`,
    /// its command then run as the manifest writes it. Repeatable.
    #[arg(long = "service-image", value_name = "NAME=IMAGE")]
    service_images: Vec<String>,
    /// The namespace; default: the system's name.
    #[arg(long)]
    namespace: Option<String>,
    /// Where to write the YAML; default: standard output.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

pub fn kubernetes(
    manifest_path: &Path,
    manifest: &Manifest,
    state_dir: &Path,
    args: KubernetesArgs,
) -> anyhow::Result<()> {
    if manifest
        .gateway
        .tls
        .as_ref()
        .is_some_and(|t| t.certificates.is_empty())
    {
        eprintln!(
            "tessera: gateway.tls names no certificates (the development certificate is for this machine): the cluster's gateway serves plain HTTP behind its load balancer, which terminates TLS; list gateway.tls.certificates to serve HTTPS itself"
        );
    }
    let text = std::fs::read_to_string(manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let cluster_text = tessera_deploy::in_cluster(&text)?;
    let cluster = Manifest::parse(&cluster_text)
        .map_err(|e| anyhow::anyhow!("the manifest as the cluster reads it{e}"))?;
    let mtls = cluster.mtls();
    let scheme = if mtls { "https" } else { "http" };
    let control_url = format!(
        "{scheme}://tessera-control:{}",
        tessera_deploy::ports::CONTROL
    );
    let passport_keys = keys::passport_keys(state_dir)?;
    let control_keys = keys::control_keys(state_dir)?;
    let process = |principal: &str| -> anyhow::Result<(Env, Files)> {
        let env = env::of(
            &cluster,
            state_dir,
            &passport_keys,
            &control_keys,
            principal,
        )?;
        for_the_cluster(env, &control_url)
    };

    let mut processes = Vec::new();
    let (mut control_env, identity) = process("control")?;
    control_env.push((
        tessera::identity::KEYS_ENV.into(),
        keys::control_keys_spec(state_dir)?,
    ));
    processes.push(Process {
        role: Role::Control,
        env: control_env,
        identity,
    });
    let base = manifest_path
        .canonicalize()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut https = BTreeMap::new();
    let certificates = match &cluster.gateway.tls {
        Some(_) => crate::tls::gateway_certificates(manifest, &base, state_dir)?,
        None => Vec::new(),
    };
    for (i, files) in (0..).zip(certificates) {
        let (chain, key) = tessera_deploy::https_files(i);
        https.insert(chain, read(&files.chain)?);
        https.insert(key, read(&files.key)?);
    }
    let files = manifest
        .files
        .iter()
        .map(|mount| static_files(&base, mount))
        .collect::<anyhow::Result<_>>()?;
    let (env, identity) = process("gateway")?;
    processes.push(Process {
        role: Role::Gateway { https, files },
        env,
        identity,
    });
    for (name, spec) in &cluster.services {
        let (env, identity) = process(&format!("service:{name}"))?;
        let (secret_settings, settings) = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| spec.secrets.contains(k) || tessera::config::secret_by_name(k));
        processes.push(Process {
            role: Role::Service(ServicePlan {
                name: name.clone(),
                replicas: spec.replicas,
                command: spec.command.argv(),
                settings,
                secret_settings,
                embedded_data: cluster.database_of(name).is_none(),
            }),
            env,
            identity,
        });
    }
    let embedded: Vec<&str> = cluster
        .services
        .keys()
        .filter(|name| cluster.database_of(name).is_none())
        .map(String::as_str)
        .collect();
    if !embedded.is_empty() {
        eprintln!(
            "tessera: no database URL for {}: each pod keeps its data in the pod (lost with it); name a PostgreSQL (system.database) for anything but a trial",
            embedded.join(", ")
        );
    }
    let images = args
        .service_images
        .iter()
        .map(|pair| {
            let (name, image) = pair
                .split_once('=')
                .with_context(|| format!("--service-image {pair:?}: NAME=IMAGE"))?;
            anyhow::ensure!(
                cluster.services.contains_key(name),
                "--service-image: the manifest has no service {name:?}"
            );
            Ok((name.to_string(), image.to_string()))
        })
        .collect::<anyhow::Result<BTreeMap<String, String>>>()?;
    // The image holds what Cargo builds; a program of another language needs its own.
    let foreign: Vec<&str> = cluster
        .services
        .iter()
        .filter(|(name, spec)| {
            !images.contains_key(*name)
                && spec
                    .command
                    .argv()
                    .first()
                    .is_some_and(|program| !program.contains("target/release/"))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if !foreign.is_empty() {
        eprintln!(
            "tessera: {} not built by Cargo, so not in the system's image: give each an image of its own (--service-image NAME=IMAGE; examples/invest/signals/Dockerfile is one)",
            foreign.join(", ")
        );
    }
    let plan = Plan {
        system: cluster.system.name.clone(),
        namespace: args
            .namespace
            .unwrap_or_else(|| cluster.system.name.clone()),
        image: args
            .image
            .unwrap_or_else(|| format!("{}:latest", cluster.system.name)),
        images,
        manifest_text: cluster_text,
        gateways: manifest.gateway.replicas.max(1),
        mtls,
        processes,
    };
    let yaml = tessera_deploy::to_yaml(&tessera_deploy::render(&plan))?;
    match args.out {
        Some(path) => {
            // Written aside (readable by its owner only), then renamed over any earlier one.
            let aside = path.with_extension(format!("new-{}", std::process::id()));
            let _ = std::fs::remove_file(&aside);
            crate::keys::write_private(&aside, &yaml)
                .and_then(|()| std::fs::rename(&aside, &path))
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "tessera: wrote {} (it holds the system's secrets: apply it, do not commit it)",
                path.display()
            );
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

/// A process's environment, as `KEY`, value pairs.
type Env = Vec<(String, String)>;
/// Files to mount, by name.
type Files = BTreeMap<String, Vec<u8>>;

/// A process's environment as a pod reads it: the control plane at its Service, files at
/// their mounts (the identity files' contents beside, to mount).
fn for_the_cluster(env: Vec<(String, String)>, control_url: &str) -> anyhow::Result<(Env, Files)> {
    use tessera_tls::internal::{CA_ENV, CERT_ENV, KEY_ENV};
    let mut files = BTreeMap::new();
    let mut out = Vec::with_capacity(env.len());
    for (key, value) in env {
        let file = match key.as_str() {
            k if k == CERT_ENV => Some("cert.pem"),
            k if k == KEY_ENV => Some("key.pem"),
            k if k == CA_ENV => Some("ca.pem"),
            _ => None,
        };
        let value = match (key.as_str(), file) {
            ("TESSERA_CONTROL_URL", _) => control_url.to_string(),
            (_, Some(name)) => {
                files.insert(name.to_string(), read(Path::new(&value))?);
                format!("{}/{name}", paths::IDENTITY_DIR)
            }
            _ => value,
        };
        out.push((key, value));
    }
    Ok((out, files))
}

/// The most a ConfigMap holds (Kubernetes refuses more than 1 MiB).
const CONFIG_MAP_BYTES: usize = 1 << 20;

/// The most files a mount may have in a cluster: each is a volume mount of the gateway's pod.
const CLUSTER_FILES: usize = 200;

/// A `[[files]]` mount's files, as the gateway would serve them (the same rule:
/// `tessera_gateway::files::read_tree`), for its ConfigMap.
fn static_files(
    base: &Path,
    mount: &tessera_manifest::FilesRoute,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let dir = base.join(&mount.dir);
    let tree = tessera_gateway::files::read_tree(&dir)
        .with_context(|| format!("files {:?}: {}", mount.prefix, dir.display()))?;
    // Each file is mounted alone: with none, the directory would not exist in the pod, and
    // the gateway, which does not start on a missing directory, would not start.
    anyhow::ensure!(
        !tree.is_empty(),
        "files {:?}: {} has no file to serve",
        mount.prefix,
        dir.display()
    );
    anyhow::ensure!(
        tree.len() <= CLUSTER_FILES,
        "files {:?}: {} has {} files, more than the {CLUSTER_FILES} a gateway's pod mounts one by one: serve them from a CDN, or from a service of their own",
        mount.prefix,
        dir.display(),
        tree.len()
    );
    let bytes: usize = tree.iter().map(|f| f.body.len()).sum();
    if bytes > CONFIG_MAP_BYTES {
        anyhow::bail!(
            "files {:?}: {} holds {bytes} bytes, more than the 1 MiB a ConfigMap holds: serve larger files from a CDN, or from a service of their own",
            mount.prefix,
            dir.display()
        );
    }
    Ok(tree.into_iter().map(|f| (f.path, f.body)).collect())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
