//! `tessera reload`: every gateway reads the manifest again and swaps its routes, without a
//! restart and without failing a request (`tessera_gateway::reload`).
//!
//! The manifest has been read and validated here already (an invalid one stops the command
//! before any gateway is asked); the control plane then asks each gateway, as the admin, and
//! each checks the file again itself. One line per gateway says what it did.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tessera_manifest::Manifest;

use crate::control;

pub async fn run(manifest: &Manifest, state_dir: &Path) -> anyhow::Result<()> {
    let (http, base) = control::client(manifest, state_dir)?;
    let url = format!("{base}/v1/gateways/reload");
    let resp = http
        .post(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| {
            format!("the control plane at {url} does not answer; is the system up?")
        })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    for gateway in body["gateways"].as_array().into_iter().flatten() {
        println!("{}", describe(gateway));
    }
    if !status.is_success() {
        let why = body["message"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_string);
        anyhow::bail!("{}: {why}", status.as_u16());
    }
    Ok(())
}

/// One gateway's outcome, for a person.
fn describe(gateway: &Value) -> String {
    let id = gateway["gateway"].as_str().unwrap_or("?");
    match gateway["outcome"].as_str() {
        Some("applied") => {
            let r = &gateway["reloaded"];
            let mut line = if r["changed"] == true {
                format!(
                    "{id}: routes reloaded (reload {}, {} routes)",
                    r["version"], r["routes"]
                )
            } else {
                format!("{id}: unchanged ({} routes)", r["routes"])
            };
            let waiting: Vec<&str> = r["restart_needed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !waiting.is_empty() {
                line.push_str(&format!(
                    "; read only at start, applied at the next restart: {}",
                    waiting.join(", ")
                ));
            }
            line
        }
        Some(outcome) => format!(
            "{id}: {outcome}: {}",
            gateway["reason"].as_str().unwrap_or("no reason given")
        ),
        None => format!("{id}: {gateway}"),
    }
}
