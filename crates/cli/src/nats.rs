//! NATS JetStream for a system's events (`docs/scale-out.md`): the server's configuration
//! written from the manifest (a user per service, whose password is derived for it from the
//! control keys and whose permissions are what the manifest grants it; the control plane's
//! user may do anything), each process's bus URL with its user, and a local `nats-server` for
//! `tessera up --profile distributed`, started under the state directory and stopped with the
//! system. Production runs its own cluster with the configuration `tessera nats config`
//! prints.

use std::path::Path;

use anyhow::Context;
use tessera::events::NatsSettings;
use tessera::events::nats::{Grants, NATS_IDENTITY, ServerTls, permissions, server_config};
use tessera::identity::ControlKeys;
use tessera_manifest::Manifest;

use crate::engine::LocalEngine;
use crate::keys;

/// The system's bus settings: those its bus URL names, else the defaults.
fn settings(manifest: &Manifest) -> NatsSettings {
    manifest
        .system
        .bus
        .as_deref()
        .and_then(|url| NatsSettings::parse(url).ok())
        .unwrap_or_else(|| NatsSettings::parse("nats://127.0.0.1:4222").expect("a good URL"))
}

/// The NATS password of `user` (a service's name, or `control`).
fn password(control_keys: &ControlKeys, user: &str) -> String {
    control_keys.secret_for(&format!("nats:{user}"))
}

/// The configuration of a `nats-server` for the system: listening on `listen`, JetStream in
/// `store`, a user for the control plane and one per service.
pub fn config(
    manifest: &Manifest,
    state_dir: &Path,
    listen: &str,
    store: &Path,
) -> anyhow::Result<serde_json::Value> {
    let control_keys = keys::control_keys(state_dir)?;
    let settings = settings(manifest);
    let mut users = vec![(
        "control".to_string(),
        password(&control_keys, "control"),
        None,
    )];
    for (name, spec) in &manifest.services {
        let grants = Grants {
            service: name,
            produces: &spec.produces,
            consumes: &spec.consumes,
            partitions: settings.partitions,
        };
        users.push((
            name.clone(),
            password(&control_keys, name),
            Some(permissions(&settings.prefix, &grants)),
        ));
    }
    // With the system's mutual TLS on, NATS is an internal server like the others: TLS only,
    // its identity `nats` from the system CA, clients' certificates required.
    let env = crate::tls::identity_env(manifest, state_dir, NATS_IDENTITY)?;
    let file = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    use tessera_tls::internal::{CA_ENV, CERT_ENV, KEY_ENV};
    let tls = match (file(CERT_ENV), file(KEY_ENV), file(CA_ENV)) {
        (Some(chain), Some(key), Some(ca)) => Some(ServerTls { chain, key, ca }),
        _ => None,
    };
    Ok(server_config(
        listen,
        &store.to_string_lossy(),
        &users,
        tls.as_ref(),
    ))
}

/// The bus URL `principal`'s process connects with (`control`, `service:<name>`): the
/// system's, as the NATS user of its own, unless the URL names a user (the operator's).
pub fn url_of(bus: &str, principal: &str, state_dir: &Path) -> anyhow::Result<String> {
    let rest = bus.strip_prefix("nats://").context("a nats:// URL")?;
    if rest.contains('@') {
        return Ok(bus.to_string());
    }
    let user = principal.strip_prefix("service:").unwrap_or(principal);
    let password = password(&keys::control_keys(state_dir)?, user);
    Ok(format!("nats://{user}:{password}@{rest}"))
}

/// A `nats-server` started by `up`, stopped (by its PID) when dropped.
pub struct LocalServer {
    pub engine: LocalEngine,
    pub url: String,
}

/// Starts a local `nats-server` with JetStream for the system on `port`, its store and
/// configuration under the state directory; says what to install when it is not there.
pub fn start_local(
    manifest: &Manifest,
    state_dir: &Path,
    port: u16,
) -> anyhow::Result<LocalServer> {
    let dir = state_dir.join("nats");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let listen = format!("127.0.0.1:{port}");
    let config = config(manifest, state_dir, &listen, &dir.join("store"))?;
    let path = dir.join("nats.conf");
    keys::write_private(&path, &config.to_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut command = tokio::process::Command::new("nats-server");
    command.arg("-c").arg(&path);
    Ok(LocalServer {
        engine: LocalEngine::start(command, "nats-server", "nats-server", dir, port)?,
        url: format!("nats://{listen}"),
    })
}
