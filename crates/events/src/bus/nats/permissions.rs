//! What each process may do on NATS: the internal plane's rule ("a service publishes only the
//! topics the manifest says it produces, under its own name, and reads only what it
//! consumes") written as a NATS user's permissions, so that the server, not the publishing
//! process, enforces it (`docs/scale-out.md`, `docs/security.md`).
//!
//! Each service connects as a user named after it, with its Tessera credential as password
//! ([`NatsBus::with_credential`](super::NatsBus::with_credential)), and its replies come to an
//! inbox prefix of its own (`_INBOX_<service>`), the only subjects it may subscribe to. It
//! may publish events only under its own producer token, so no service can publish as
//! another; and it may reach the JetStream API only for the streams of the topics it
//! consumes, its consumer groups' bookkeeping, and making streams. Deleting or purging a
//! stream is left to the control plane's user (all subjects).

use serde_json::{Value, json};

use super::escape;

/// What a service's NATS user may do.
pub struct Grants<'a> {
    pub service: &'a str,
    pub produces: &'a [String],
    pub consumes: &'a [String],
}

/// The `permissions` of `grants.service`'s user, under subject prefix `prefix`.
pub fn permissions(prefix: &str, grants: &Grants<'_>) -> Value {
    let s = grants.service;
    let bucket = format!("{prefix}-groups");
    let stream = |topic: &str| format!("{prefix}-{}", escape(topic));
    let mut publish: Vec<String> = grants
        .produces
        .iter()
        .map(|topic| format!("{prefix}.{topic}.{s}.*"))
        .collect();
    // Its consumer groups' dead letters (`deadletter.<service>` and `deadletter.<service>.<x>`).
    publish.push(format!("{prefix}.deadletter.{s}.{s}.*"));
    publish.push(format!("{prefix}.deadletter.{s}.*.{s}.*"));
    publish.extend([
        "$JS.API.INFO".to_string(),
        "$JS.API.STREAM.INFO.*".to_string(),
        "$JS.API.STREAM.CREATE.*".to_string(),
        format!("$KV.{bucket}.>"),
        format!("$JS.API.DIRECT.GET.KV_{bucket}"),
        format!("$JS.API.DIRECT.GET.KV_{bucket}.>"),
        format!("$JS.API.STREAM.MSG.GET.KV_{bucket}"),
    ]);
    for topic in grants.consumes {
        let stream = stream(topic);
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.*"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
            format!("$JS.ACK.{stream}.>"),
        ]);
    }
    json!({
        "publish": { "allow": publish },
        "subscribe": { "allow": [format!("{}.>", inbox_prefix(s))] },
    })
}

/// Where `service`'s replies come: a prefix of its own, so no one else reads them.
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX_{service}")
}

/// A user of the server: name, password, permissions (`None`: everything).
pub type User = (String, String, Option<Value>);

/// A `nats-server` configuration (JSON, which its configuration format takes) listening on
/// `listen`, JetStream in `store_dir`, with `users` (`(name, password, permissions)`;
/// permissions `None`: everything).
pub fn server_config(listen: &str, store_dir: &str, users: &[User]) -> Value {
    let users: Vec<Value> = users
        .iter()
        .map(|(user, password, permissions)| {
            let mut u = json!({ "user": user, "password": password });
            if let Some(p) = permissions {
                u["permissions"] = p.clone();
            }
            u
        })
        .collect();
    json!({
        "listen": listen,
        "jetstream": { "store_dir": store_dir },
        "authorization": { "users": users },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_publishes_under_its_own_name_only() {
        let p = permissions(
            "t",
            &Grants {
                service: "order",
                produces: &["order.events".into()],
                consumes: &["saga.replies".into()],
            },
        );
        let publish: Vec<&str> = p["publish"]["allow"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(publish.contains(&"t.order.events.order.*"));
        assert!(publish.contains(&"$JS.API.CONSUMER.MSG.NEXT.t-saga_-replies.*"));
        assert!(
            !publish
                .iter()
                .any(|s| *s == ">" || s.starts_with("t.saga.replies"))
        );
        assert_eq!(p["subscribe"]["allow"][0], "_INBOX_order.>");
    }
}
