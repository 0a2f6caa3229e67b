//! Where the control plane keeps what it decides (the services' configuration versions, the
//! rollouts and their traffic table): files in its state directory, or, when the registry is on
//! etcd (the distributed profile), keys on that etcd under `<prefix>/control/`, so that a
//! control plane started on another host, or after its disk is gone, goes on with the same.
//!
//! Two shapes: a document written whole (`write`: a reader sees the old one or the new one,
//! never half) and a log of records, each under a key of its own (`append`), read back in key
//! order (`records`). On etcd each is one put, acknowledged once the cluster has it; in files
//! a document is written aside and renamed over, and the configuration keeps its own
//! append-only file (`config.rs`), as before.

use std::path::PathBuf;
use std::sync::Arc;

use tessera::registry::etcd::EtcdSettings;

/// The control plane's durable store.
#[derive(Clone)]
pub enum Durable {
    /// Files in the control plane's state directory.
    Files(PathBuf),
    /// Keys under `<prefix>/control/` on the registry's etcd.
    Etcd(Arc<EtcdStore>),
}

/// Tries of a read at start: about 25 s in all (an etcd starting, or provisioned by a control
/// plane beside many others at once).
const STARTING: u32 = 16;

pub struct EtcdStore {
    settings: EtcdSettings,
    client: tokio::sync::Mutex<Option<etcd_client::Client>>,
}

impl Durable {
    /// On the registry's etcd when `registry_url` names one, else in `dir`.
    pub fn for_system(dir: &std::path::Path, registry_url: Option<&str>) -> anyhow::Result<Self> {
        match registry_url {
            Some(url) => {
                let settings = EtcdSettings::parse(url)
                    .map_err(|e| anyhow::anyhow!("TESSERA_REGISTRY_URL: {e}"))?;
                Ok(Self::Etcd(Arc::new(EtcdStore {
                    settings,
                    client: tokio::sync::Mutex::new(None),
                })))
            }
            None => {
                std::fs::create_dir_all(dir)?;
                Ok(Self::Files(dir.to_path_buf()))
            }
        }
    }

    /// Whether it is on etcd.
    pub fn on_etcd(&self) -> bool {
        matches!(self, Self::Etcd(_))
    }

    /// The document `name`, if it was written.
    pub async fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Self::Files(dir) => match std::fs::read(dir.join(name)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Self::Etcd(store) => {
                let key = store.key(name);
                let got = store
                    .patiently(STARTING, |mut client| {
                        let key = key.clone();
                        async move { client.get(key, None).await }
                    })
                    .await?;
                Ok(got.kvs().first().map(|kv| kv.value().to_vec()))
            }
        }
    }

    /// Writes the document `name` whole.
    pub async fn write(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Self::Files(dir) => {
                let (path, aside) = (dir.join(name), dir.join(format!("{name}.new")));
                tokio::task::spawn_blocking(move || {
                    std::fs::write(&aside, bytes)?;
                    std::fs::rename(&aside, &path)
                })
                .await??;
                Ok(())
            }
            Self::Etcd(store) => {
                // Twice at most: a client made before etcd's authentication was turned on is
                // refused once, and made again with the user.
                let key = store.key(name);
                store
                    .patiently(2, |mut client| {
                        let (key, bytes) = (key.clone(), bytes.clone());
                        async move { client.put(key, bytes, None).await }
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// Adds a record to the log `log` under `key` (records are read back in key order).
    /// Etcd only: in files, a log is the caller's own append-only file.
    pub async fn append(&self, log: &str, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.write(&format!("{log}/{key}"), bytes).await
    }

    /// Every record of the log `log`, in key order (etcd only).
    pub async fn records(&self, log: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        match self {
            Self::Files(_) => Ok(Vec::new()),
            Self::Etcd(store) => {
                let prefix = store.key(&format!("{log}/"));
                let got = store
                    .patiently(STARTING, |mut client| {
                        let prefix = prefix.clone();
                        let options = etcd_client::GetOptions::new().with_prefix().with_sort(
                            etcd_client::SortTarget::Key,
                            etcd_client::SortOrder::Ascend,
                        );
                        async move { client.get(prefix, Some(options)).await }
                    })
                    .await?;
                Ok(got.kvs().iter().map(|kv| kv.value().to_vec()).collect())
            }
        }
    }
}

impl EtcdStore {
    fn key(&self, name: &str) -> String {
        format!("{}/control/{name}", self.settings.prefix)
    }

    async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let mut held = self.client.lock().await;
        if let Some(client) = &*held {
            return Ok(client.clone());
        }
        let client = match self.settings.connect().await {
            Ok(client) => client,
            // An etcd the control plane is still provisioning (it turns authentication on
            // last): read and write without a user until then.
            Err(e) if e.to_string().contains("authentication is not enabled") => {
                self.settings.connect_as(None).await?
            }
            Err(e) => return Err(e.into()),
        };
        *held = Some(client.clone());
        Ok(client)
    }

    /// `op`, tried `tries` times, waiting longer each time (an etcd starting or being
    /// provisioned).
    async fn patiently<T, F, Fut>(&self, tries: u32, op: F) -> anyhow::Result<T>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut wait = std::time::Duration::from_millis(100);
        for _ in 1..tries {
            let outcome = match self.client().await {
                Ok(client) => self.attempt(op(client).await).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the control plane's state on etcd (yet)");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(2));
        }
        let client = self.client().await?;
        self.attempt(op(client).await).await
    }

    /// `result`, dropping the client after a failure so that the next call connects afresh.
    async fn attempt<T>(&self, result: Result<T, etcd_client::Error>) -> anyhow::Result<T> {
        if result.is_err() {
            *self.client.lock().await = None;
        }
        Ok(result?)
    }
}
