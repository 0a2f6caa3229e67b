//! Changing the gateway's routes while it serves: its manifest read again, on request
//! (`tessera reload`, through the control plane to `POST /admin/reload`) or when the file
//! changes, and the route table swapped whole.
//!
//! What a reload changes: the routes (prefixes, services, auth modes, roles, rate limits,
//! fallbacks, WebSocket and gRPC passage) and every upstream's breaker, bulkhead, balancer and
//! retry settings. The table is one value behind an atomic pointer (`Gateway::routes`): a
//! request takes the table in force when it arrives and keeps it to its end, so a request in
//! flight finishes on the routes it started with, and the next one sees the new ones; no
//! connection is closed and nothing waits on a lock. What stays the same keeps its state
//! (`RouteTable::build`): the buckets of an unchanged rate limit, the breaker of an upstream
//! whose settings did not change.
//!
//! A manifest that does not parse or validate is refused with its error, and the running
//! table stays. So is one that changes where access tokens come from (`gateway.tokens`): the
//! token verifier is made at start, and routes that need tokens must not be served without
//! it. The rest of the gateway's settings (its listeners, timeouts, limits, TLS) are read at
//! start: a reload that changes them applies the routes and names those settings as waiting
//! for a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_manifest::Manifest;

use crate::proxy::Gateway;
use crate::routes::RouteTable;

/// Reloads one gateway's routes from its manifest file.
pub struct Reloader {
    gateway: Arc<Gateway>,
    path: PathBuf,
    /// Which of `gateway.replicas` this gateway is (its ports moved up by it).
    replica: u32,
    /// The manifest in force, its text, and how many reloads changed it: one reload at a
    /// time.
    running: tokio::sync::Mutex<Running>,
}

struct Running {
    /// The manifest the gateway started with: what settings read at start are compared to.
    started: Manifest,
    manifest: Manifest,
    text: String,
    version: u64,
}

/// What a reload did.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    /// Whether the manifest's text differed from the one in force.
    pub changed: bool,
    /// Reloads that changed something since start.
    pub version: u64,
    pub routes: usize,
    /// Settings the manifest changed that the gateway reads only at start.
    pub restart_needed: Vec<&'static str>,
}

impl Reloader {
    /// A reloader for `gateway`, serving `manifest` (as read from `path`, with `text`).
    pub fn new(
        gateway: Arc<Gateway>,
        path: PathBuf,
        replica: u32,
        manifest: Manifest,
        text: String,
    ) -> Self {
        Self {
            gateway,
            path,
            replica,
            running: tokio::sync::Mutex::new(Running {
                started: manifest.clone(),
                manifest,
                text,
                version: 0,
            }),
        }
    }

    /// Reads the manifest again and applies its routes; the running ones stay on an error,
    /// which says why in words for the person who asked.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let mut running = self.running.lock().await;
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        if text == running.text {
            return Ok(Reloaded {
                changed: false,
                version: running.version,
                routes: running.manifest.routes.len(),
                restart_needed: Vec::new(),
            });
        }
        let outcome = self.apply(&mut running, text);
        let label = if outcome.is_ok() {
            "applied"
        } else {
            "refused"
        };
        metrics::counter!("tessera_gateway_reloads_total", "outcome" => label).increment(1);
        match &outcome {
            Ok(r) => tracing::info!(
                version = r.version,
                routes = r.routes,
                restart_needed = ?r.restart_needed,
                "routes reloaded"
            ),
            Err(e) => tracing::warn!(error = %e, "manifest refused; the running routes stay"),
        }
        outcome
    }

    fn apply(&self, running: &mut Running, text: String) -> Result<Reloaded, String> {
        let manifest = Manifest::parse(&text)
            .map_err(|e| format!("{}{e}", self.path.display()))?
            .gateway_replica(self.replica);
        if format!("{:?}", manifest.gateway.tokens)
            != format!("{:?}", running.manifest.gateway.tokens)
        {
            return Err(
                "gateway.tokens changed: where tokens come from is read at start; restart the gateway"
                    .into(),
            );
        }
        if manifest.system.name != running.manifest.system.name {
            return Err(
                "system.name changed: it is every passport's audience; restart the system".into(),
            );
        }
        let restart_needed = read_at_start(&running.started, &manifest);
        let current = self.gateway.routes.load_full();
        let base = self.path.parent().unwrap_or(std::path::Path::new(""));
        let mut table = RouteTable::from_manifest(&manifest, Some(&current), base)?;
        running.version += 1;
        table.version = running.version;
        let routes = table.len();
        self.gateway.routes.store(Arc::new(table));
        running.manifest = manifest;
        running.text = text;
        Ok(Reloaded {
            changed: true,
            version: running.version,
            routes,
            restart_needed,
        })
    }

    /// Reloads whenever the file's text changes, checked every `gateway.reload_watch_ms` of
    /// the manifest in force (a reload may turn the watch off, or on again); a refused text is
    /// not tried again until it changes. Stops when the reloader is dropped.
    pub fn spawn_watch(self: Arc<Self>) {
        let me = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut refused: Option<String> = None;
            loop {
                let every = match me.upgrade() {
                    Some(me) => me.running.lock().await.manifest.gateway.reload_watch_ms,
                    None => break,
                };
                let watching = every > 0;
                let every = if watching { every } else { 1000 };
                tokio::time::sleep(Duration::from_millis(every)).await;
                let Some(me) = me.upgrade() else { break };
                if !watching {
                    continue;
                }
                let Ok(text) = tokio::fs::read_to_string(&me.path).await else {
                    continue;
                };
                if refused.as_ref() == Some(&text) || me.running.lock().await.text == text {
                    continue;
                }
                refused = me.reload().await.is_err().then_some(text);
            }
        });
    }
}

/// The gateway's settings that changed from `old` to `new` and are read only at start.
fn read_at_start(old: &Manifest, new: &Manifest) -> Vec<&'static str> {
    let (a, b) = (&old.gateway, &new.gateway);
    // Every field named, so that a new one cannot be forgotten here: the reload applies
    // `resilience`, `upstreams` and `reload_watch_ms`, refuses a change of `tokens`, and
    // names the others.
    let tessera_manifest::Gateway {
        listen: _,
        replicas: _,
        admin_listen: _,
        upstream_timeout_ms: _,
        header_timeout_ms: _,
        idle_timeout_ms: _,
        body_timeout_ms: _,
        min_body_rate: _,
        max_connections: _,
        max_body_bytes: _,
        max_response_bytes: _,
        websocket_idle_timeout_ms: _,
        websocket_max_ms: _,
        trusted_proxies: _,
        tls: _,
        http2: _,
        tokens: _,
        resilience: _,
        upstreams: _,
        reload_watch_ms: _,
    } = b;
    let mut out = Vec::new();
    macro_rules! compare {
        ($($field:ident),*) => {
            $(
                if format!("{:?}", a.$field) != format!("{:?}", b.$field) {
                    out.push(concat!("gateway.", stringify!($field)));
                }
            )*
        };
    }
    compare!(
        listen,
        replicas,
        admin_listen,
        upstream_timeout_ms,
        header_timeout_ms,
        idle_timeout_ms,
        body_timeout_ms,
        min_body_rate,
        max_connections,
        max_body_bytes,
        max_response_bytes,
        websocket_idle_timeout_ms,
        websocket_max_ms,
        trusted_proxies,
        tls,
        http2
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing;

    const BASE: &str = r#"
[system]
name = "shop"

[[route]]
prefix = "/api/catalog"
service = "catalog"
auth = "public"
rate_limit = { per_ip = "10/m" }

[[route]]
prefix = "/api/orders"
service = "order"

[gateway.tokens]
service = "auth"
jwks_path = "/jwks"
revocations_path = "/revocations"
issuer = "https://auth.test"
audience = "shop"

[services.catalog]
command = "catalog"

[services.order]
command = "order"

[services.auth]
command = "auth"
"#;

    /// A directory of its own, removed at the end.
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A gateway serving `BASE` from a file in a directory of its own, and its reloader.
    fn reloader() -> (Dir, Arc<Gateway>, Reloader) {
        let dir = std::env::temp_dir().join(format!(
            "tessera-reload-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Dir(dir);
        let path = dir.0.join("tessera.toml");
        std::fs::write(&path, BASE).unwrap();
        let manifest = Manifest::parse(BASE).unwrap();
        let gateway = Arc::new(testing::gateway(
            RouteTable::from_manifest(&manifest, None, std::path::Path::new("")).unwrap(),
        ));
        let reloader = Reloader::new(gateway.clone(), path, 0, manifest, BASE.into());
        (dir, gateway, reloader)
    }

    fn write(dir: &Dir, text: &str) {
        std::fs::write(dir.0.join("tessera.toml"), text).unwrap();
    }

    fn service_of(gateway: &Gateway, path: &str) -> Option<String> {
        let table = gateway.routes.load();
        table.find(path).unwrap().map(|r| r.service.clone())
    }

    #[tokio::test]
    async fn a_changed_manifest_swaps_the_routes_and_keeps_what_did_not_change() {
        let (dir, gateway, reloader) = reloader();
        let before = gateway.routes.load_full();
        let limiter = before
            .find("/api/catalog")
            .unwrap()
            .unwrap()
            .per_ip
            .clone()
            .unwrap();
        // Unchanged text: nothing happens.
        let same = reloader.reload().await.unwrap();
        assert!(!same.changed);
        assert!(Arc::ptr_eq(&before, &gateway.routes.load_full()));

        // A new route, the orders route's roles, an upstream's retries.
        let changed = BASE.replace(
            "[services.catalog]",
            "[[route]]\nprefix = \"/api/wares\"\nservice = \"catalog\"\nauth = \"public\"\n\n\
             [gateway.upstreams.order.retry]\nmax_attempts = 1\n\n[services.catalog]",
        );
        let changed = changed.replace(
            "service = \"order\"\n",
            "service = \"order\"\nroles = [\"admin\"]\n",
        );
        write(&dir, &changed);
        let reloaded = reloader.reload().await.unwrap();
        assert!(reloaded.changed);
        assert_eq!((reloaded.version, reloaded.routes), (1, 3));
        assert!(reloaded.restart_needed.is_empty(), "{reloaded:?}");
        assert_eq!(
            service_of(&gateway, "/api/wares/x").as_deref(),
            Some("catalog")
        );
        let after = gateway.routes.load_full();
        assert_eq!(after.version, 1);
        assert_eq!(after.find("/api/orders").unwrap().unwrap().roles, ["admin"]);
        // The catalog's limit and upstream are the same ones, with the buckets clients drained
        // and the breaker's state; the order service's upstream is new, with its new retries.
        let catalog = after.find("/api/catalog").unwrap().unwrap();
        assert!(Arc::ptr_eq(catalog.per_ip.as_ref().unwrap(), &limiter));
        assert!(Arc::ptr_eq(
            &catalog.upstream,
            &before.upstreams()["catalog"]
        ));
        assert!(!Arc::ptr_eq(
            &after.upstreams()["order"],
            &before.upstreams()["order"]
        ));
        assert_eq!(after.upstreams()["order"].config().retry.max_attempts, 1);
        // The table a request took before the reload is still whole for it.
        assert!(before.find("/api/wares").unwrap().is_none());

        // A changed limit is a new bucket.
        write(&dir, &changed.replace("10/m", "2/m"));
        reloader.reload().await.unwrap();
        let table = gateway.routes.load();
        let catalog = table.find("/api/catalog").unwrap().unwrap();
        assert!(!Arc::ptr_eq(catalog.per_ip.as_ref().unwrap(), &limiter));
        assert_eq!(catalog.per_ip.as_ref().unwrap().limit().requests, 2);
    }

    #[tokio::test]
    async fn a_manifest_that_does_not_validate_is_refused_and_the_routes_stay() {
        let (dir, gateway, reloader) = reloader();
        let before = gateway.routes.load_full();
        for (text, says) in [
            ("[[route]\nprefix =".to_string(), "tessera.toml"),
            (BASE.replace("10/m", "10/fortnight"), "fortnight"),
            (
                BASE.replace("audience = \"shop\"", "audience = \"other\""),
                "gateway.tokens",
            ),
            (
                BASE.replace("name = \"shop\"", "name = \"other\""),
                "system.name",
            ),
        ] {
            write(&dir, &text);
            let error = reloader.reload().await.unwrap_err();
            assert!(error.contains(says), "{error}");
            assert!(Arc::ptr_eq(&before, &gateway.routes.load_full()));
        }
        // Settings read at start are named, and the routes are applied all the same.
        write(
            &dir,
            &format!("{BASE}\n[gateway]\nlisten = \"127.0.0.1:9999\"\nmax_body_bytes = 5\n"),
        );
        let reloaded = reloader.reload().await.unwrap();
        assert_eq!(
            reloaded.restart_needed,
            ["gateway.listen", "gateway.max_body_bytes"]
        );
    }

    #[tokio::test]
    async fn the_watch_reloads_when_the_file_changes() {
        let (dir, gateway, reloader) = reloader();
        // Watched while someone holds it (the admin listener does, as long as it serves), at
        // the pace the manifest in force sets.
        let reloader = Arc::new(reloader);
        reloader.clone().spawn_watch();
        let fast = format!("{BASE}\n[gateway]\nreload_watch_ms = 100\n");
        write(&dir, &fast);
        reloader.reload().await.unwrap();
        write(&dir, &fast.replace("/api/orders", "/api/purchases"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while service_of(&gateway, "/api/purchases").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(service_of(&gateway, "/api/orders"), None);
    }
}
