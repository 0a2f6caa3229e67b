//! etcd for a system's registry (`docs/scale-out.md`): each process's registry URL with an
//! etcd user of its own (`<prefix>-<name>`, its password derived from the control keys; the
//! control plane, as `root`, provisions those users and their roles), and a local `etcd` for
//! `tessera up --profile distributed`, started under the state directory and stopped with the
//! system. Production runs its own cluster and gives its root user's URL to the control plane.

use std::path::Path;

use anyhow::Context;
use tessera::identity::ControlKeys;
use tessera::registry::etcd::EtcdSettings;
use tessera_control::etcd_password;

use crate::engine::LocalEngine;

/// The registry URL `principal`'s process connects with (`control`, `gateway`,
/// `service:<name>`): the control plane's is the system's URL as given, or as `root` when it
/// names no user (an etcd `up` started); every other process's names its own user.
pub fn url_of(registry: &str, principal: &str, keys: &ControlKeys) -> anyhow::Result<String> {
    let settings = EtcdSettings::parse(registry).map_err(|e| anyhow::anyhow!("system.registry: {e}"))?;
    let user = match principal {
        "control" if settings.user().is_some() => return Ok(registry.to_string()),
        "control" => "root".to_string(),
        other => settings.user_of(other.strip_prefix("service:").unwrap_or(other)),
    };
    Ok(settings.as_user(&user, &etcd_password(keys, &user)).to_url())
}

/// A local `etcd` for the system on `port` (its peer port the next one), its data under the
/// state directory.
pub fn start_local(state_dir: &Path, port: u16) -> anyhow::Result<(LocalEngine, String)> {
    let dir = state_dir.join("etcd");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let client = format!("http://127.0.0.1:{port}");
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
        .args(["--log-level", "warn"]);
    let engine = LocalEngine::start(command, "etcd", "etcd-server", dir, port)?;
    Ok((engine, format!("etcd://127.0.0.1:{port}")))
}
