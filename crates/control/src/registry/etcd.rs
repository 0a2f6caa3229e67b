//! The registry's API in front of etcd (`docs/scale-out.md`): what a process that is not Rust
//! (and registers over HTTP) gets when the system's registry is etcd. Rust processes write
//! their own keys; this does the same for the others, as the control plane's etcd user.
//!
//! The control plane follows the instances prefix (as every reader does) to answer reads and
//! long-polls, with etcd's revision as the index; a registration through the API is a key under
//! a lease of its TTL, a heartbeat refreshes that lease, and leaving revokes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tessera::registry::etcd::{self, Entries, EtcdSettings};
use tessera::registry::{Catalog, Registration};
use tokio::sync::watch;

/// How long a registration made here is trusted before etcd's own view shows it.
const RECENT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why etcd could not be asked.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl From<etcd_client::Error> for Unavailable {
    fn from(e: etcd_client::Error) -> Self {
        Self(e.to_string())
    }
}

pub struct EtcdRegistry {
    settings: EtcdSettings,
    client: tokio::sync::Mutex<Option<etcd_client::Client>>,
    /// Every instance as last read from etcd.
    mirror: RwLock<Arc<Entries>>,
    /// The lease of each instance this control plane registered, by id: a heartbeat that comes
    /// before the mirror has seen the key still finds it.
    leases: Mutex<HashMap<String, (String, i64, std::time::Instant)>>,
    /// Whether etcd has been read at least once.
    loaded: std::sync::atomic::AtomicBool,
}

impl EtcdRegistry {
    /// Follows the instances on etcd, bumping `index` to each revision.
    pub fn start(settings: EtcdSettings, index: watch::Sender<u64>) -> Arc<Self> {
        let registry = Arc::new(Self {
            settings: settings.clone(),
            client: tokio::sync::Mutex::new(None),
            mirror: RwLock::default(),
            leases: Mutex::default(),
            loaded: Default::default(),
        });
        let follower = Arc::downgrade(&registry);
        tokio::spawn(etcd::follow(settings, move |entries, revision| {
            let Some(registry) = follower.upgrade() else {
                return false;
            };
            *registry.mirror.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries.clone());
            registry
                .loaded
                .store(true, std::sync::atomic::Ordering::Release);
            index.send_replace(revision.max(1) as u64);
            true
        }));
        registry
    }

    async fn client(&self) -> Result<etcd_client::Client, Unavailable> {
        let mut held = self.client.lock().await;
        if let Some(client) = &*held {
            return Ok(client.clone());
        }
        let client = self.settings.connect().await?;
        *held = Some(client.clone());
        Ok(client)
    }

    /// Drops the client after a failure, so that the next call connects afresh.
    async fn forget_client(&self) {
        *self.client.lock().await = None;
    }

    fn mirror(&self) -> Arc<Entries> {
        self.mirror
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The owner and lease of instance `id`: as this control plane registered it moments ago
    /// (fresher than the mirror, which may still show an earlier lease of a re-registration
    /// or not show it yet), else as etcd last showed it. Registrations are remembered for a
    /// few seconds.
    fn find(&self, id: &str) -> Option<(String, i64)> {
        {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            leases.retain(|_, (_, _, at)| at.elapsed() < RECENT);
            if let Some((owner, lease, _)) = leases.get(id) {
                return Some((owner.clone(), *lease));
            }
        }
        self.mirror()
            .values()
            .find(|e| e.instance.id == id)
            .map(|e| (e.instance.service.clone(), e.lease))
    }

    /// [`Self::find`], if `allowed` lets `id`'s owner's instance be touched.
    fn find_allowed<E>(
        &self,
        id: &str,
        allowed: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<Option<(String, i64)>, E> {
        match self.find(id) {
            Some((owner, lease)) => allowed(&owner).map(|()| Some((owner, lease))),
            None => Ok(None),
        }
    }

    /// The service holding `id`, when it is another than `service`.
    pub fn taken(&self, id: &str, service: &str) -> Option<String> {
        self.find(id)
            .map(|(owner, _)| owner)
            .filter(|o| o != service)
    }

    pub async fn register(&self, reg: &Registration) -> Result<(), Unavailable> {
        let mut client = self.client().await?;
        match etcd::put_under_lease(&mut client, &self.settings, reg).await {
            Ok(lease) => {
                self.leases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        reg.instance.id.clone(),
                        (
                            reg.instance.service.clone(),
                            lease,
                            std::time::Instant::now(),
                        ),
                    );
                // An earlier lease of the same instance lapses by itself (revoking it here
                // could race a concurrent registration and take the key with it).
                Ok(())
            }
            Err(e) => {
                self.forget_client().await;
                Err(e.into())
            }
        }
    }

    /// Refreshes `id`'s lease if `allowed` lets its owner's instance be touched; `false` if it
    /// is unknown or its lease lapsed.
    pub async fn heartbeat<E>(
        &self,
        id: &str,
        allowed: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<Result<bool, E>, Unavailable> {
        let (_, lease) = match self.find_allowed(id, allowed) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Ok(false)),
            Err(refused) => return Ok(Err(refused)),
        };
        let mut client = self.client().await?;
        match etcd::keep_alive_once(&mut client, lease).await {
            Ok(alive) => {
                if !alive {
                    self.leases
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(id);
                }
                Ok(Ok(alive))
            }
            Err(e) => {
                self.forget_client().await;
                Err(e.into())
            }
        }
    }

    /// Removes `id` if `allowed` lets its owner's instance be removed; `false` if unknown.
    pub async fn deregister<E>(
        &self,
        id: &str,
        allowed: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<Result<bool, E>, Unavailable> {
        let (owner, lease) = match self.find_allowed(id, allowed) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Ok(false)),
            Err(refused) => return Ok(Err(refused)),
        };
        // Revoking the lease the entry hangs on removes it; a process that is in fact alive
        // sees its lease gone and registers again (as a 404 makes it on one machine), and a
        // removal that comes late, after a new incarnation registered under a new lease, takes
        // nothing of it.
        let mut client = self.client().await?;
        let removed = if lease != 0 {
            client.lease_revoke(lease).await.map(drop)
        } else {
            let key = format!("{}{id}", self.settings.service_prefix(&owner));
            client.delete(key.as_str(), None).await.map(drop)
        };
        match removed {
            Ok(()) => {}
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {}
            Err(e) => {
                self.forget_client().await;
                return Err(e.into());
            }
        }
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        tracing::info!(instance = %id, "deregistered");
        Ok(Ok(true))
    }

    /// Every instance, at the mirror's revision `index`; settling until etcd has been read (a
    /// reader keeps what it knew rather than take an empty view).
    pub fn catalog(&self, index: u64) -> Catalog {
        let mut catalog = Catalog {
            index,
            settling: !self.loaded.load(std::sync::atomic::Ordering::Acquire),
            ..Default::default()
        };
        for entry in self.mirror().values() {
            catalog
                .services
                .entry(entry.instance.service.clone())
                .or_default()
                .push(entry.instance.clone());
        }
        for list in catalog.services.values_mut() {
            list.sort_by(|a, b| a.id.cmp(&b.id));
        }
        catalog
    }
}
