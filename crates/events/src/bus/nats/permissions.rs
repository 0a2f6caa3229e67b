//! What each process may do on NATS: the internal plane's rule ("a service publishes only the
//! topics the manifest says it produces, under its own name, and reads only what it
//! consumes") written as a NATS user's permissions, so that the server, not the publishing
//! process, enforces it (`docs/scale-out.md`, `docs/security.md`).
//!
//! Each service connects as a user named after it, with a password derived for it from the
//! control keys (`tessera nats config` and `tessera up` hand it over in the service's bus
//! URL; it is not the service's credential, which NATS never sees), and its replies come to
//! an inbox prefix of its own (`_INBOX_<service>`), the only subjects it may subscribe to.
//! It may publish events only under its own producer token and only to the topics it
//! produces (and its group's dead letters), so no service can publish as another; it may
//! reach the JetStream API only for the streams of its topics, the durable consumers of its
//! own group (named after it) on the topics it consumes, and its own entries in the groups
//! bucket. Streams are declared by the control plane (whose user may do anything), never by
//! a service: a service that could make a stream could make one that captures another's
//! subjects.

use serde_json::{Value, json};

use super::escape;

/// What a service's NATS user may do.
pub struct Grants<'a> {
    pub service: &'a str,
    pub produces: &'a [String],
    pub consumes: &'a [String],
    /// Partitions per topic (the bus URL's `partitions`).
    pub partitions: u32,
}

/// The `permissions` of `grants.service`'s user, under subject prefix `prefix`.
pub fn permissions(prefix: &str, grants: &Grants<'_>) -> Value {
    let s = grants.service;
    let bucket = format!("{prefix}-groups");
    let stream = |topic: &str| format!("{prefix}-{}", escape(topic));
    let dead_letters = crate::dead_letter_topic(s);
    let mut publish: Vec<String> = grants
        .produces
        .iter()
        .chain([&dead_letters])
        .map(|topic| format!("{prefix}.{topic}.{s}.*"))
        .collect();
    publish.push("$JS.API.INFO".into());
    publish.push(format!("$JS.API.STREAM.INFO.KV_{bucket}"));
    for topic in grants
        .produces
        .iter()
        .chain(grants.consumes)
        .chain([&dead_letters])
    {
        publish.push(format!("$JS.API.STREAM.INFO.{}", stream(topic)));
    }
    let group = escape(s);
    for topic in grants.consumes {
        let stream = stream(topic);
        // Its group's document in the groups bucket, read and written by compare-and-set.
        let key = format!("$KV.{bucket}.{}.{group}", escape(topic));
        publish.push(format!("$JS.API.DIRECT.GET.KV_{bucket}.{key}"));
        publish.push(key);
        // Its group's durable consumer of each partition, and nobody else's.
        for p in 0..grants.partitions {
            let durable = format!("{group}-{p}");
            publish.extend([
                format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"),
                format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
                // Made again from its ack floor when a member takes the partition over.
                format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
                format!("$JS.ACK.{stream}.{durable}.>"),
            ]);
        }
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

/// Where a server's TLS files are: its certificate chain and key (its identity in the
/// system, `nats`), and the system CA its clients' certificates must come from.
pub struct ServerTls {
    pub chain: String,
    pub key: String,
    pub ca: String,
}

/// A `nats-server` configuration (JSON, which its configuration format takes) listening on
/// `listen`, JetStream in `store_dir`, with `users` (`(name, password, permissions)`;
/// permissions `None`: everything), and with `tls` only TLS with client certificates. The
/// passwords are written as bcrypt hashes, so that a copy of the file gives none of them away
/// (at bcrypt's least cost: each is a 256-bit secret derived for its user, which no amount
/// of hashing work makes safer against guessing, and NATS hashes on every connection).
pub fn server_config(
    listen: &str,
    store_dir: &str,
    users: &[User],
    tls: Option<&ServerTls>,
) -> Value {
    let users: Vec<Value> = users
        .iter()
        .map(|(user, password, permissions)| {
            let hashed = bcrypt::hash(password, 4).expect("bcrypt takes any password at cost 4");
            let mut u = json!({ "user": user, "password": hashed });
            if let Some(p) = permissions {
                u["permissions"] = p.clone();
            }
            u
        })
        .collect();
    let mut config = json!({
        "listen": listen,
        "jetstream": { "store_dir": store_dir },
        "authorization": { "users": users },
    });
    if let Some(tls) = tls {
        config["tls"] = json!({
            "cert_file": tls.chain,
            "key_file": tls.key,
            "ca_file": tls.ca,
            "verify": true,
            "timeout": 2,
        });
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_holds_no_password_only_its_hash() {
        let secret = "a-derived-secret-of-forty-three-characters!";
        let config = server_config(
            "127.0.0.1:4222",
            "/tmp/js",
            &[("order".into(), secret.into(), None)],
            None,
        );
        let text = config.to_string();
        assert!(!text.contains(secret), "{text}");
        let hashed = config["authorization"]["users"][0]["password"]
            .as_str()
            .unwrap();
        assert!(hashed.starts_with("$2"), "{hashed}");
        assert!(bcrypt::verify(secret, hashed).unwrap());
        assert!(!bcrypt::verify("another", hashed).unwrap());
    }

    #[test]
    fn a_service_publishes_under_its_own_name_only() {
        let p = permissions(
            "t",
            &Grants {
                service: "order",
                produces: &["order.events".into()],
                consumes: &["saga.replies".into()],
                partitions: 4,
            },
        );
        let publish: Vec<&str> = p["publish"]["allow"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(publish.contains(&"t.order.events.order.*"));
        assert!(publish.contains(&"$JS.API.CONSUMER.MSG.NEXT.t-saga_-replies.order-3"));
        // No wildcard reaches another group's consumers or any stream's making.
        assert!(
            !publish
                .iter()
                .any(|s| s.contains("CONSUMER") && s.ends_with(".*"))
        );
        assert!(!publish.iter().any(|s| s.contains("STREAM.CREATE")));
        assert!(
            !publish
                .iter()
                .any(|s| *s == ">" || s.starts_with("t.saga.replies"))
        );
        assert_eq!(p["subscribe"]["allow"][0], "_INBOX_order.>");
    }
}
