//! A system across three hosts (network namespaces joined by a bridge, made and removed by
//! the test): the control plane on one, every shop service on another, the gateway on a
//! third, each started by hand from `tessera env <principal>`, as an operator would on real
//! hosts. With addresses that are not loopback, mutual TLS is on by default: a checkout
//! confirms, and a capture of the bridge shows nothing of the internal calls in clear (no
//! passport, no request path). The same system with `mtls = "off"` shows both, so the check
//! can fail.
//!
//! And the same shop beyond one machine: a NATS server (one JetStream cluster, R3 streams)
//! and an etcd member on each host, Redis on one, the services split over two hosts and a
//! gateway on two; one host dies whole (its services, its gateway, its NATS server and its
//! etcd member) during checkouts. Every order reaches its final state, nothing is charged
//! twice or for a rejected order, and the system confirms orders again by itself.
//!
//! Needs root (CI runs as root), `ip`, tcpdump, nats-server, etcd and redis-server.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_testkit::{bin_dir, capture};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces on a bridge; the test's own side of the bridge is `.254`.
struct Hosts {
    id: String,
    subnet: [u8; 3],
}

impl Hosts {
    fn new() -> Self {
        let n: u16 = rand::random();
        let id = format!("{n:04x}");
        let subnet = [10, 200 + (n % 50) as u8, (n >> 8) as u8];
        let hosts = Self { id, subnet };
        run(&["ip", "link", "add", &hosts.bridge(), "type", "bridge"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", hosts.ip(254)),
            "dev",
            &hosts.bridge(),
        ]);
        run(&["ip", "link", "set", &hosts.bridge(), "up"]);
        for host in 1..=3 {
            let (ns, outside, inside) = (
                hosts.ns(host),
                format!("tv{}{host}", hosts.id),
                format!("tp{}{host}", hosts.id),
            );
            run(&["ip", "netns", "add", &ns]);
            run(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            run(&["ip", "link", "set", &inside, "netns", &ns]);
            run(&[
                "ip",
                "link",
                "set",
                &outside,
                "master",
                &hosts.bridge(),
                "up",
            ]);
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", hosts.ip(host)),
                "dev",
                &inside,
            ]);
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &inside, "up",
            ]);
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn bridge(&self) -> String {
        format!("tb{}", self.id)
    }

    fn ns(&self, host: u8) -> String {
        format!("tss-{}-{host}", self.id)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], host)
    }

    /// Plugs `host`'s cable into the bridge, or pulls it: a host cut off says nothing to its
    /// peers (no connection is closed or refused), it just stops answering.
    fn cable(&self, host: u8, plugged: bool) {
        run(&[
            "ip",
            "link",
            "set",
            &format!("tv{}{host}", self.id),
            if plugged { "up" } else { "down" },
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in 1..=3 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// The processes of one system; killed when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn manifest(hosts: &Hosts, mtls: &str) -> String {
    let services = hosts.ip(2);
    let listen = format!("TESSERA_LISTEN = \"{services}:0\"");
    format!(
        r#"
[system]
name = "hosts"
state_dir = "state"
mtls = "{mtls}"

[control]
listen = "{control}:8500"
heartbeat_ms = 300
ttl_ms = 1500

[gateway]
listen = "{gateway}:8080"
admin_listen = "127.0.0.1:8081"

[gateway.tokens]
service = "auth"
jwks_path = "/api/auth/.well-known/jwks.json"
revocations_path = "/internal/revocations"
issuer = "tessera-auth"
audience = "tessera-api"

[[route]]
prefix = "/api/auth"
service = "auth"
auth = "public"

[[route]]
prefix = "/api/catalog"
service = "catalog"
auth = "public"

[[route]]
prefix = "/api/orders"
service = "order"
auth = "required"

[services.auth]
command = "shop-auth"
env = {{ {listen}, AUTH_ACCESS_TTL_SECS = "600" }}
[services.catalog]
command = "shop-catalog"
env = {{ {listen} }}
produces = ["catalog.events"]
consumes = ["catalog.events"]
[services.order]
command = "shop-order"
env = {{ {listen} }}
produces = ["order.events", "inventory.commands", "payment.commands"]
consumes = ["saga.checkout.replies"]
calls = ["catalog"]
[services.inventory]
command = "shop-inventory"
env = {{ {listen} }}
produces = ["saga.checkout.replies"]
consumes = ["inventory.commands"]
[services.payment]
command = "shop-payment"
env = {{ {listen} }}
produces = ["saga.checkout.replies"]
consumes = ["payment.commands"]
calls = ["payment-provider"]
[services.payment-provider]
command = "shop-payment-provider"
env = {{ {listen} }}
[services.notification]
command = "shop-notification"
env = {{ {listen} }}
consumes = ["order.events"]
"#,
        control = hosts.ip(1),
        gateway = hosts.ip(3),
    )
}

/// `tessera env <principal>`'s variables.
fn env_of(manifest: &Path, principal: &str) -> BTreeMap<String, String> {
    let out = Command::new(bin_dir().join("tessera"))
        .arg("--manifest")
        .arg(manifest)
        .args(["env", principal])
        .output()
        .expect("tessera env");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// Starts `program` on `host` with `env`, its output in `log`; it dies with the test.
#[allow(unsafe_code)]
fn start(
    hosts: &Hosts,
    host: u8,
    program: &Path,
    args: &[&str],
    env: BTreeMap<String, String>,
    log: &Path,
) -> Child {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).unwrap();
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &hosts.ns(host)])
        .arg(program)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // Whatever becomes of the test, its processes die with it (`ip netns exec` execs them).
    // SAFETY: prctl is async-signal-safe and touches only the child's own attributes.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().expect("ip netns exec")
}

/// The whole system on the three hosts, ready.
async fn system(hosts: &Hosts, dir: &Path, mtls: &str) -> Processes {
    let manifest_path = dir.join("tessera.toml");
    std::fs::write(&manifest_path, manifest(hosts, mtls)).unwrap();
    let parsed = tessera_manifest::Manifest::load(&manifest_path).unwrap();
    let tessera = bin_dir().join("tessera");
    let manifest_arg = manifest_path.to_str().unwrap();
    let mut children = Vec::new();
    children.push(start(
        hosts,
        1,
        &tessera,
        &["--manifest", manifest_arg, "control"],
        env_of(&manifest_path, "control"),
        &dir.join("control.log"),
    ));
    for (name, spec) in &parsed.services {
        let mut env = env_of(&manifest_path, &format!("service:{name}"));
        env.insert("TESSERA_INSTANCE".into(), format!("{name}-1"));
        env.extend(spec.env.clone());
        let program = bin_dir().join(spec.command.argv()[0].clone());
        children.push(start(
            hosts,
            2,
            &program,
            &[],
            env,
            &dir.join(format!("{name}.log")),
        ));
    }
    children.push(start(
        hosts,
        3,
        &tessera,
        &["--manifest", manifest_arg, "gateway"],
        env_of(&manifest_path, "gateway"),
        &dir.join("gateway.log"),
    ));
    let processes = Processes(children);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let products = format!("http://{}:8080/api/catalog/products?limit=1", hosts.ip(3));
    while !http
        .get(&products)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        let logs: String = ["control", "gateway", "catalog"]
            .iter()
            .map(|n| std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default())
            .collect();
        assert!(
            Instant::now() < deadline,
            "the system did not come up:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    processes
}

/// Signs up, places an order and waits for it to be confirmed, through the gateway.
async fn checkout(gateway: &str) {
    let http = reqwest::Client::new();
    let email = format!("h{}@shop.test", uuid::Uuid::new_v4().simple());
    let post = |path: &str, body: Value, token: Option<&str>| {
        let mut req = http.post(format!("{gateway}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let signup = json!({"email": email, "password": "password123", "name": "H"});
    assert_eq!(
        post("/api/auth/signup", signup, None)
            .await
            .unwrap()
            .status(),
        201
    );
    let login: Value = post(
        "/api/auth/login",
        json!({"email": email, "password": "password123"}),
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = login["data"]["accessToken"].as_str().unwrap().to_string();
    let placed: Value = post(
        "/api/orders",
        json!({"items": [{"productId": MOUSE, "quantity": 1}]}),
        Some(&token),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let order = placed["data"]["orderId"]
        .as_str()
        .expect("an order")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = http
            .get(format!("{gateway}/api/orders/{order}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["data"]["status"] == "CONFIRMED" {
            return;
        }
        assert!(
            Instant::now() < deadline && body["data"]["status"] != "REJECTED",
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_across_hosts_checks_out_with_nothing_internal_in_clear() {
    let hosts = Hosts::new();
    for mtls in ["off", "auto"] {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("tessera-hosts-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let processes = system(&hosts, &dir, mtls).await;
        let gateway = format!("http://{}:8080", hosts.ip(3));
        let pcap = capture::during(&hosts.bridge(), checkout(&gateway)).await;
        drop(processes);
        // Between the hosts: not to or from the test's own side of the bridge.
        let client = hosts.ip(254);
        let internal = capture::payloads(&pcap, |p| p.from.0 != client && p.to.0 != client);
        assert!(
            internal.len() > 2000,
            "the capture saw the hosts talk ({} bytes)",
            internal.len()
        );
        let clear = capture::contains(&internal, b"x-passport:")
            || capture::contains(&internal, b"/api/orders");
        assert_eq!(
            clear,
            mtls == "off",
            "mtls = {mtls}: internal calls in clear = {clear}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The engines of a distributed system across the three hosts: a NATS server with JetStream
/// on each (one cluster, R3 streams), an etcd member on each (one cluster), Redis on host 1.
/// Each is (host, process), so that a host's can be killed.
fn engines(hosts: &Hosts, dir: &Path, manifest: &Path) -> Vec<(u8, &'static str, Child)> {
    let mut out = Vec::new();
    let routes: Vec<String> = (1..=3)
        .map(|h| format!("nats://{}:6222", hosts.ip(h)))
        .collect();
    let members: Vec<String> = (1..=3)
        .map(|h| format!("e{h}=http://{}:2380", hosts.ip(h)))
        .collect();
    for host in 1..=3u8 {
        let ip = hosts.ip(host);
        // The system's NATS configuration (a user per service), as `tessera nats config`
        // prints it, in a cluster of three.
        let store = dir.join(format!("nats-{host}"));
        let printed = Command::new(bin_dir().join("tessera"))
            .arg("--manifest")
            .arg(manifest)
            .args([
                "nats",
                "config",
                "--listen",
                &format!("{ip}:4222"),
                "--store",
            ])
            .arg(&store)
            .output()
            .expect("tessera nats config");
        assert!(
            printed.status.success(),
            "{}",
            String::from_utf8_lossy(&printed.stderr)
        );
        let mut config: Value = serde_json::from_slice(&printed.stdout).unwrap();
        config["server_name"] = json!(format!("n{host}"));
        config["cluster"] = json!({
            "name": "tessera",
            "listen": format!("{ip}:6222"),
            "routes": routes.iter().filter(|r| !r.contains(&ip.to_string())).collect::<Vec<_>>(),
        });
        let path = dir.join(format!("nats-{host}.conf"));
        std::fs::write(&path, config.to_string()).unwrap();
        out.push((
            host,
            "nats",
            start(
                hosts,
                host,
                Path::new("nats-server"),
                &["-c", path.to_str().unwrap()],
                BTreeMap::new(),
                &dir.join(format!("nats-{host}.log")),
            ),
        ));
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let data = dir.join(format!("etcd-{host}"));
        let args = tessera_testkit::etcd::member_args(
            &format!("e{host}"),
            data.to_str().unwrap(),
            &client,
            &peer,
            &members.join(","),
        );
        out.push((
            host,
            "etcd",
            start(
                hosts,
                host,
                Path::new("etcd"),
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                BTreeMap::new(),
                &dir.join(format!("etcd-{host}.log")),
            ),
        ));
    }
    out.push((
        1,
        "redis",
        start(
            hosts,
            1,
            Path::new("redis-server"),
            &[
                "--bind",
                &hosts.ip(1).to_string(),
                "--port",
                "6379",
                "--requirepass",
                "hosts-redis",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            BTreeMap::new(),
            &dir.join("redis.log"),
        ),
    ));
    out
}

/// The shop on the engines above: the control plane on host 1, auth, catalog and order on
/// host 2, the rest of the checkout on host 3, a gateway on hosts 1 and 3.
fn distributed_manifest(hosts: &Hosts) -> String {
    let (h1, h2, h3) = (hosts.ip(1), hosts.ip(2), hosts.ip(3));
    let base = manifest(hosts, "off");
    let base = base.replacen(
        "mtls = \"off\"",
        &format!(
            "mtls = \"off\"\nbus = \"nats://{h1}:4222,{h2}:4222,{h3}:4222?replicas=3&lease_ms=3000\"\nregistry = \"etcd://{h1}:2379,{h2}:2379,{h3}:2379\"\nshared = \"redis://:hosts-redis@{h1}:6379\""
        ),
        1,
    );
    // Every gateway listens on its own host's address (each host its own network).
    base.replacen(
        &format!("listen = \"{h3}:8080\""),
        "listen = \"0.0.0.0:8080\"",
        1,
    )
}

/// Processes on hosts, by label; all killed when dropped (also when the test fails).
struct Tree(Vec<(u8, String, Child)>);

impl Tree {
    fn add(&mut self, host: u8, label: &str, child: Child) {
        self.0.push((host, label.to_string(), child));
    }

    /// Kills (SIGKILL) everything on `host` whose label `matches`.
    fn kill(&mut self, host: u8, matches: impl Fn(&str) -> bool) {
        for (h, label, child) in &mut self.0 {
            if *h == host && matches(label) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Puts `child` in the place of the process labelled `label`.
    fn replace(&mut self, label: &str, child: Child) {
        for (_, l, c) in &mut self.0 {
            if l == label {
                let _ = c.kill();
                let _ = c.wait();
                *c = child;
                return;
            }
        }
        panic!("no process {label}");
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which host runs each service.
fn host_of(service: &str) -> u8 {
    match service {
        "auth" | "catalog" | "order" => 2,
        _ => 3,
    }
}

/// Places an order of one mouse under `key`, through whichever gateway answers (the same key
/// on a retry: the order service keeps it once).
async fn place(http: &reqwest::Client, gateways: &[String], token: &str, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut turn = 0usize;
    loop {
        let gateway = &gateways[turn % gateways.len()];
        turn += 1;
        let sent = http
            .post(format!("{gateway}/api/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({"items": [{"productId": MOUSE, "quantity": 1}]}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(r) = sent {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if let Some(order) = body["data"]["orderId"].as_str() {
                return order.to_string();
            }
            assert!(
                status >= 500 || status == 429,
                "order {key}: {status} {body}"
            );
        }
        assert!(Instant::now() < deadline, "order {key} never placed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_system_across_hosts_loses_nothing_when_a_host_dies() {
    let hosts = Hosts::new();
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "tessera-hosts-distributed-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest_path = dir.join("tessera.toml");
    std::fs::write(&manifest_path, distributed_manifest(&hosts)).unwrap();
    let parsed = tessera_manifest::Manifest::load(&manifest_path).unwrap();
    let manifest_arg = manifest_path.to_str().unwrap().to_string();
    let tessera = bin_dir().join("tessera");

    let mut tree = Tree(Vec::new());
    for (host, name, child) in engines(&hosts, &dir, &manifest_path) {
        tree.add(host, &format!("{name}-{host}"), child);
    }
    tree.add(
        1,
        "control",
        start(
            &hosts,
            1,
            &tessera,
            &["--manifest", &manifest_arg, "control"],
            env_of(&manifest_path, "control"),
            &dir.join("control.log"),
        ),
    );
    let start_service = |name: &str, run: u32| {
        let spec = &parsed.services[name];
        let host = host_of(name);
        let mut env = env_of(&manifest_path, &format!("service:{name}"));
        env.insert("TESSERA_INSTANCE".into(), format!("{name}-1"));
        env.extend(spec.env.clone());
        env.insert("TESSERA_LISTEN".into(), format!("{}:0", hosts.ip(host)));
        let program = bin_dir().join(spec.command.argv()[0].clone());
        start(
            &hosts,
            host,
            &program,
            &[],
            env,
            &dir.join(format!("{name}-{run}.log")),
        )
    };
    let start_gateway = |host: u8, run: u32| {
        start(
            &hosts,
            host,
            &tessera,
            &["--manifest", &manifest_arg, "gateway"],
            env_of(&manifest_path, "gateway"),
            &dir.join(format!("gateway-{host}-{run}.log")),
        )
    };
    for name in parsed.services.keys() {
        tree.add(
            host_of(name),
            &format!("service:{name}"),
            start_service(name, 1),
        );
    }
    for host in [1, 3] {
        tree.add(host, &format!("gateway-{host}"), start_gateway(host, 1));
    }
    let gateways: Vec<String> = [1, 3]
        .iter()
        .map(|h| format!("http://{}:8080", hosts.ip(*h)))
        .collect();

    let http = reqwest::Client::new();
    let logs = || {
        ["control", "gateway-1-1", "order-1", "nats-1", "etcd-1"]
            .iter()
            .map(|n| {
                let text =
                    std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "== {n}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Up: every gateway reaches catalog and auth (each service registers on its own time;
    // catalog answering says nothing of auth).
    for url in gateways.iter().flat_map(|gateway| {
        [
            format!("{gateway}/api/catalog/products?limit=1"),
            format!("{gateway}/api/auth/.well-known/jwks.json"),
        ]
    }) {
        while !http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "the system did not come up:\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // One customer.
    let email = format!("d{}@shop.test", uuid::Uuid::new_v4().simple());
    let signup = json!({"email": email, "password": "password123", "name": "D"});
    let r = http
        .post(format!("{}/api/auth/signup", gateways[0]))
        .json(&signup)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let login: Value = http
        .post(format!("{}/api/auth/login", gateways[1]))
        .json(&json!({"email": email, "password": "password123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["data"]["accessToken"].as_str().unwrap().to_string();

    // The status of an order (empty while it cannot be read).
    let status_of = |order: String| {
        let (http, gateway, token) = (http.clone(), gateways[0].clone(), token.clone());
        async move {
            let body: Value = match http
                .get(format!("{gateway}/api/orders/{order}"))
                .bearer_auth(&token)
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            body["data"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let placed = std::sync::atomic::AtomicUsize::new(0);
    let place_one = async || {
        let i = placed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rotated: Vec<String> = gateways.iter().cycle().skip(i).take(2).cloned().collect();
        place(&http, &rotated, &token, &format!("k{i}")).await
    };

    // Orders through both gateways; then host 3 dies (its services, its gateway, its NATS
    // server and its etcd member) while orders keep coming through the other gateway; its
    // services and gateway come back, as after a reboot, while its NATS server and etcd member
    // stay down (two of three keep the quorum).
    // Ready for orders once one is confirmed (the streams, R3, are declared by then).
    let mut orders = Vec::new();
    // Places orders until one is confirmed (one placed while the system is not ready or still
    // recovering may be rejected, its steps compensated); how long that took.
    let until_one_confirms = async |orders: &mut Vec<String>, what: &str, limit: Duration| {
        let since = Instant::now();
        loop {
            let probe = place_one().await;
            orders.push(probe.clone());
            let status = loop {
                let status = status_of(probe.clone()).await;
                if status == "CONFIRMED" || status == "REJECTED" {
                    break status;
                }
                assert!(since.elapsed() < limit, "{what}\n{}", logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if status == "CONFIRMED" {
                return since.elapsed();
            }
        }
    };
    let ready = until_one_confirms(&mut orders, "never ready", Duration::from_secs(60)).await;
    println!("ready for orders in {ready:?}");
    for _ in 0..10 {
        orders.push(place_one().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cut off first, then dead: its peers hear nothing of it, as when a machine loses power.
    hosts.cable(3, false);
    tree.kill(3, |_| true);
    let cut = Instant::now();
    for _ in 0..10 {
        orders.push(place_one().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Out long enough that only the peers' own checks can tell (etcd's keep-alive, 6 + 3 s;
    // the Redis subscription's PING after 10 s of quiet; NATS's and JetStream's heartbeats):
    // once plugged back, the dead host's kernel would answer their packets with resets.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(cut.elapsed())).await;
    hosts.cable(3, true);
    for name in parsed.services.keys().filter(|n| host_of(n) == 3) {
        tree.replace(&format!("service:{name}"), start_service(name, 2));
    }
    tree.replace("gateway-3", start_gateway(3, 2));
    // The system recovers by itself: an order placed now is confirmed (one placed while it
    // was still recovering may be rejected, its steps compensated).
    let recovered =
        until_one_confirms(&mut orders, "never recovered", Duration::from_secs(90)).await;
    println!("recovered in {recovered:?}");
    // Then every order placed is confirmed.
    let after = orders.len();
    for _ in 0..10 {
        orders.push(place_one().await);
    }

    // Every order reaches its final state: confirmed, or rejected and compensated; those
    // placed after the recovery, confirmed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut outcome: BTreeMap<String, String> = BTreeMap::new();
    for (i, order) in orders.iter().enumerate() {
        loop {
            let status = status_of(order.clone()).await;
            if status == "CONFIRMED" || status == "REJECTED" {
                assert!(
                    i < after || status == "CONFIRMED",
                    "order {i} ({order}), placed after the recovery, was rejected\n{}",
                    logs()
                );
                outcome.insert(order.clone(), status);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {order} never settled\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    println!(
        "{} confirmed, {} rejected",
        outcome.values().filter(|s| *s == "CONFIRMED").count(),
        outcome.values().filter(|s| *s == "REJECTED").count()
    );
    let unique: std::collections::HashSet<&String> = orders.iter().collect();
    assert_eq!(unique.len(), orders.len(), "one order per key");

    // Nothing doubled: exactly one captured charge per confirmed order at the provider, none
    // for a rejected one.
    let keys = tessera::PassportKeys::from_spec(
        &env_of(&manifest_path, "gateway")["TESSERA_PASSPORT_KEYS"],
        "hosts",
    )
    .unwrap();
    let passport = keys.mint(
        "test",
        "service:test",
        &["system".into()],
        None,
        &tessera::TraceContext::new_root(),
    );
    let provider_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let registry = {
            let admin = env_of(&manifest_path, "admin");
            let credential = admin.get("TESSERA_CREDENTIAL").cloned();
            let mut req = http.get(format!("http://{}:8500/v1/services", hosts.ip(1)));
            if let Some(c) = credential {
                req = req.bearer_auth(c);
            }
            req.send().await.ok()
        };
        let provider: Option<String> = match registry {
            Some(r) => r.json::<Value>().await.ok().and_then(|c| {
                c["services"]["payment-provider"][0]["address"]
                    .as_str()
                    .map(str::to_string)
            }),
            None => None,
        };
        if let Some(address) = provider
            && let Ok(r) = http
                .get(format!("http://{address}/v1/charges"))
                .header("x-passport", &passport)
                .send()
                .await
            && let Ok(charges) = r.json::<Vec<Value>>().await
        {
            let mut captured: BTreeMap<String, usize> = BTreeMap::new();
            for c in charges.iter().filter(|c| c["status"] == "captured") {
                *captured
                    .entry(c["reference"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            let confirmed: Vec<&String> = orders
                .iter()
                .filter(|o| outcome[*o] == "CONFIRMED")
                .collect();
            if confirmed.iter().all(|o| captured.get(*o) == Some(&1)) {
                assert_eq!(
                    captured.len(),
                    confirmed.len(),
                    "no capture for a rejected order, nor for anything else"
                );
                break;
            }
        }
        assert!(Instant::now() < provider_deadline, "charges never balanced");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    drop(tree);
    let _ = std::fs::remove_dir_all(&dir);
}
