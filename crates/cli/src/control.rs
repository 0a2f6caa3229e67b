//! The control plane's API as the operator's commands call it: as the admin (its credential
//! from the state directory, its certificate under mutual TLS), a refusal shown as the
//! control plane words it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tessera::identity::Principal;
use tessera_manifest::Manifest;

use crate::{keys, tls};

/// An HTTP client of the control plane as the admin, and its base URL.
pub fn client(manifest: &Manifest, state_dir: &Path) -> anyhow::Result<(reqwest::Client, String)> {
    tls::install_own_identity(manifest, state_dir, "admin")?;
    let admin = keys::credential(state_dir, &Principal::Admin)?;
    Ok((
        tessera::registry::control_http(&admin),
        tessera::registry::control_base(&manifest.control_url()),
    ))
}

pub async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    call(http, reqwest::Method::GET, url, None).await
}

/// `method` on `url` with a JSON `body`; the answer's JSON, or the control plane's reason.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method, url).timeout(Duration::from_secs(15));
    if let Some(body) = body {
        request = request.json(body);
    }
    let resp = request.send().await.with_context(|| {
        format!("the control plane at {url} does not answer; is the system up?")
    })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        // `{"code", "message"}`, as every Tessera server refuses.
        let why = body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        anyhow::bail!("{}: {why}", status.as_u16());
    }
    Ok(body)
}
