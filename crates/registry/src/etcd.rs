//! The registry on etcd, for systems that outgrow one control plane (`docs/scale-out.md`).
//!
//! An instance is one key, `<prefix>/instances/<service>/<id>`, holding its [`Instance`] as
//! JSON and attached to a lease of the instance's TTL. The library keeps the lease alive from
//! the instance's own process; when the process dies the lease lapses and etcd deletes the key
//! itself. Discovery reads the prefix once and then watches it from that revision on, so every
//! reader sees an instance come or go as soon as etcd does, and a reader that loses etcd keeps
//! its last view (an etcd outage must not take routing down with it) until it reads again.
//!
//! Trust: each service connects as an etcd user of its own whose role may write only under its
//! own service's key prefix (the control plane provisions the users and roles,
//! [`provision`]). A reader still believes only what the key says: an entry whose JSON names
//! another service or id than its key is skipped, so a service cannot pass itself off as
//! another by what it writes under its own prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, Permission, PutOptions, WatchOptions};
use tessera_identity::engine::EngineUrl;

use crate::{Instance, Registration};

/// Where the registry lives on etcd: `etcd://[user:password@]host:port[,host:port…][?prefix=…]`.
#[derive(Clone, Debug)]
pub struct EtcdSettings {
    url: EngineUrl,
    /// The key prefix of this system's entries (default `tessera`).
    pub prefix: String,
}

impl EtcdSettings {
    /// Whether `url` names an etcd registry.
    pub fn handles(url: &str) -> bool {
        url.starts_with("etcd://")
    }

    pub fn parse(url: &str) -> Result<Self, String> {
        let url = EngineUrl::parse(url, "etcd", 2379)?;
        let prefix = url.prefix()?;
        Ok(Self { url, prefix })
    }

    /// The etcd user of the process named `name` (a service, `gateway`) in this system.
    pub fn user_of(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// These settings as the user `user` with `password` (what the runner gives a process).
    pub fn as_user(&self, user: &str, password: &str) -> Self {
        Self {
            url: self.url.as_user(user, password),
            ..self.clone()
        }
    }

    /// The URL of these settings, password included: for a process's environment only.
    pub fn to_url(&self) -> String {
        self.url.to_url()
    }

    /// The etcd user this process connects as, if any.
    pub fn user(&self) -> Option<&str> {
        self.url.user.as_ref().map(|(u, _)| u.as_str())
    }

    /// The URL without its password.
    pub fn redacted(&self) -> String {
        self.url.redacted()
    }

    /// The prefix under which every instance's key lies.
    pub fn instances(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    /// The prefix of `service`'s instances: what its etcd role may write.
    pub fn service_prefix(&self, service: &str) -> String {
        format!("{}{service}/", self.instances())
    }

    /// The key of one instance; `None` for an id that would not make one key (a '/').
    pub fn key_of(&self, instance: &Instance) -> Option<String> {
        (!instance.id.is_empty() && !instance.id.contains('/'))
            .then(|| format!("{}{}", self.service_prefix(&instance.service), instance.id))
    }

    /// A client of the cluster, authenticated as the URL's user.
    pub async fn connect(&self) -> Result<Client, etcd_client::Error> {
        self.connect_as(self.url.user.clone()).await
    }

    /// A client as `user` (none: unauthenticated, which only an etcd without auth accepts).
    pub async fn connect_as(
        &self,
        user: Option<(String, String)>,
    ) -> Result<Client, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(CALL_TIMEOUT)
            // A peer that vanished without closing (a host gone) is noticed within seconds, no
            // more often than etcd allows (every 5 s).
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_auto_token_refresh(true)
            // A member cut off from the quorum refuses rather than serves a silent watch.
            .with_require_leader(true);
        if let Some((name, password)) = user {
            options = options.with_user(name, password);
        }
        // One channel whose every connection tries the members in turn (a member that is
        // down is passed over within 500 ms), rather than a balance among them that keeps
        // sending some calls to a dead one. With mutual TLS, etcd is an internal server like
        // the others (`docs/tls.md`).
        let channel = channel(
            tessera_tls::internal::get().map(|t| t.as_ref()),
            &self.url.hosts,
        )
        .map_err(|e| etcd_client::Error::InvalidArgs(format!("etcd: {e}")))?;
        Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)).await
    }
}

/// The identity etcd's members show when the system's mutual TLS is on.
pub const ETCD_IDENTITY: &str = "etcd";

/// A channel to etcd: each connection to the first member that answers, from a random one
/// on (500 ms each). With mutual TLS (`tls`): this process's identity certificate shown, the
/// member's checked to be the system's `etcd` (whatever address the URL names), HTTP/2
/// negotiated.
fn channel(
    tls: Option<&tessera_tls::internal::Internal>,
    hosts: &[String],
) -> anyhow::Result<tonic::transport::Channel> {
    use std::sync::Arc;
    let connector = match tls {
        Some(tls) => {
            let mut config = tls.client_config_for(&tls.identity_of(ETCD_IDENTITY))?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        }
        None => None,
    };
    let first_host = format!("http://{}", hosts[0]);
    let hosts: Arc<[String]> = hosts.into();
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, hosts) = (connector.clone(), hosts.clone());
        async move {
            let first = rand::random::<u32>() as usize;
            let mut last = std::io::Error::other("no etcd member");
            for i in 0..hosts.len() {
                let host = &hosts[(first + i) % hosts.len()];
                let connect = tokio::net::TcpStream::connect(host.as_str());
                let tcp = match tokio::time::timeout(Duration::from_millis(500), connect).await {
                    Ok(Ok(tcp)) => tcp,
                    Ok(Err(e)) => {
                        last = e;
                        continue;
                    }
                    Err(_) => {
                        last =
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Some(connector) = &connector else {
                    return Ok(Stream::Plain(hyper_util::rt::TokioIo::new(tcp)));
                };
                let name = rustls::pki_types::ServerName::try_from(ETCD_IDENTITY)
                    .expect("a valid name")
                    .to_owned();
                match connector.connect(name, tcp).await {
                    Ok(stream) => {
                        return Ok(Stream::Tls(hyper_util::rt::TokioIo::new(Box::new(stream))));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    });
    let endpoint = tonic::transport::Endpoint::from_shared(first_host)?
        .connect_timeout(Duration::from_secs(2))
        // Every call answers within seconds or fails (a stream, once its first answer is in,
        // lives on): a member that takes a call and never answers holds up no one.
        .timeout(CALL_TIMEOUT)
        // A peer gone without a word is noticed within seconds; no more often than etcd's
        // server allows (`--grpc-keepalive-min-time`, 5 s: it closes the connection of a
        // client that pings more often).
        .http2_keep_alive_interval(Duration::from_secs(6))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// A connection to an etcd member, in clear or over TLS.
enum Stream {
    Plain(hyper_util::rt::TokioIo<tokio::net::TcpStream>),
    Tls(hyper_util::rt::TokioIo<Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One instance as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub instance: Instance,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// Every entry under the instances prefix, by key.
pub type Entries = BTreeMap<String, Entry>;

/// The entry a key-value makes, when it is one: its key names the service and the id, and its
/// JSON must agree with both.
fn entry_of(settings: &EtcdSettings, key: &[u8], value: &[u8], lease: i64) -> Option<Entry> {
    let key = std::str::from_utf8(key).ok()?;
    let (service, id) = key.strip_prefix(&settings.instances())?.split_once('/')?;
    match serde_json::from_slice::<Instance>(value) {
        Ok(instance) if instance.service == service && instance.id == id => {
            Some(Entry { instance, lease })
        }
        Ok(_) => {
            tracing::warn!(
                key,
                "skipped a registry entry whose body names another service or id than its key"
            );
            None
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "skipped a registry entry that is not an instance");
            None
        }
    }
}

/// Reads every instance, then follows every change, calling `on_change` with the whole set and
/// its revision after each; ends when `on_change` returns `false`. Across etcd outages it keeps
/// trying (the last set stands meanwhile) and reads the whole set again when back.
pub async fn follow(settings: EtcdSettings, mut on_change: impl FnMut(&Entries, i64) -> bool) {
    let prefix = settings.instances();
    let mut failing = false;
    loop {
        let result: Result<(), etcd_client::Error> = async {
            let mut client = settings.connect().await?;
            let got = client
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?;
            let mut revision = got.header().map_or(0, |h| h.revision());
            let mut entries: Entries = got
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let entry = entry_of(&settings, kv.key(), kv.value(), kv.lease())?;
                    Some((kv.key_str().ok()?.to_string(), entry))
                })
                .collect();
            if failing {
                tracing::info!("etcd reachable again");
                failing = false;
            }
            if !on_change(&entries, revision) {
                return Ok(());
            }
            let mut stream = client
                .watch(
                    prefix.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                )
                .await?;
            while let Some(response) = stream.message().await? {
                if response.canceled() {
                    // Compacted past us, or cancelled by the server: read everything again.
                    return Err(etcd_client::Error::WatchError(
                        response.cancel_reason().to_string(),
                    ));
                }
                if response.events().is_empty() {
                    continue;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match event.event_type() {
                        etcd_client::EventType::Put => {
                            match entry_of(&settings, kv.key(), kv.value(), kv.lease()) {
                                Some(entry) => entries.insert(key.to_string(), entry),
                                None => entries.remove(key),
                            };
                        }
                        etcd_client::EventType::Delete => {
                            entries.remove(key);
                        }
                    }
                }
                revision = response.header().map_or(revision, |h| h.revision());
                if !on_change(&entries, revision) {
                    return Ok(());
                }
            }
            Err(etcd_client::Error::WatchError("the watch ended".into()))
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the registry on etcd (yet); keeping the last view");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// The lease a registration's TTL asks for, in whole seconds (etcd's unit; at least 1, and
/// etcd itself raises very short ones to its minimum).
fn ttl_seconds(reg: &Registration) -> i64 {
    reg.ttl_ms.div_ceil(1000).max(1) as i64
}

/// Puts `reg` under a new lease of its TTL; the lease, which the caller keeps alive.
pub async fn put_under_lease(
    client: &mut Client,
    settings: &EtcdSettings,
    reg: &Registration,
) -> Result<i64, etcd_client::Error> {
    let key = settings.key_of(&reg.instance).ok_or_else(|| {
        etcd_client::Error::InvalidArgs("an instance id must not hold '/'".into())
    })?;
    let lease = client.lease_grant(ttl_seconds(reg), None).await?.id();
    let value = serde_json::to_vec(&reg.instance).expect("an instance serializes");
    if let Err(e) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        let _ = client.lease_revoke(lease).await;
        return Err(e);
    }
    Ok(lease)
}

/// How long one call to etcd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Refreshes `lease` once; `false` when etcd no longer has it (it lapsed: register again).
/// Bounded: a refresh that gets no answer is an error, and the next one is tried.
pub async fn keep_alive_once(client: &mut Client, lease: i64) -> Result<bool, etcd_client::Error> {
    tokio::time::timeout(CALL_TIMEOUT, refresh(client, lease))
        .await
        .unwrap_or_else(|_| {
            Err(etcd_client::Error::LeaseKeepAliveError(
                "the refresh went unanswered".into(),
            ))
        })
}

async fn refresh(client: &mut Client, lease: i64) -> Result<bool, etcd_client::Error> {
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(kept) => kept,
        // The client says so when etcd answers a TTL of 0: the lease is gone.
        Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("lease not found") => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    keeper.keep_alive().await?;
    match stream.message().await? {
        Some(response) => Ok(response.ttl() > 0),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "the keep-alive stream ended".into(),
        )),
    }
}

/// Registers `reg` and keeps it alive every `every` from this process until `stop` turns
/// true, then revokes the lease (which deletes the key at once). `registered` is told the
/// first time the key is in.
pub(crate) async fn keep_registered(
    settings: EtcdSettings,
    reg: Registration,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    registered: tokio::sync::oneshot::Sender<()>,
) {
    let mut registered = Some(registered);
    let mut healthy = true;
    let mut held: Option<(Client, i64)> = None;
    loop {
        let result: Result<(), etcd_client::Error> = async {
            match &mut held {
                Some((client, lease)) => {
                    if !keep_alive_once(client, *lease).await? {
                        tracing::info!(instance = %reg.instance.id, "the registration's lease lapsed; registering again");
                        *lease = put_under_lease(client, &settings, &reg).await?;
                    }
                }
                None => {
                    let mut client = settings.connect().await?;
                    let lease = put_under_lease(&mut client, &settings, &reg).await?;
                    held = Some((client, lease));
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                if let Some(tx) = registered.take() {
                    let _ = tx.send(());
                }
                if !healthy {
                    tracing::info!("etcd reachable again");
                    healthy = true;
                }
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "etcd registration failed; will keep trying");
                    healthy = false;
                }
                // A client whose keep-alive failed may hold a dead token or channel: start over
                // with a fresh one, keeping the lease if it is still alive.
                if let Some((_, lease)) = held.take()
                    && let Ok(mut client) = settings.connect().await
                {
                    match keep_alive_once(&mut client, lease).await {
                        Ok(true) => held = Some((client, lease)),
                        _ => held = None,
                    }
                }
            }
        }
        // Before the first registration holds, retry quickly.
        let wait = if registered.is_some() {
            Duration::from_millis(250)
        } else {
            every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some((mut client, lease)) = held {
        match client.lease_revoke(lease).await {
            Ok(_) => tracing::info!(instance = %reg.instance.id, "deregistered"),
            Err(e) => {
                tracing::warn!(error = %e, "deregistration failed; etcd will expire this instance")
            }
        }
    }
}

/// Makes etcd ready for the system (idempotently), connecting as the settings' user, which
/// must be `root`: a user and a role per service (`services`: its name and password) that may
/// read every instance and write its own, and a user per reader (`readers`: the gateway, say)
/// that may only read; users and roles are named `<prefix>-<name>`, so that several systems
/// can share one etcd. With authentication off, `root` is created with the settings' password
/// and authentication turned on.
pub async fn provision(
    settings: &EtcdSettings,
    services: &[(String, String)],
    readers: &[(String, String)],
) -> Result<(), etcd_client::Error> {
    let Some((root_user, root)) = settings.url.user.clone().filter(|(u, _)| u == "root") else {
        return Err(etcd_client::Error::InvalidArgs(
            "provisioning etcd takes its root user".into(),
        ));
    };
    let (mut client, enable) = match settings.connect().await {
        Ok(client) => (client, false),
        Err(e) if e.to_string().contains("authentication is not enabled") => {
            (settings.connect_as(None).await?, true)
        }
        Err(e) => return Err(e),
    };
    let instances = settings.instances();
    let mut users: Vec<(String, &str, Vec<Permission>)> = Vec::new();
    // Readers first: a gateway that starts once the services have registered finds its
    // user there.
    for (name, password) in readers {
        users.push((
            settings.user_of(name),
            password,
            vec![Permission::read(instances.as_str()).with_prefix()],
        ));
    }
    for (name, password) in services {
        users.push((
            settings.user_of(name),
            password,
            vec![
                Permission::read(instances.as_str()).with_prefix(),
                Permission::read_write(settings.service_prefix(name)).with_prefix(),
            ],
        ));
    }
    if enable {
        add_user(&mut client, &root_user, &root).await?;
        client.user_grant_role(root_user.as_str(), "root").await?;
    }
    for (user, password, permissions) in users {
        add_user(&mut client, &user, password).await?;
        if let Err(e) = client.role_add(user.as_str()).await
            && !e.to_string().contains("already exists")
        {
            return Err(e);
        }
        for permission in permissions {
            client
                .role_grant_permission(user.as_str(), permission)
                .await?;
        }
        client.user_grant_role(user.as_str(), user.as_str()).await?;
    }
    if enable && let Err(e) = client.auth_enable().await {
        // Another control plane sharing this etcd may have turned it on meanwhile.
        if !e.to_string().contains("already") {
            return Err(e);
        }
    }
    Ok(())
}

/// Adds `name`, or sets its password when it exists (the password is derived and may have
/// been rotated with the control keys).
async fn add_user(
    client: &mut Client,
    name: &str,
    password: &str,
) -> Result<(), etcd_client::Error> {
    match client.user_add(name, password, None).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("already exists") => {
            client.user_change_password(name, password).await.map(drop)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EtcdSettings {
        EtcdSettings::parse("etcd://svc:pw@127.0.0.1:2379?prefix=shop").unwrap()
    }

    fn instance(service: &str, id: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: "10.0.0.1:80".into(),
            version: "1".into(),
            metadata: BTreeMap::new(),
            weight: None,
        }
    }

    #[test]
    fn keys_name_the_service_and_the_id() {
        let s = settings();
        assert_eq!(
            s.key_of(&instance("auth", "auth-1")).unwrap(),
            "shop/instances/auth/auth-1"
        );
        assert_eq!(s.key_of(&instance("auth", "a/b")), None);
        assert_eq!(s.key_of(&instance("auth", "")), None);
        assert!(!format!("{s:?}").contains("pw"));
        assert!(EtcdSettings::parse("etcd://h:1?prefix=a/b").is_err());
        assert!(EtcdSettings::parse("etcd://h:1?prefix=shop-eu").is_err());
        assert!(EtcdSettings::parse("etcd://h:1?colour=red").is_err());
    }

    #[test]
    fn an_entry_must_agree_with_its_key() {
        let s = settings();
        let body = |i: &Instance| serde_json::to_vec(i).unwrap();
        let auth = instance("auth", "auth-1");
        assert_eq!(
            entry_of(&s, b"shop/instances/auth/auth-1", &body(&auth), 7),
            Some(Entry {
                instance: auth.clone(),
                lease: 7
            })
        );
        // Written under catalog's prefix, claiming to be auth: not believed.
        assert_eq!(
            entry_of(&s, b"shop/instances/catalog/auth-1", &body(&auth), 7),
            None
        );
        assert_eq!(
            entry_of(&s, b"shop/instances/auth/auth-2", &body(&auth), 7),
            None
        );
        assert_eq!(entry_of(&s, b"shop/instances/auth/auth-1", b"{", 7), None);
        assert_eq!(
            entry_of(&s, b"other/instances/auth/auth-1", &body(&auth), 7),
            None
        );
    }
}
