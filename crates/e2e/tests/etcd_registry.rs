//! The registry on a real etcd (`docs/scale-out.md`): instances as keys under leases kept
//! alive by their own process, discovery that follows them, an etcd user per service that may
//! write only its own instances, the last view kept through an etcd outage, and the control
//! plane's registry API in front of the same keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::identity::{ControlKeys, Principal};
use tessera::registry::etcd::{self, EtcdSettings};
use tessera::registry::{Discovery, Instance, Registrar, Registration, RegistryClient};
use tessera_testkit::etcd::Server;

const ROOT_PASSWORD: &str = "root-secret";

/// An etcd with authentication on, `auth` and `catalog` provisioned as services and `gateway`
/// as a reader (each password `<name>-pw`), under `prefix`.
async fn provisioned(prefix: &str) -> (Server, EtcdSettings) {
    let server = Server::start();
    let settings = EtcdSettings::parse(&format!("{}?prefix={prefix}", server.url)).unwrap();
    let pw = |n: &str| (n.to_string(), format!("{n}-pw"));
    // etcd listens a moment before it has elected itself leader.
    let start = Instant::now();
    while let Err(e) = etcd::provision(
        &settings.as_user("root", ROOT_PASSWORD),
        &[pw("auth"), pw("catalog")],
        &[pw("gateway")],
    )
    .await
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "provisioning: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (server, settings)
}

/// The settings as `name`'s etcd user.
fn as_(settings: &EtcdSettings, name: &str) -> EtcdSettings {
    settings.as_user(&settings.user_of(name), &format!("{name}-pw"))
}

fn registration(service: &str, id: &str, ttl_ms: u64) -> Registration {
    Registration {
        instance: Instance {
            id: id.into(),
            service: service.into(),
            address: "10.1.2.3:8080".into(),
            version: "1".into(),
            metadata: BTreeMap::new(),
            weight: None,
        },
        ttl_ms,
    }
}

fn ids(discovery: &Discovery, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = discovery
        .instances(service)
        .map(|list| list.iter().map(|i| i.id.clone()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits up to `within` for `check`; the time it took.
async fn within(within: Duration, what: &str, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn instances_come_and_go_within_a_second() {
    let (_server, settings) = provisioned("t1").await;
    let gateway = Discovery::start_etcd(as_(&settings, "gateway"));
    assert!(gateway.wait_loaded(Duration::from_secs(5)).await);

    let registered = Registrar::Etcd(as_(&settings, "auth"))
        .register(
            registration("auth", "auth-1", 3000),
            Duration::from_millis(500),
        )
        .await;
    within(Duration::from_secs(1), "auth-1 seen", || {
        ids(&gateway, "auth") == ["auth-1"]
    })
    .await;
    // Kept alive past its TTL by its process.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(ids(&gateway, "auth"), ["auth-1"]);
    // A lease that is gone (revoked by an operator, or lapsed while the process was frozen)
    // is noticed at the next refresh, and the instance registers again.
    let mut root = settings
        .as_user("root", ROOT_PASSWORD)
        .connect()
        .await
        .unwrap();
    let lease = root
        .get(format!("{}auth-1", settings.service_prefix("auth")), None)
        .await
        .unwrap()
        .kvs()[0]
        .lease();
    root.lease_revoke(lease).await.unwrap();
    // Registered again under a lease of its own (the moment it was gone may be too short to
    // see: the next refresh can come right after the revocation).
    let start = Instant::now();
    loop {
        let now = root
            .get(format!("{}auth-1", settings.service_prefix("auth")), None)
            .await
            .unwrap();
        if now.kvs().first().is_some_and(|kv| kv.lease() != lease) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "auth-1 not registered again after its lease was revoked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    within(Duration::from_secs(1), "auth-1 seen again", || {
        ids(&gateway, "auth") == ["auth-1"]
    })
    .await;
    // Leaving removes it at once.
    registered.leave(Duration::from_secs(3)).await;
    within(Duration::from_secs(1), "auth-1 gone on leaving", || {
        ids(&gateway, "auth").is_empty()
    })
    .await;

    // A process that dies keeps its lease alive no more: etcd drops it after its TTL.
    let mut client = as_(&settings, "catalog").connect().await.unwrap();
    etcd::put_under_lease(
        &mut client,
        &settings,
        &registration("catalog", "catalog-1", 2000),
    )
    .await
    .unwrap();
    within(Duration::from_secs(1), "catalog-1 seen", || {
        ids(&gateway, "catalog") == ["catalog-1"]
    })
    .await;
    let gone = within(Duration::from_secs(5), "catalog-1 expired", || {
        ids(&gateway, "catalog").is_empty()
    })
    .await;
    assert!(
        gone >= Duration::from_millis(1500),
        "not before its TTL: {gone:?}"
    );
}

/// The gateway's discovery, once it sees `auth-1`, registered by `auth`'s own process.
async fn gateway_seeing_auth(
    settings: &EtcdSettings,
) -> (Discovery, tessera::registry::Registered) {
    let gateway = Discovery::start_etcd(as_(settings, "gateway"));
    let auth = Registrar::Etcd(as_(settings, "auth"))
        .register(
            registration("auth", "auth-1", 3000),
            Duration::from_millis(500),
        )
        .await;
    within(Duration::from_secs(1), "auth-1 seen", || {
        ids(&gateway, "auth") == ["auth-1"]
    })
    .await;
    (gateway, auth)
}

#[tokio::test]
async fn a_service_writes_only_its_own_instances_and_readers_believe_only_the_key() {
    let (_server, settings) = provisioned("t2").await;
    let (gateway, _auth) = gateway_seeing_auth(&settings).await;

    let fake = registration("auth", "auth-evil", 3000);
    let body = serde_json::to_vec(&fake.instance).unwrap();
    // catalog's user may not write under auth's prefix, nor the gateway's anywhere.
    let mut catalog = as_(&settings, "catalog").connect().await.unwrap();
    let refused = catalog
        .put(settings.key_of(&fake.instance).unwrap(), body.clone(), None)
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "{refused:?}"
    );
    let mut reader = as_(&settings, "gateway").connect().await.unwrap();
    let refused = reader
        .put(
            format!("{}gateway-1", settings.service_prefix("gateway")),
            "x",
            None,
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // Under its own prefix, an entry that claims to be auth is not believed.
    catalog
        .put(
            format!("{}auth-evil", settings.service_prefix("catalog")),
            body,
            None,
        )
        .await
        .unwrap();
    let _catalog = Registrar::Etcd(as_(&settings, "catalog"))
        .register(
            registration("catalog", "catalog-1", 3000),
            Duration::from_millis(500),
        )
        .await;
    within(Duration::from_secs(1), "catalog-1 seen", || {
        ids(&gateway, "catalog") == ["catalog-1"]
    })
    .await;
    assert_eq!(ids(&gateway, "auth"), ["auth-1"]);
    // And nobody without a password reads anything.
    let mut anonymous = settings.connect().await.unwrap();
    assert!(
        anonymous
            .get(
                settings.instances(),
                Some(etcd_client::GetOptions::new().with_prefix())
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_etcd_outage_keeps_the_last_view_and_catches_up_after() {
    let (mut server, settings) = provisioned("t3").await;
    let (gateway, auth) = gateway_seeing_auth(&settings).await;
    server.kill();
    // Known instances stay served while etcd is away (longer than their TTL).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ids(&gateway, "auth"), ["auth-1"]);
    server.restart();
    // Back: the registration is whole again, and what changes is seen.
    let _catalog = Registrar::Etcd(as_(&settings, "catalog"))
        .register(
            registration("catalog", "catalog-1", 3000),
            Duration::from_millis(500),
        )
        .await;
    within(
        Duration::from_secs(10),
        "catalog-1 seen after the outage",
        || ids(&gateway, "catalog") == ["catalog-1"],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        ids(&gateway, "auth"),
        ["auth-1"],
        "kept alive again after the outage"
    );
    auth.leave(Duration::from_secs(3)).await;
    within(Duration::from_secs(2), "auth-1 gone", || {
        ids(&gateway, "auth").is_empty()
    })
    .await;
}

/// A process that is not Rust registers over HTTP: the control plane puts it in etcd, keeps
/// its lease alive on its heartbeats, and lets no other service touch it.
#[tokio::test]
async fn the_control_planes_registry_api_stands_in_front_of_etcd() {
    let server = Server::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keys = Arc::new(ControlKeys::from_spec(&ControlKeys::generate_spec(1)).unwrap());
    let root = format!(
        "etcd://root:{}@{}?prefix=t4",
        tessera_control::etcd_password(&keys, "root"),
        &server.url["etcd://".len()..]
    );
    let policy = tessera_control::Policy::new([
        ("py".to_string(), Default::default()),
        ("other".to_string(), Default::default()),
    ]);
    let config = tessera_control::ControlConfig {
        bus_url: None,
        registry_url: Some(root),
        shared_url: None,
        settle: Duration::ZERO,
        data_dir: std::env::temp_dir().join(format!("tessera-etcd-{}", uuid::Uuid::new_v4())),
        log: Default::default(),
        keys: keys.clone(),
        policy: Arc::new(policy),
        retention: Default::default(),
        scraping: None,
        principals: Vec::new(),
        passport_keys: None,
        config_base: Default::default(),
        gateways: Vec::new(),
    };
    tokio::spawn(tessera_control::serve(
        listener,
        config,
        std::future::pending(),
    ));

    let settings = EtcdSettings::parse(&format!("{}?prefix=t4", server.url)).unwrap();
    let gateway_user = settings.user_of("gateway");
    let gateway = Discovery::start_etcd(settings.as_user(
        &gateway_user,
        &tessera_control::etcd_password(&keys, &gateway_user),
    ));
    assert!(
        gateway.wait_loaded(Duration::from_secs(10)).await,
        "provisioned, readable"
    );

    let py = RegistryClient::new(&url, &keys.issue(&Principal::Service("py".into())));
    let other = RegistryClient::new(&url, &keys.issue(&Principal::Service("other".into())));
    let reg = registration("py", "py-1", 2000);
    let start = Instant::now();
    while py.register(&reg).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the control plane answers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    within(Duration::from_secs(1), "py-1 in etcd", || {
        ids(&gateway, "py") == ["py-1"]
    })
    .await;
    // Its heartbeats keep it past its TTL; another service's are refused.
    for _ in 0..6 {
        assert!(py.heartbeat("py-1").await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ids(&gateway, "py"), ["py-1"]);
    let status = other.heartbeat("py-1").await.unwrap_err().status();
    assert_eq!(status.map(|s| s.as_u16()), Some(403));
    assert_eq!(
        other
            .deregister("py-1")
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16()),
        Some(403)
    );
    // The catalog the API serves is etcd's.
    let catalog = py.catalog(None, Duration::ZERO).await.unwrap();
    assert_eq!(catalog.services["py"][0].id, "py-1");
    // Leaving removes it; a heartbeat then says "register again".
    py.deregister("py-1").await.unwrap();
    within(Duration::from_secs(1), "py-1 gone", || {
        ids(&gateway, "py").is_empty()
    })
    .await;
    assert!(!py.heartbeat("py-1").await.unwrap());
    // Without heartbeats, a registration lapses with its lease.
    py.register(&reg).await.unwrap();
    within(Duration::from_secs(1), "py-1 back", || {
        ids(&gateway, "py") == ["py-1"]
    })
    .await;
    within(Duration::from_secs(5), "py-1 lapsed", || {
        ids(&gateway, "py").is_empty()
    })
    .await;
    // A heartbeat then says "register again" (a 404, not an error).
    assert!(
        !py.heartbeat("py-1").await.unwrap(),
        "a lapsed lease is a 404"
    );
}
