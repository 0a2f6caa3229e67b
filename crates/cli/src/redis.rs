//! Redis for what a system's gateways share (`docs/scale-out.md`): a local `redis-server` for
//! `tessera up --profile distributed`, started under the state directory with a password
//! derived from the control keys (the URL every gateway is given holds it), kept in memory
//! only (rate-limit counters and revocations are rebuilt as traffic flows), and stopped with
//! the system.

use std::path::Path;

use anyhow::Context;
use tessera::identity::ControlKeys;

use crate::engine::LocalEngine;

/// Starts a local `redis-server` on loopback `port`: the engine and the URL to reach it with.
pub fn start_local(
    state_dir: &Path,
    port: u16,
    keys: &ControlKeys,
) -> anyhow::Result<(LocalEngine, String)> {
    let dir = state_dir.join("redis");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let password = keys.secret_for("redis:default");
    // The password goes in a configuration file of the owner's alone, not on a command line
    // every user of the host can read.
    let config = dir.join("redis.conf");
    crate::keys::write_private(
        &config,
        &format!(
            "bind 127.0.0.1\nport {port}\nrequirepass {password}\nsave \"\"\nappendonly no\ndir {}\n",
            dir.display()
        ),
    )?;
    let mut command = tokio::process::Command::new("redis-server");
    command.arg(&config);
    let engine = LocalEngine::start(command, "redis-server", "redis-server", dir, port)?;
    let url = format!(
        "redis://:{}@127.0.0.1:{port}",
        tessera::identity::engine::encode(&password)
    );
    Ok((engine, url))
}
