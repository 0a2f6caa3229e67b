//! The gateway's HTTPS certificates: the operator's files (`gateway.tls.certificates`,
//! relative to the manifest), or, when none are named, a development certificate from a
//! development CA kept in `<state_dir>/tls/dev-ca` (`tessera_tls::authority`): HTTPS on a
//! laptop with one command, trusted once with the CA's `ca.pem` (README). And the system CA
//! of mutual TLS inside the system, with every process's identity certificate
//! (`tessera_tls::identity`).

use std::path::Path;

use tessera_manifest::Manifest;
use tessera_tls::{Authority, CertificateFiles};

/// The certificate files the gateway serves, made first if they are the development ones.
/// `tessera up` calls this before it starts the gateway (which calls it again: a no-op).
pub fn gateway_certificates(
    manifest: &Manifest,
    base: &Path,
    state_dir: &Path,
) -> anyhow::Result<Vec<CertificateFiles>> {
    let Some(settings) = &manifest.gateway.tls else {
        return Ok(Vec::new());
    };
    if !settings.certificates.is_empty() {
        return Ok(settings
            .certificates
            .iter()
            .map(|c| CertificateFiles {
                chain: base.join(&c.chain),
                key: base.join(&c.key),
            })
            .collect());
    }
    let dir = state_dir.join("tls");
    let ca = development_ca(state_dir, manifest)?;
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let ip = settings.listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    Ok(vec![ca.issue_server(&dir, "gateway", &names)?])
}

/// The development CA, created on first use.
pub fn development_ca(state_dir: &Path, manifest: &Manifest) -> anyhow::Result<Authority> {
    Authority::load_or_create(
        &state_dir.join("tls").join("dev-ca"),
        &format!("Tessera development CA ({})", manifest.system.name),
    )
}

/// The system CA (mutual TLS between the system's processes), created on first use.
pub fn system_ca(state_dir: &Path, manifest: &Manifest) -> anyhow::Result<Authority> {
    Authority::load_or_create(
        &state_dir.join("tls").join("system-ca"),
        &format!("Tessera system CA ({})", manifest.system.name),
    )
}

/// The variables that give a process `principal`'s identity (a certificate issued now if the
/// one on disk is missing or due), or nothing when mutual TLS is off.
pub fn identity_env(
    manifest: &Manifest,
    state_dir: &Path,
    principal: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    if !manifest.mtls() {
        return Ok(Vec::new());
    }
    let ca = system_ca(state_dir, manifest)?;
    let identity = tessera_tls::Identity::of_principal(&manifest.system.name, principal);
    let files = ca.issue_identity(&state_dir.join("tls").join("identities"), &identity)?;
    let path = |p: &Path| p.to_string_lossy().into_owned();
    use tessera_tls::internal::{CA_ENV, CERT_ENV, IDENTITY_ENV, KEY_ENV};
    Ok(vec![
        (CERT_ENV.into(), path(&files.chain)),
        (KEY_ENV.into(), path(&files.key)),
        (CA_ENV.into(), path(&ca.certificate())),
        (IDENTITY_ENV.into(), principal.to_string()),
    ])
}

/// Gives this process (the runner, or an operator's command) `principal`'s identity for its
/// own calls to the system, when mutual TLS is on.
pub fn install_own_identity(
    manifest: &Manifest,
    state_dir: &Path,
    principal: &str,
) -> anyhow::Result<()> {
    let env = identity_env(manifest, state_dir, principal)?;
    if env.is_empty() {
        return Ok(());
    }
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::path::PathBuf::from(v))
            .unwrap_or_default()
    };
    use tessera_tls::internal::{CA_ENV, CERT_ENV, KEY_ENV};
    let files = CertificateFiles {
        chain: get(CERT_ENV),
        key: get(KEY_ENV),
    };
    let own = tessera_tls::Identity::of_principal(&manifest.system.name, principal);
    let internal =
        tessera_tls::internal::Internal::load(&manifest.system.name, own, &files, &get(CA_ENV))?;
    tessera_tls::internal::install(internal);
    Ok(())
}

/// Issues again every identity certificate that is due, for as long as the system runs:
/// each process reads its files again when they change.
pub fn spawn_rotation(manifest: Manifest, state_dir: std::path::PathBuf) {
    if !manifest.mtls() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            for principal in manifest
                .principals()
                .iter()
                .chain(std::iter::once(&"control".to_string()))
            {
                if let Err(e) = identity_env(&manifest, &state_dir, principal) {
                    tracing::warn!(principal = %principal, error = format!("{e:#}"), "cannot renew an identity certificate");
                }
            }
        }
    });
}

/// A client for the control plane's plain routes (health): over mutual TLS when it is on.
pub fn control_client() -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    if let Some(tls) = tessera_tls::internal::get()
        && let Ok(config) = tls.client_config_for(&tls.identity_of("control"))
    {
        builder = builder.use_preconfigured_tls(config);
    }
    builder.build().unwrap_or_default()
}
