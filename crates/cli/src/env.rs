//! What a process of the system is given to start: the environment `tessera up` hands each
//! one, and `tessera env <principal>` prints for a process started by other means (on
//! another host, under another supervisor). One copy, so the two never differ.

use std::path::Path;

use tessera::events::{PRODUCERS_ENV, Producers};
use tessera::identity::{CREDENTIAL_ENV, ControlKeys, Principal};
use tessera_manifest::Manifest;

/// The environment of `principal` (`control` for the control plane) in the system of
/// `manifest`: the common part, its credential, its identity certificate (mutual TLS), and for
/// a service who may call it and who produces what.
pub fn of(
    manifest: &Manifest,
    state_dir: &Path,
    passport_keys: &str,
    control_keys: &ControlKeys,
    principal: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = vec![
        ("TESSERA_CONTROL_URL".to_string(), manifest.control_url()),
        ("TESSERA_SYSTEM".to_string(), manifest.system.name.clone()),
        (
            "TESSERA_DATA_DIR".to_string(),
            state_dir.join("data").to_string_lossy().into_owned(),
        ),
        (
            "TESSERA_PASSPORT_KEYS".to_string(),
            passport_keys.to_string(),
        ),
        (
            "TESSERA_HEARTBEAT_MS".to_string(),
            manifest.control.heartbeat_ms.to_string(),
        ),
        (
            "TESSERA_TTL_MS".to_string(),
            manifest.control.ttl_ms.to_string(),
        ),
        // What is traced, and where spans go besides the control plane's collector.
        (
            "TESSERA_TRACE_SAMPLE".to_string(),
            manifest.telemetry.sample.to_string(),
        ),
    ];
    if !manifest.telemetry.collect {
        env.push(("TESSERA_OTLP_COLLECTOR".into(), "false".into()));
    }
    if !manifest.telemetry.export.is_empty() {
        env.push((
            "TESSERA_OTLP_ENDPOINT".into(),
            manifest.telemetry.export.join(","),
        ));
    }
    if let Some(me) = Principal::parse(principal) {
        env.push((
            CREDENTIAL_ENV.into(),
            control_keys.issue(&me).token().into(),
        ));
    }
    env.extend(crate::tls::identity_env(manifest, state_dir, principal)?);
    let on_bus = principal == "control" || principal.starts_with("service:");
    if let Some(url) = manifest.bus_of(principal).filter(|_| on_bus) {
        // Each process as the NATS user of its own (`docs/scale-out.md`).
        let url = crate::nats::url_of(&url, principal, state_dir)?;
        env.push(("TESSERA_BUS_URL".into(), url));
    }
    let in_registry = on_bus || principal == "gateway";
    if let Some(url) = manifest.system.registry.as_ref().filter(|_| in_registry) {
        // Each process as the etcd user of its own (`docs/scale-out.md`).
        let url = crate::etcd::url_of(url, principal, control_keys)?;
        env.push(("TESSERA_REGISTRY_URL".into(), url));
    }
    // The gateways (limits, revocations) and the services (their caches), each as the Redis
    // user of its own; the control plane, which keeps nothing there, makes those users.
    let shares = on_bus || principal == "gateway";
    if let Some(url) = manifest.system.shared.as_ref().filter(|_| shares) {
        let url = crate::redis::url_of(url, principal, control_keys)?;
        env.push(("TESSERA_SHARED_URL".into(), url));
    }
    if let Some(name) = principal.strip_prefix("service:") {
        env.push(("TESSERA_SERVICE".into(), name.to_string()));
        if let Some(url) = manifest.database_of(name) {
            env.push(("TESSERA_DATABASE_URL".into(), url));
        }
        let replicas = manifest.database_replicas_of(name);
        if !replicas.is_empty() {
            env.push(("TESSERA_DATABASE_REPLICAS".into(), replicas.join(",")));
        }
        if manifest.mtls() {
            env.push((
                "TESSERA_TLS_CALLERS".into(),
                manifest.callers_of(name).join(","),
            ));
        }
        env.push((PRODUCERS_ENV.into(), Producers::spec(&manifest.producers())));
    }
    Ok(env)
}

/// `KEY='value'` lines a shell can `export` or `env` can take.
pub fn print(env: &[(String, String)]) {
    for (key, value) in env {
        println!("{key}='{}'", value.replace('\'', "'\\''"));
    }
}
