//! `tessera config get|set|unset|history|rollback`: a running system's settings, changed
//! through the control plane, which checks each change with a running instance, keeps every
//! version and tells the services, which apply it within a second (`docs/config.md`).

use std::path::Path;

use serde_json::{Value, json};
use tessera_manifest::Manifest;

use crate::control::{call, client, get};

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// A service's settings: the manifest's, and the changes in force (secrets masked).
    Get {
        service: String,
        key: Option<String>,
    },
    /// Changes a setting (checked by a running instance first; refused, nothing changes).
    Set {
        service: String,
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Drops a change: the manifest's value again.
    Unset { service: String, key: String },
    /// The versions of a service's changes, newest first.
    History { service: String },
    /// Restores the changes in force at a version (the one before the latest by default; 0 is
    /// none, the manifest's values).
    Rollback {
        service: String,
        version: Option<u64>,
    },
}

pub async fn run(
    manifest: &Manifest,
    state_dir: &Path,
    command: ConfigCommand,
) -> anyhow::Result<()> {
    let (service, key) = match &command {
        ConfigCommand::Get { service, key } => (service, key.as_ref()),
        ConfigCommand::Set { service, key, .. } | ConfigCommand::Unset { service, key } => {
            (service, Some(key))
        }
        ConfigCommand::History { service } | ConfigCommand::Rollback { service, .. } => {
            (service, None)
        }
    };
    // Both go into the URL: plain names only.
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !plain(service) || key.is_some_and(|k| !plain(k)) {
        anyhow::bail!("a service's and a setting's names are letters, digits, - and _");
    }
    let (http, base) = client(manifest, state_dir)?;
    let url = |service: &str, rest: &str| format!("{base}/v1/config/{service}{rest}");
    match command {
        ConfigCommand::Get { service, key } => {
            let view = get(&http, &url(&service, "")).await?;
            print!("{}", settings(&view, key.as_deref()));
        }
        ConfigCommand::Set {
            service,
            key,
            value,
        } => {
            let body = json!({ "value": value });
            let done = call(
                &http,
                reqwest::Method::PUT,
                &url(&service, &format!("/{key}")),
                Some(&body),
            )
            .await?;
            println!("{}", taken(&done));
        }
        ConfigCommand::Unset { service, key } => {
            let done = call(
                &http,
                reqwest::Method::DELETE,
                &url(&service, &format!("/{key}")),
                None,
            )
            .await?;
            println!("{}", taken(&done));
        }
        ConfigCommand::History { service } => {
            let history = get(&http, &url(&service, "/history")).await?;
            print!("{}", versions(&history));
        }
        ConfigCommand::Rollback { service, version } => {
            let body = json!({ "version": version });
            let done = call(
                &http,
                reqwest::Method::POST,
                &url(&service, "/rollback"),
                Some(&body),
            )
            .await?;
            println!("{}", taken(&done));
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `KEY  value  (source)` per setting, the changes over the manifest's.
fn settings(view: &Value, only: Option<&str>) -> String {
    let mut rows: std::collections::BTreeMap<String, (String, &str)> = Default::default();
    for (source, field) in [("manifest", "manifest"), ("changed", "changes")] {
        if let Some(map) = view[field].as_object() {
            for (k, v) in map {
                rows.insert(k.clone(), (text(v), source));
            }
        }
    }
    let mut out = format!(
        "{} — version {}\n",
        text(&view["service"]),
        view["version"].as_u64().unwrap_or(0)
    );
    for (k, (v, source)) in rows
        .iter()
        .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
    {
        out.push_str(&format!("{k:<28} {v:<24} ({source})\n"));
    }
    if let Some(key) = only
        && !rows.contains_key(key)
    {
        out.push_str(&format!(
            "{key} is not set (the service's default applies)\n"
        ));
    }
    out
}

fn taken(done: &Value) -> String {
    let version = done["version"].as_u64().unwrap_or(0);
    match done["action"].as_str() {
        Some("rollback") => format!(
            "{}: version {version} restores version {}",
            text(&done["service"]),
            text(&done["to"])
        ),
        _ => format!(
            "{}: version {version}, {} {} → {}",
            text(&done["service"]),
            text(&done["key"]),
            text(&done["old"]),
            text(&done["new"])
        ),
    }
}

fn versions(history: &Value) -> String {
    let mut out = format!(
        "{:<8} {:<24} {:<10} {:<10} change\n",
        "VERSION", "AT", "WHO", "ACTION"
    );
    for v in history["versions"].as_array().into_iter().flatten() {
        let at = v["at"].as_i64().unwrap_or(0);
        let change = match v["action"].as_str() {
            Some("rollback") => format!("to version {}", text(&v["to"])),
            _ => format!(
                "{} {} → {}",
                text(&v["key"]),
                text(&v["old"]),
                text(&v["new"])
            ),
        };
        out.push_str(&format!(
            "{:<8} {:<24} {:<10} {:<10} {change}\n",
            v["version"].as_u64().unwrap_or(0),
            tessera::trace::rfc3339_of_ms(at),
            text(&v["who"]),
            text(&v["action"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_show_the_changes_over_the_manifest() {
        let view = json!({
            "service": "payment-provider",
            "version": 2,
            "manifest": { "PROVIDER_DECLINE_OVER": "1000000", "PROVIDER_LATENCY_MS": "5" },
            "changes": { "PROVIDER_DECLINE_OVER": "500" },
        });
        let out = settings(&view, None);
        assert!(out.starts_with("payment-provider — version 2\n"), "{out}");
        assert!(
            out.contains("PROVIDER_DECLINE_OVER        500                      (changed)"),
            "{out}"
        );
        assert!(
            out.contains("PROVIDER_LATENCY_MS          5                        (manifest)"),
            "{out}"
        );
        let one = settings(&view, Some("PROVIDER_HANG"));
        assert!(one.contains("PROVIDER_HANG is not set"), "{one}");
    }
}
