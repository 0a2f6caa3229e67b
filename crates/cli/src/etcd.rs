//! etcd for a system's registry (`docs/scale-out.md`): each process's registry URL with an
//! etcd user of its own (`<prefix>-<name>`, its password derived from the control keys; the
//! control plane, as `root`, provisions those users and their roles), and a local `etcd` for
//! `tessera up --profile distributed`, started under the state directory and stopped with the
//! system. Production runs its own cluster and gives its root user's URL to the control plane.

use std::path::Path;

use anyhow::Context;
use tessera::identity::ControlKeys;
use tessera::registry::etcd::ETCD_IDENTITY;
use tessera::registry::etcd::EtcdSettings;
use tessera_control::etcd_password;
use tessera_manifest::Manifest;

use crate::engine::LocalEngine;

/// The registry URL `principal`'s process connects with (`control`, `gateway`,
/// `service:<name>`): the control plane's is the system's URL as given, or as `root` when it
/// names no user (an etcd `up` started); every other process's names its own user.
pub fn url_of(registry: &str, principal: &str, keys: &ControlKeys) -> anyhow::Result<String> {
    let settings =
        EtcdSettings::parse(registry).map_err(|e| anyhow::anyhow!("system.registry: {e}"))?;
    let user = match principal {
        "control" if settings.user().is_some() => return Ok(registry.to_string()),
        "control" => "root".to_string(),
        other => settings.user_of(other.strip_prefix("service:").unwrap_or(other)),
    };
    Ok(settings
        .as_user(&user, &etcd_password(keys, &user))
        .to_url())
}

/// A local `etcd` for the system on `port` (its peer port the next one), its data under the
/// state directory. With the system's mutual TLS on, it takes TLS only: its identity `etcd`
/// from the system CA, clients' certificates required and checked against that CA.
pub fn start_local(
    manifest: &Manifest,
    state_dir: &Path,
    port: u16,
) -> anyhow::Result<(LocalEngine, String)> {
    let dir = state_dir.join("etcd");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let env = crate::tls::identity_env(manifest, state_dir, ETCD_IDENTITY)?;
    let file = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    use tessera_tls::internal::{CA_ENV, CERT_ENV, KEY_ENV};
    let tls = match (file(CERT_ENV), file(KEY_ENV), file(CA_ENV)) {
        (Some(chain), Some(key), Some(ca)) => Some((chain, key, ca)),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", port + 1);
    let mut command = tokio::process::Command::new("etcd");
    command
        .arg("--name")
        .arg("tessera")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("tessera={peer}")])
        .args(["--log-level", "warn"])
        // Every password is a 256-bit secret derived for its user: bcrypt's work factor buys
        // nothing against guessing it, and costs each connection ~100 ms of etcd's CPU.
        .args(["--bcrypt-cost", "4"]);
    if let Some((chain, key, ca)) = tls {
        command
            .args(["--cert-file", &chain])
            .args(["--key-file", &key])
            .args(["--trusted-ca-file", &ca])
            .arg("--client-cert-auth");
    }
    let engine = LocalEngine::start(command, "etcd", "etcd-server", dir, port)?;
    Ok((engine, format!("etcd://127.0.0.1:{port}")))
}
