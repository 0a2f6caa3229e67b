//! `tessera up` as a runner: replicas, restarts, expiry of dead instances, clean shutdown.

use std::time::{Duration, Instant};

use tessera_testkit::{Options, System, alive, freeze, pid_of, signal, thaw};

/// Requests an instance served, from the metrics on its admin listener (`admin`).
async fn requests_served(sys: &System, admin: &str) -> u64 {
    let text = sys.metrics_of(admin).await;
    text.lines()
        .filter(|l| {
            l.starts_with("http_server_requests_total")
                && l.contains(r#"route="/api/catalog/products""#)
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

#[tokio::test]
async fn replicas_register_and_share_the_load() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let registry = sys.registry().await;
    let instances = &registry.services["catalog"];
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert_ne!(instances[0].address, instances[1].address);
    for _ in 0..40 {
        assert_eq!(sys.get("/api/catalog/products?limit=1", None).await.0, 200);
    }
    for i in instances {
        let served = requests_served(&sys, &i.metadata["admin"]).await;
        assert!(served >= 5, "{} served {served} of 40", i.id);
    }
}

#[tokio::test]
async fn a_killed_service_is_restarted_and_its_old_registration_dropped() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let before = sys.registry().await;
    let old = pid_of(&before, "catalog-1").expect("catalog-1 registered with its pid");
    signal(old, libc::SIGKILL);
    let killed = Instant::now();

    // The dead registration goes (the runner says so at once; the TTL would anyway), and while
    // catalog-1 is down, requests go to the survivor.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut gone_after = None;
    let new = loop {
        let catalog = sys.registry().await;
        let pid = pid_of(&catalog, "catalog-1");
        if gone_after.is_none() && pid != Some(old) {
            gone_after = Some(killed.elapsed());
        }
        match pid {
            Some(pid) if pid != old => break pid,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "catalog-1 was not restarted\n{}",
            sys.log_tail(40)
        );
        assert_eq!(
            sys.get("/api/catalog/products?limit=1", None).await.0,
            200,
            "the other replica serves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gone_after = gone_after.unwrap();
    assert!(
        gone_after < Duration::from_millis(1500 + 1000),
        "the dead registration went within the TTL: {gone_after:?}"
    );
    assert!(alive(new) && !alive(old));
    assert!(
        sys.log().contains("catalog-1 exited"),
        "the runner says what happened"
    );
    assert_eq!(sys.get("/api/catalog/products?limit=1", None).await.0, 200);
    // The restart is counted where the console reads it: the instance's registration.
    let after = sys.registry().await;
    let restarts = |id: &str| {
        after.services["catalog"]
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.metadata["restarts"].clone())
    };
    assert_eq!(restarts("catalog-1").as_deref(), Some("1"));
    assert_eq!(restarts("catalog-2").as_deref(), Some("0"));
}

#[tokio::test]
async fn a_frozen_instance_expires_within_its_ttl_and_returns_when_it_wakes() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        // Whole seconds: etcd's leases are counted in them (the distributed profile).
        ttl_ms: 2000,
        heartbeat_ms: 300,
        ..Options::default()
    })
    .await;
    let pid = pid_of(&sys.registry().await, "catalog-2").unwrap();
    // A stopped process does not exit (so nothing restarts it) and does not heartbeat.
    freeze(pid);
    let stopped = Instant::now();
    sys.wait_until(Duration::from_secs(5), "catalog-2 to expire", || async {
        pid_of(&sys.registry().await, "catalog-2").is_none()
    })
    .await;
    let gone_after = stopped.elapsed();
    assert!(
        gone_after < Duration::from_millis(2000 + 1000),
        "expired after {gone_after:?}"
    );
    assert!(
        gone_after >= Duration::from_millis(1500),
        "not before its TTL: {gone_after:?}"
    );
    // Meanwhile every request is served by the live replica, once the gateway's view has
    // followed the registry's (its watch returns on the change; a loaded host may take a
    // moment, and a request sent to the frozen instance before then waits for its timeout).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(sys.get("/api/catalog/products?limit=1", None).await.0, 200);
    }
    thaw(pid);
    sys.wait_until(
        Duration::from_secs(5),
        "catalog-2 to register again",
        || async { pid_of(&sys.registry().await, "catalog-2") == Some(pid) },
    )
    .await;
}

#[tokio::test]
async fn ctrl_c_stops_the_whole_tree() {
    let mut sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let tree = sys.tree_pids();
    // control, gateway, auth, 2 × catalog
    assert!(tree.len() >= 5, "{tree:?}");
    let status = sys.interrupt();
    assert!(status.success(), "tessera up exits cleanly: {status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tree.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "still alive: {:?}",
            tree.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = sys.log();
    assert!(log.contains("stopping: gateway, then services"), "{log}");
    assert!(
        log.contains("deregistered"),
        "services deregistered on the way out"
    );
}

#[tokio::test]
async fn killing_the_runner_leaves_nothing_behind() {
    let sys = System::start().await;
    let tree = sys.tree_pids();
    assert!(tree.len() >= 4, "{tree:?}");
    signal(sys.up_pid(), libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tree.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "orphans: {:?}",
            tree.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the control plane process (a child of `tessera up` running `... control`).
fn control_pid(sys: &System) -> u32 {
    sys.tree_pids()
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"control"))
        })
        .expect("a control plane process")
}

#[tokio::test]
async fn the_system_survives_a_control_plane_crash() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let (token, _) = sys.new_user().await;
    let pid = control_pid(&sys);
    signal(pid, libc::SIGKILL);
    // Routing goes on from the gateway's last view while the registry is away, and while the
    // restarted registry refills.
    let until = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < until {
        let (status, body) = sys.get("/api/catalog/products?limit=1", None).await;
        assert_eq!(status, 200, "{body}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 50);
    // Restarted, the registry is refilled by the instances' heartbeats.
    sys.wait_until(
        Duration::from_secs(10),
        "the registry to refill",
        || async {
            let Ok(resp) = sys
                .control(reqwest::Method::GET, "/v1/services")
                .send()
                .await
            else {
                return false;
            };
            let Ok(catalog) = resp.json::<tessera::registry::Catalog>().await else {
                return false;
            };
            catalog
                .services
                .get("catalog")
                .is_some_and(|c| c.len() == 2)
                && catalog.services.contains_key("auth")
        },
    )
    .await;
    assert_ne!(control_pid(&sys), pid);
    assert_eq!(sys.get("/api/auth/me", Some(&token)).await.0, 200);
}

#[tokio::test]
async fn a_stalled_control_plane_expires_nobody_when_it_wakes() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let before = sys.registry().await;
    let pid = control_pid(&sys);
    // Stopped for twice the instances' TTL (1.5 s): their heartbeats wait unread.
    freeze(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    thaw(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sys.registry().await;
    let ids = |c: &tessera::registry::Catalog| {
        c.services
            .values()
            .flatten()
            .map(|i| i.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids(&after), ids(&before), "every instance is still there");
    assert!(
        !sys.log().contains("expired: no heartbeat"),
        "an instance expired for the control plane's own stall"
    );
    // (On the distributed profile the registry is etcd's, whose leases the control plane's
    // stall does not touch: nothing to forgive there.)
    if tessera_testkit::etcd::profile().is_none() {
        assert!(sys.log().contains("the registry was stalled"));
    }
}

#[tokio::test]
async fn signing_keys_and_accounts_survive_a_restart() {
    let sys = System::start().await;
    let (token, _) = sys.new_user().await;
    let kid = |t: &str| {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = kid(&token);
    let old = pid_of(&sys.registry().await, "auth-1").unwrap();
    signal(old, libc::SIGKILL);
    sys.wait_until(Duration::from_secs(10), "auth to come back", || async {
        pid_of(&sys.registry().await, "auth-1").is_some_and(|p| p != old)
    })
    .await;
    // The gateway learns the new address a moment after the registry does.
    let login = serde_json::json!({"email": tessera_testkit::ADMIN_EMAIL, "password": tessera_testkit::ADMIN_PASSWORD});
    sys.wait_until(
        Duration::from_secs(5),
        "the gateway to reach the new auth",
        || async { sys.post("/api/auth/login", None, login.clone()).await.0 == 200 },
    )
    .await;
    let admin = sys.admin().await;
    assert_eq!(kid(&admin), before, "the same signing key after a restart");
    assert_eq!(sys.get("/api/auth/me", Some(&token)).await.0, 200);
}

#[tokio::test]
async fn status_lists_the_running_instances() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let out = std::process::Command::new(tessera_testkit::bin_dir().join("tessera"))
        .arg("--manifest")
        .arg(sys.dir.join("tessera.toml"))
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for instance in ["auth-1", "catalog-1", "catalog-2"] {
        assert!(text.contains(instance), "{instance} in\n{text}");
    }
    assert!(!text.contains('!'), "no missing replicas:\n{text}");
}

/// `tessera up --profile postgres`: a PostgreSQL of its own under the state directory, a
/// database per service, the shop's data in it, the profile's replicas, and the server stopped
/// with the system.
#[tokio::test]
async fn the_postgres_profile_keeps_the_data_in_a_postgresql_of_its_own() {
    let port = tessera_testkit::postgres::free_ports();
    let mut sys = System::start_with(Options {
        checkout: true,
        up_args: vec![
            "--profile".into(),
            "postgres".into(),
            "--postgres-port".into(),
            port.to_string(),
        ],
        // What the profile changes: two replicas of the order service on its one database.
        extra_manifest: "[profile.postgres]\nreplicas = { order = 2 }\n".into(),
        ..Options::default()
    })
    .await;
    assert_eq!(sys.registry().await.services["order"].len(), 2);
    let (token, _) = sys.new_user().await;
    let order = sys
        .place_order(
            &token,
            serde_json::json!([{"productId": "0190f000-0000-7000-8000-000000000005", "quantity": 1}]),
        )
        .await;
    assert_eq!(
        sys.settled_order(&token, &order).await["status"],
        "CONFIRMED"
    );
    // Where the cluster is (as root, outside the state directory, which the server's user
    // may not enter), from the runner's line about it.
    let line = sys
        .log_line("the PostgreSQL line", |l| l.contains("PostgreSQL: "))
        .await;
    let cluster = std::path::PathBuf::from(
        line.split("files in ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')'),
    );
    let password = std::fs::read_to_string(cluster.join("password")).unwrap();
    let url = |db: &str| {
        format!(
            "postgres://postgres:{}@127.0.0.1:{port}/{db}",
            password.trim()
        )
    };
    let stored = tessera_testkit::postgres::psql(
        &url("order"),
        &format!("SELECT status FROM order_details WHERE order_id = '{order}'"),
    );
    assert_eq!(stored, "CONFIRMED");
    let notified = tessera_testkit::postgres::psql(
        &url("notification"),
        &format!("SELECT COUNT(*) FROM notifications WHERE order_id = '{order}'"),
    );
    assert_eq!(notified, "1");
    // No service keeps an embedded file, and the log says where the data is, without the
    // password.
    let files: Vec<_> = std::fs::read_dir(sys.dir.join("state/data"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !files.iter().any(|f| f.to_string_lossy().ends_with(".db")),
        "{files:?}"
    );
    assert!(sys.log().contains("PostgreSQL: postgres://postgres:***@"));
    assert!(!sys.log().contains(password.trim()));
    let status = sys.interrupt();
    assert!(status.success(), "tessera up exits cleanly: {status}");
    assert!(
        !cluster.join("primary/postmaster.pid").exists(),
        "the server stopped with the system"
    );
    let _ = std::fs::remove_dir_all(&cluster);
}

/// `tessera up --profile distributed`: events on a NATS JetStream of its own under the state
/// directory, each service a NATS user of its own allowed only what the manifest grants it, the
/// control plane's event API in front of it; the registry on an etcd of its own, each process
/// an etcd user of its own; and both stopped with the system.
#[tokio::test]
async fn the_distributed_profile_puts_events_on_nats_and_the_registry_on_etcd() {
    let (mut sys, port, etcd, _) = distributed(false).await;
    confirm_one_order(&sys).await;
    // The registry is etcd's: the control plane provisioned its users and serves its API in
    // front of it, and etcd answers nobody without a password.
    sys.log_line("the etcd line", |l| {
        l.contains(&format!("etcd: etcd://127.0.0.1:{etcd}"))
    })
    .await;
    sys.log_line("the provisioning", |l| {
        l.contains("etcd's users and roles are provisioned")
    })
    .await;
    let catalog: serde_json::Value = sys
        .control(reqwest::Method::GET, "/v1/services")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for service in ["auth", "catalog", "order", "payment"] {
        assert!(
            catalog["services"][service]
                .as_array()
                .is_some_and(|list| !list.is_empty()),
            "{service} in {catalog}"
        );
    }
    let settings =
        tessera::registry::etcd::EtcdSettings::parse(&format!("etcd://127.0.0.1:{etcd}")).unwrap();
    let mut anonymous = settings.connect().await.unwrap();
    let read = anonymous
        .get(
            "tessera/instances/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await;
    assert!(
        read.as_ref()
            .is_err_and(|e| e.to_string().contains("user name is empty")),
        "etcd refuses a client without a user: {read:?}"
    );
    sys.log_line("the NATS line", |l| {
        l.contains(&format!("NATS JetStream: nats://127.0.0.1:{port}"))
    })
    .await;
    // The control plane declared the system's streams and its services' consumer groups.
    let declared = sys
        .log_line("the declaration", |l| {
            l.contains("consumer groups are declared on NATS")
        })
        .await;
    assert!(
        declared.contains("\"groups\":") && !declared.contains("\"groups\":0"),
        "{declared}"
    );
    // The checkout's events are on NATS, and the control plane shows them from there.
    let topics: serde_json::Value = sys
        .control(reqwest::Method::GET, "/v1/topics")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for topic in ["order.events", "inventory.commands", "payment.commands"] {
        assert!(names.contains(&topic), "{topic} in {names:?}");
    }
    let control_log = sys.dir.join("state/control");
    assert!(
        !control_log.join("log.db").exists(),
        "the embedded log was not used"
    );
    // The server's configuration: a user per service, with permissions, readable by no one
    // else; and nobody gets in without a password.
    let conf = sys.dir.join("state/nats/nats.conf");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&conf).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "nats.conf is private: {mode:o}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    let users = config["authorization"]["users"].as_array().unwrap();
    let order_user = users.iter().find(|u| u["user"] == "order").unwrap();
    assert!(
        order_user["permissions"]["publish"]["allow"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "tessera.order.events.order.*")
    );
    let anonymous =
        tessera::events::NatsBus::new(&format!("nats://127.0.0.1:{port}"), "order", "x").unwrap();
    assert!(
        tessera::events::Bus::publish(
            &anonymous,
            "order.events",
            &[tessera::events::Event::new(
                "/x",
                "x",
                "x",
                serde_json::json!({})
            )]
        )
        .await
        .is_err()
    );
    let status = sys.interrupt();
    assert!(status.success(), "tessera up exits cleanly: {status}");
    for port in [port, etcd] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the server on {port} stopped with the system"
        );
    }
}

/// `--profile distributed` with the system's mutual TLS on (as on several hosts): NATS, etcd
/// and Redis take TLS only, with the system CA's certificates on both sides, and the checkout
/// still goes through; no event, registry entry, cache key or engine password crosses the wire
/// in clear.
#[tokio::test]
async fn with_mutual_tls_on_the_engines_are_reached_over_tls_only() {
    use std::io::Read;
    let (sys, port, etcd, redis) = distributed(true).await;
    // A service killed during the capture is started again by the runner: it signs in to
    // etcd, registers and reads the registry there, and to Redis (its cache).
    let pid = tessera_testkit::pid_of(&sys.registry().await, "catalog-1").unwrap();
    let checkout = async {
        tessera_testkit::signal(pid, libc::SIGKILL);
        sys.wait_until(Duration::from_secs(20), "catalog-1 back", || async {
            tessera_testkit::pid_of(&sys.registry().await, "catalog-1").is_some_and(|p| p != pid)
        })
        .await;
        confirm_one_order(&sys).await;
    };
    let pcap = tessera_testkit::capture::during("lo", checkout).await;
    let to_nats = tessera_testkit::capture::payloads(&pcap, |p| p.from.1 == port || p.to.1 == port);
    assert!(
        !to_nats.is_empty(),
        "the checkout's events went through NATS"
    );
    for clear in [&b"shop.order"[..], b"specversion", b"CONNECT"] {
        assert!(
            !tessera_testkit::capture::contains(&to_nats, clear),
            "{} in clear on the NATS port",
            String::from_utf8_lossy(clear)
        );
    }
    let to_etcd = tessera_testkit::capture::payloads(&pcap, |p| p.from.1 == etcd || p.to.1 == etcd);
    assert!(!to_etcd.is_empty(), "the new instance went to etcd");
    for clear in [&b"instances/"[..], b"tessera-catalog", b"catalog-1"] {
        assert!(
            !tessera_testkit::capture::contains(&to_etcd, clear),
            "{} in clear on the etcd port",
            String::from_utf8_lossy(clear)
        );
    }
    let to_redis =
        tessera_testkit::capture::payloads(&pcap, |p| p.from.1 == redis || p.to.1 == redis);
    assert!(!to_redis.is_empty(), "the catalog's cache went to Redis");
    for clear in [&b"AUTH"[..], b"-catalog", b":cache:", b"EVALSHA"] {
        assert!(
            !tessera_testkit::capture::contains(&to_redis, clear),
            "{} in clear on the Redis port",
            String::from_utf8_lossy(clear)
        );
    }
    // Redis answers no command in clear.
    {
        use std::io::Write;
        let mut plain = std::net::TcpStream::connect(("127.0.0.1", redis)).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        plain.write_all(b"PING\r\n").unwrap();
        let mut answer = [0u8; 64];
        let n = plain.read(&mut answer).unwrap_or(0);
        assert!(
            !answer[..n].starts_with(b"+PONG") && !answer[..n].starts_with(b"-NOAUTH"),
            "{}",
            String::from_utf8_lossy(&answer[..n])
        );
    }
    // The server says so to anyone who connects.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut info = [0u8; 2048];
    let n = plain.read(&mut info).unwrap();
    let info = String::from_utf8_lossy(&info[..n]);
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(info.contains("\"tls_verify\":true"), "{info}");
}

/// A shop run with `tessera up --profile distributed` (its NATS on a free port, which comes
/// back too, and its etcd on two more), with the system's mutual TLS on or off.
async fn distributed(mtls: bool) -> (System, u16, u16, u16) {
    let [port, etcd, redis] = tessera_testkit::free_ports_apart();
    let sys = System::start_with(Options {
        checkout: true,
        mtls,
        up_args: tessera_testkit::distributed_up_args([port, etcd, redis]),
        ..Options::default()
    })
    .await;
    (sys, port, etcd, redis)
}

/// A new user's order of one unit, confirmed.
async fn confirm_one_order(sys: &System) {
    let (token, _) = sys.new_user().await;
    let order = sys
        .place_order(
            &token,
            serde_json::json!([{"productId": "0190f000-0000-7000-8000-000000000005", "quantity": 1}]),
        )
        .await;
    assert_eq!(
        sys.settled_order(&token, &order).await["status"],
        "CONFIRMED"
    );
}
