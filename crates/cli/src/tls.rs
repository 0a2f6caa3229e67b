//! The gateway's HTTPS certificates: the operator's files (`gateway.tls.certificates`,
//! relative to the manifest), or, when none are named, a development certificate from a
//! development CA kept in `<state_dir>/tls/dev-ca` (`tessera_tls::authority`): HTTPS on a
//! laptop with one command, trusted once with the CA's `ca.pem` (README).

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
