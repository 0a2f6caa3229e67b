//! `tessera mail`: each sending service's mail queue (waiting, sent, dead, and the newest dead
//! messages with why), and `tessera mail requeue <service>`, which sends the dead ones again
//! once their cause is fixed (the admin's, through the control plane: `docs/mail.md`).

use std::path::Path;

use serde_json::Value;
use tessera_manifest::Manifest;

use crate::control;

/// `tessera mail [requeue <service>]`.
#[derive(clap::Subcommand, Debug)]
pub enum MailCommand {
    /// Send a service's dead messages again, due now, their attempts counted afresh.
    Requeue { service: String },
}

pub async fn run(
    manifest: &Manifest,
    state_dir: &Path,
    command: Option<MailCommand>,
) -> anyhow::Result<()> {
    let (http, base) = control::client(manifest, state_dir)?;
    let body = match &command {
        None => control::get(&http, &format!("{base}/v1/mail")).await?,
        Some(MailCommand::Requeue { service }) => {
            let url = format!("{base}/v1/mail/{service}/requeue");
            control::call(&http, reqwest::Method::POST, &url, None).await?
        }
    };
    match command {
        Some(MailCommand::Requeue { service }) => {
            println!("{service}: {} dead messages queued again", body["requeued"]);
        }
        None => {
            let services = body["services"].as_array().cloned().unwrap_or_default();
            if services.is_empty() {
                println!("no service sends mail (none has MAIL_SMTP_HOST set)");
            }
            for service in &services {
                print!("{}", describe(service));
            }
        }
    }
    Ok(())
}

/// One service's queue, for a person.
fn describe(service: &Value) -> String {
    let name = service["service"].as_str().unwrap_or("?");
    let queue = &service["queue"];
    if queue.is_null() {
        let why = service["error"].as_str().unwrap_or("no answer");
        return format!("{name}: {why}\n");
    }
    let mut out = format!(
        "{name}: {} waiting, {} sent, {} dead\n",
        queue["pending"], queue["sent"], queue["dead"]
    );
    for dead in queue["dead_messages"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  dead {} to {} after {} attempts: {}\n",
            dead["key"].as_str().unwrap_or("?"),
            dead["to_user"].as_str().unwrap_or("?"),
            dead["attempts"],
            dead["error"].as_str().unwrap_or("no error kept")
        ));
    }
    out
}
