//! Redis for the state a system's gateways and services share (`docs/scale-out.md`): each
//! process's URL with a Redis user of its own (`<prefix>-<name>`, its password derived from
//! the control keys; the control plane, as Redis's `default` user, makes those users), and a
//! local `redis-server` for `tessera up --profile distributed`, started under the state
//! directory with a `default` password derived from the control keys, kept in memory only
//! (rate-limit counters, revocations and caches are rebuilt as traffic flows), and stopped
//! with the system.

use std::path::Path;

use anyhow::Context;
use tessera::identity::ControlKeys;
use tessera::shared::RedisSettings;
use tessera_control::redis_password;
use tessera_manifest::Manifest;

use crate::engine::LocalEngine;

/// The shared-state URL `principal`'s process connects with (`control`, `gateway`,
/// `service:<name>`): the control plane's is the system's URL as given; every other
/// process's names its own user when the system's URL is Redis's `default` user's (else
/// everyone connects as that URL says: its users are the operator's to make).
pub fn url_of(shared: &str, principal: &str, keys: &ControlKeys) -> anyhow::Result<String> {
    let settings =
        RedisSettings::parse(shared).map_err(|e| anyhow::anyhow!("system.shared: {e}"))?;
    if principal == "control" || !settings.is_default_user() {
        return Ok(shared.to_string());
    }
    let user = settings.user_of(principal.strip_prefix("service:").unwrap_or(principal));
    Ok(settings
        .as_user(&user, &redis_password(keys, &user))
        .to_url())
}

/// Starts a local `redis-server` on loopback `port`: the engine and the URL to reach it with.
/// With the system's mutual TLS on, it takes TLS only (`rediss://`): a certificate for
/// 127.0.0.1 from the system CA, clients' certificates required and checked against it.
pub fn start_local(
    manifest: &Manifest,
    state_dir: &Path,
    port: u16,
    keys: &ControlKeys,
) -> anyhow::Result<(LocalEngine, String)> {
    let dir = state_dir.join("redis");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let password = redis_password(keys, "default");
    let listen = if manifest.mtls() {
        let ca = crate::tls::system_ca(state_dir, manifest)?;
        let names = ["127.0.0.1", "localhost"].map(String::from);
        let files = ca.issue_server(&state_dir.join("tls"), "redis", &names)?;
        format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients yes\n",
            files.chain.display(),
            files.key.display(),
            ca.certificate().display(),
        )
    } else {
        format!("port {port}\n")
    };
    // The password goes in a configuration file of the owner's alone, not on a command line
    // every user of the host can read. Memory is bounded: when full, what expires anyway
    // (limits, cache entries) goes first, never the revocations.
    let config = dir.join("redis.conf");
    crate::keys::write_private(
        &config,
        &format!(
            "bind 127.0.0.1\n{listen}requirepass {password}\nsave \"\"\nappendonly no\nmaxmemory 256mb\nmaxmemory-policy volatile-lru\ndir {}\n",
            dir.display()
        ),
    )?;
    let mut command = tokio::process::Command::new("redis-server");
    command.arg(&config);
    let engine = LocalEngine::start(command, "redis-server", "redis-server", dir, port)?;
    let scheme = if manifest.mtls() { "rediss" } else { "redis" };
    let url = format!(
        "{scheme}://:{}@127.0.0.1:{port}",
        tessera::identity::engine::encode(&password)
    );
    Ok((engine, url))
}
