//! Runs one process of the system and keeps it running.
//!
//! Each process runs in its own process group (so a Ctrl-C in the terminal reaches only the
//! runner, which then stops the tree in order) and is told to die with the runner
//! (`PR_SET_PDEATHSIG`), so that even a `kill -9` of the runner leaves nothing behind. A
//! process that exits while the system is up is restarted with exponential backoff, reset
//! once it has stayed up for a while. Stopping sends SIGTERM, waits for the grace period,
//! then SIGKILLs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::output::{self, Prefix};

/// How to start one process.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    /// Display name, e.g. `catalog-2`.
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// For a service instance: the registry to tell at once when the process dies, so that
    /// nothing is routed to it while its TTL runs out.
    pub registry: Option<(tessera::registry::RegistryClient, String)>,
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A process that ran this long is considered healthy: its next restart is quick again.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Runs `spec` until `stop` turns true, restarting it when it dies.
pub async fn supervise(
    spec: ProcSpec,
    index: usize,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let prefix = Prefix::new(&spec.name, index);
    let mut backoff = BACKOFF_START;
    let mut restarts: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn(&spec, &prefix, restarts) {
            Ok(c) => c,
            Err(e) => {
                output::say(&format!("{}: cannot start {:?}: {e}", spec.name, spec.argv));
                if sleep_or_stop(&mut stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = exited else {
            terminate(&spec.name, &mut child, grace).await;
            return;
        };
        if *stop.borrow() {
            return;
        }
        if started.elapsed() > STABLE_AFTER {
            backoff = BACKOFF_START;
        }
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        output::say(&format!(
            "{} exited ({status}); restarting in {backoff:?}",
            spec.name
        ));
        if let Some((registry, instance)) = &spec.registry {
            // Best effort: if the control plane is down too, the TTL does the same job.
            let _ = registry.deregister(instance).await;
        }
        if sleep_or_stop(&mut stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        restarts += 1;
    }
}

/// `true` if stopped while sleeping.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    !slept || *stop.borrow()
}

/// Starts `spec`, telling it how many times it was restarted before (`TESSERA_RESTARTS`: an
/// instance registers it, and the console shows it).
fn spawn(spec: &ProcSpec, prefix: &Prefix, restarts: u32) -> std::io::Result<Child> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = Command::new(program);
    // The control keys an operator gave the runner reach no child but the one a spec names
    // them for (the control plane): with them, a process could make anyone's credential.
    cmd.env_remove(tessera::identity::KEYS_ENV);
    cmd.args(args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(tessera::RESTARTS_ENV, restarts.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(output::pump(out, prefix.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(output::pump(err, prefix.clone()));
    }
    Ok(child)
}

/// The child is killed if this process dies (even by SIGKILL), so nothing it started outlives it.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child's own attributes.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
pub(crate) fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(name: &str, child: &mut Child, grace: Duration) {
    signal(child, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        output::say(&format!("{name} did not stop within {grace:?}; killing it"));
        let _ = child.kill().await;
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
