//! A Tessera system, as it runs somewhere other than `tessera up`: `tessera deploy kubernetes`
//! renders the manifest as Kubernetes objects (`kubernetes.rs`), built as typed values
//! (k8s-openapi) rather than string templates, so that every object is one the API server
//! would take in shape, and a test can read each back into its type.
//!
//! The cluster runs the same processes `tessera up` does, from one image: the control plane
//! (one replica, its state on a volume), the gateways, and each service with its replicas. They
//! are given what `up` gives them (`tessera env`, computed by the CLI and handed in as a
//! [`Process`] each): their credentials and keys become Secrets, the services' own settings a
//! ConfigMap (secret ones a Secret), and the manifest itself, rewritten for the cluster
//! ([`in_cluster`]), a Secret (it names every setting and the engines' passwords) the control
//! plane and the gateways read (a gateway reloads its routes when it changes:
//! `docs/gateway.md`). The engines (PostgreSQL, NATS, etcd, Redis) are not run here: the
//! manifest names them by URL, as in the distributed profile.

mod kubernetes;

use std::collections::BTreeMap;

pub use kubernetes::{Object, parse, render, to_yaml};

/// Where everything listens in a pod: the same ports in every pod, each pod its own address.
pub mod ports {
    pub const CONTROL: u16 = 7070;
    pub const GATEWAY: u16 = 8080;
    pub const GATEWAY_ADMIN: u16 = 8081;
    pub const GATEWAY_HTTPS: u16 = 8443;
    pub const SERVICE: u16 = 8000;
    pub const SERVICE_ADMIN: u16 = 9000;
}

/// Where files are mounted in a pod.
pub mod paths {
    /// The manifest (`tessera.toml`), from a Secret.
    pub const MANIFEST_DIR: &str = "/etc/tessera";
    /// The control plane's state (event log, registry, telemetry, configuration), on a volume.
    pub const STATE_DIR: &str = "/var/lib/tessera";
    /// A process's identity certificate, key and the system's CA (mutual TLS), from a Secret.
    pub const IDENTITY_DIR: &str = "/etc/tessera-identity";
    /// The gateway's HTTPS certificates, from a Secret.
    pub const HTTPS_DIR: &str = "/etc/tessera-https";
    /// The gateway's static files (`[[files]]`), the `i`th mount under `<FILES_DIR>/<i>`, from
    /// a ConfigMap each.
    pub const FILES_DIR: &str = "/etc/tessera-files";
    /// Where the binaries are in the image.
    pub const BIN_DIR: &str = "/usr/local/bin";
}

/// What to render.
pub struct Plan {
    /// The system's name (labels, the default namespace).
    pub system: String,
    pub namespace: String,
    /// The image holding `tessera` and the services' binaries (the repository's Dockerfile).
    pub image: String,
    /// Images of their own for some services (one written in another language), by name.
    pub images: BTreeMap<String, String>,
    /// The manifest as the cluster reads it ([`in_cluster`]).
    pub manifest_text: String,
    /// How many gateways.
    pub gateways: u32,
    /// Whether the processes speak mutual TLS (then probes go to the plain admin listeners,
    /// and the control plane's to its port).
    pub mtls: bool,
    /// The control plane, the gateway, then each service.
    pub processes: Vec<Process>,
}

/// One kind of process, and what it is given.
pub struct Process {
    pub role: Role,
    /// What `tessera env` gives it (credential, keys, engines' URLs, `TESSERA_*`), paths
    /// already rewritten to where files are mounted: a Secret.
    pub env: Vec<(String, String)>,
    /// Files it reads from [`paths::IDENTITY_DIR`], by name.
    pub identity: BTreeMap<String, Vec<u8>>,
}

pub enum Role {
    Control,
    /// With its HTTPS certificates (file name → content), if any, and the files of each of
    /// the manifest's `[[files]]` mounts, in order (path under the mount → content).
    Gateway {
        https: BTreeMap<String, Vec<u8>>,
        files: Vec<BTreeMap<String, Vec<u8>>>,
    },
    Service(ServicePlan),
}

pub struct ServicePlan {
    pub name: String,
    pub replicas: u32,
    /// The program and its arguments, as the manifest says.
    pub command: Vec<String>,
    /// Its own settings: plain ones (a ConfigMap) and secret ones (a Secret).
    pub settings: Vec<(String, String)>,
    pub secret_settings: Vec<(String, String)>,
    /// Whether it keeps data in the pod (no database URL: an embedded SQLite file).
    pub embedded_data: bool,
}

/// The manifest `text` rewritten for the cluster: the control plane and the gateway listen on
/// every address of their pod at the fixed [`ports`], each gateway pod is a gateway of its own
/// (the Deployment says how many), state is under [`paths::STATE_DIR`], the HTTPS
/// certificates under [`paths::HTTPS_DIR`] (HTTPS with the development certificate is left
/// out: the load balancer's to terminate), static files under [`paths::FILES_DIR`], and no
/// build step is run. The rest stays as
/// written (comments are not kept).
pub fn in_cluster(text: &str) -> anyhow::Result<String> {
    let mut doc: toml::Table = text.parse()?;
    let section = |doc: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        match doc.remove(name) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(t)) => Ok(t),
            Some(_) => anyhow::bail!("{name}: not a table"),
        }
    };
    let any = |port: u16| toml::Value::String(format!("0.0.0.0:{port}"));
    let mut system = section(&mut doc, "system")?;
    system.insert("state_dir".into(), paths::STATE_DIR.into());
    system.remove("build");
    doc.insert("system".into(), system.into());
    let mut control = section(&mut doc, "control")?;
    control.insert("listen".into(), any(ports::CONTROL));
    doc.insert("control".into(), control.into());
    let mut gateway = section(&mut doc, "gateway")?;
    gateway.insert("listen".into(), any(ports::GATEWAY));
    gateway.insert("admin_listen".into(), any(ports::GATEWAY_ADMIN));
    gateway.insert("replicas".into(), 1.into());
    // Without certificates of its own, HTTPS would be a development certificate for this
    // machine: left out, for the load balancer in front to terminate.
    let development = match gateway.get("tls") {
        Some(toml::Value::Table(tls)) => match tls.get("certificates") {
            Some(toml::Value::Array(c)) => c.is_empty(),
            _ => true,
        },
        _ => false,
    };
    if development {
        gateway.remove("tls");
    }
    if let Some(toml::Value::Table(tls)) = gateway.get_mut("tls") {
        tls.insert("listen".into(), any(ports::GATEWAY_HTTPS));
        if let Some(toml::Value::Array(certificates)) = tls.get_mut("certificates") {
            for (i, certificate) in certificates.iter_mut().enumerate() {
                let mut files = toml::Table::new();
                let (chain, key) = https_files(i);
                files.insert(
                    "chain".into(),
                    format!("{}/{chain}", paths::HTTPS_DIR).into(),
                );
                files.insert("key".into(), format!("{}/{key}", paths::HTTPS_DIR).into());
                *certificate = files.into();
            }
        }
    }
    doc.insert("gateway".into(), gateway.into());
    if let Some(toml::Value::Array(mounts)) = doc.get_mut("files") {
        for (i, mount) in mounts.iter_mut().enumerate() {
            if let toml::Value::Table(mount) = mount {
                mount.insert("dir".into(), format!("{}/{i}", paths::FILES_DIR).into());
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

/// The names the `i`th HTTPS certificate's chain and key are mounted under.
pub fn https_files(i: usize) -> (String, String) {
    (format!("{i}-chain.pem"), format!("{i}-key.pem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_for_the_cluster_listens_on_the_pods_address_and_keeps_the_rest() {
        let text = r#"
[system]
name = "shop"
build = "cargo build --release"
database = "postgres://{service}@db/shop_{service}"

[control]
listen = "127.0.0.1:7070"
heartbeat_ms = 500

[gateway]
listen = "127.0.0.1:8080"
replicas = 3

[gateway.tls]
listen = "127.0.0.1:8443"
certificates = [{ chain = "certs/a.pem", key = "certs/a.key" }]

[[route]]
prefix = "/api"
service = "catalog"
auth = "public"

[[files]]
prefix = "/"
dir = "web"

[[files]]
prefix = "/docs"
dir = "../docs/site"

[services.catalog]
command = "target/release/shop-catalog"
"#;
        let cluster = in_cluster(text).unwrap();
        let m = tessera_manifest::Manifest::parse(&cluster).unwrap();
        assert_eq!(m.control.listen.to_string(), "0.0.0.0:7070");
        assert_eq!(m.control.heartbeat_ms, 500);
        assert_eq!(m.gateway.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(m.gateway.admin_listen.to_string(), "0.0.0.0:8081");
        assert_eq!(m.gateway.replicas, 1);
        let tls = m.gateway.tls.clone().unwrap();
        assert_eq!(tls.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(
            tls.certificates[0].chain.to_str(),
            Some("/etc/tessera-https/0-chain.pem")
        );
        assert_eq!(m.system.state_dir.to_str(), Some(paths::STATE_DIR));
        assert!(m.system.build.is_none());
        assert_eq!(m.routes.len(), 1);
        let dirs: Vec<_> = m.files.iter().map(|f| f.dir.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/etc/tessera-files/0", "/etc/tessera-files/1"]);
        assert!(m.system.database.is_some());
        // Not on loopback any more: mutual TLS is on unless the manifest turns it off.
        assert!(m.mtls());
        let development = text.replace(
            "certificates = [{ chain = \"certs/a.pem\", key = \"certs/a.key\" }]",
            "",
        );
        let m = tessera_manifest::Manifest::parse(&in_cluster(&development).unwrap()).unwrap();
        assert!(m.gateway.tls.is_none());
    }
}
