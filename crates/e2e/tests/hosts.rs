//! A system across three hosts (network namespaces joined by a bridge, made and removed by
//! the test): the control plane on one, every shop service on another, the gateway on a
//! third, each started by hand from `tessera env <principal>`, as an operator would on real
//! hosts. With addresses that are not loopback, mutual TLS is on by default: a checkout
//! confirms, and a capture of the bridge shows nothing of the internal calls in clear (no
//! passport, no request path). The same system with `mtls = "off"` shows both, so the check
//! can fail. Needs root (CI runs as root), `ip` and tcpdump.

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

/// Starts `program` on `host` with `env`, its output in `log`.
fn start(
    hosts: &Hosts,
    host: u8,
    program: &Path,
    args: &[&str],
    env: BTreeMap<String, String>,
    log: &Path,
) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new("ip")
        .args(["netns", "exec", &hosts.ns(host)])
        .arg(program)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("ip netns exec")
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
