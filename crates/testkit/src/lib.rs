//! Starts a whole Tessera system as real processes (`tessera up` with a manifest written for
//! the test: free ports, a temporary state dir, the debug binaries) and talks to it only over
//! HTTP, as a user does.
//!
//! The binaries must be built first (`cargo build --workspace --bins`); the README's test
//! command does that before running the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::identity::{ControlKeys, Credential, Principal};
use tessera::registry::Catalog;

pub mod browser;
pub mod capture;
pub mod engine;
pub mod etcd;
pub mod load;
mod manifest;
pub mod nats;
pub mod postgres;
mod process;
pub mod redis;

pub use process::{admin_of, alive, cmdline, descendants, freeze, pid_of, rss_kb, signal, thaw};

/// Options for the system under test.
#[derive(Clone, Debug)]
pub struct Options {
    pub catalog_replicas: u32,
    pub heartbeat_ms: u64,
    pub ttl_ms: u64,
    pub upstream_timeout_ms: u64,
    pub header_timeout_ms: u64,
    /// `gateway.body_timeout_ms`, when not the default.
    pub body_timeout_ms: Option<u64>,
    /// `gateway.trusted_proxies` (CIDR blocks), when any.
    pub trusted_proxies: Vec<String>,
    pub max_body_bytes: u64,
    /// Extra `[services.*]` and `[[route]]` TOML appended to the manifest.
    pub extra_manifest: String,
    /// HTTPS on a port of its own, with these extra `[gateway.tls]` lines (none: off).
    pub tls: Option<String>,
    /// Extra `[gateway.http2]` lines.
    pub http2: String,
    /// Extra `[gateway]` lines.
    pub gateway: String,
    /// Mutual TLS between the system's processes (`system.mtls = "on"`).
    pub mtls: bool,
    /// Also run the checkout services (order, inventory, payment, provider, notification).
    pub checkout: bool,
    /// Extra env for the checkout services, or the invest example's: (service, key, value).
    pub checkout_env: Vec<(&'static str, &'static str, String)>,
    /// Run the second system, Tessera Invest (`examples/invest/`: market, portfolio, alerts,
    /// signals), instead of the shop's catalog and checkout; auth stays.
    pub invest: bool,
    /// A PostgreSQL of the test's own (its primary's URL, and its replica's): the services'
    /// databases go there, whatever the profile.
    pub postgres: Option<(String, Option<String>)>,
    /// Extra arguments of `tessera up` (`--profile postgres` runs a PostgreSQL of its own:
    /// then the suite's PostgreSQL profile does not name one).
    pub up_args: Vec<String>,
    /// A NATS of the test's own (`nats://host:port`): the events go there, whatever the
    /// profile.
    pub nats: Option<String>,
    /// A Redis of the test's own (`redis://…`): the gateways share their state there, whatever
    /// the profile.
    pub shared: Option<String>,
    /// How many gateways (`gateway.replicas`): `System::gateways` lists them, and
    /// [`System::url`] takes turns among them. None: two when the gateways share Redis (the
    /// distributed profile), else one.
    pub gateways: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            catalog_replicas: 1,
            heartbeat_ms: 300,
            ttl_ms: 1500,
            upstream_timeout_ms: 5000,
            header_timeout_ms: 2000,
            body_timeout_ms: None,
            trusted_proxies: Vec::new(),
            max_body_bytes: 64 * 1024,
            extra_manifest: String::new(),
            tls: None,
            http2: String::new(),
            gateway: String::new(),
            mtls: false,
            checkout: false,
            checkout_env: Vec::new(),
            invest: false,
            up_args: Vec::new(),
            postgres: None,
            nats: None,
            shared: None,
            gateways: None,
        }
    }
}

/// A running system. Dropping it kills the tree.
pub struct System {
    /// The first gateway.
    pub gateway: String,
    /// Every gateway (`Options::gateways`), the first one first.
    pub gateways: Vec<String>,
    /// The gateway's HTTPS listener, when `Options::tls` asked for one.
    pub gateway_tls: Option<String>,
    /// The gateway's admin listener (`/metrics`, `/status/*`).
    pub gateway_admin: String,
    pub control: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    up: Option<Child>,
    log: PathBuf,
    /// In the PostgreSQL profile: the server, and the databases made for this system.
    databases: Option<(String, Vec<String>)>,
    /// Which gateway [`System::url`] sends the next request to.
    turn: std::sync::atomic::AtomicUsize,
    /// The highest `tessera-read-after` answered so far (this client's session).
    read_after: std::sync::Mutex<Option<String>>,
}

pub const ADMIN_EMAIL: &str = "admin@shop.test";
pub const ADMIN_PASSWORD: &str = "admin-password";

/// Where cargo put the binaries of this build.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for bin in [
        "tessera",
        "shop-auth",
        "shop-catalog",
        "shop-order",
        "shop-inventory",
        "shop-payment",
        "shop-payment-provider",
        "shop-notification",
        "invest-market",
        "invest-portfolio",
        "invest-alerts",
    ] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the binaries first (cargo build --workspace --bins), as the README's test command does",
            dir.join(bin).display()
        );
    }
    dir
}

/// A port that is free now, for a process about to start, from below the kernel's ephemeral
/// range (32768 and up on Linux). A port from that range could be handed, between this check
/// and the process binding it, to anything binding port 0 (every service does), and the
/// test would then talk to someone else's service.
pub fn free_port() -> u16 {
    loop {
        // Random, not sequential: tests in other processes pick at the same time.
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Three free ports for `tessera up --profile distributed` (`--nats-port`, `--etcd-port`,
/// `--redis-port`): etcd's peer port (the next one) free too, and none the next of another.
pub fn free_ports_apart() -> [u16; 3] {
    let nats = free_port();
    let etcd = std::iter::repeat_with(free_port)
        .find(|p| {
            ![nats, nats + 1].contains(p)
                && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        })
        .unwrap();
    let redis = std::iter::repeat_with(free_port)
        .find(|p| ![nats, nats + 1, etcd, etcd + 1].contains(p))
        .unwrap();
    [nats, etcd, redis]
}

/// `tessera up`'s arguments for the distributed profile on `ports` ([`free_ports_apart`]).
pub fn distributed_up_args([nats, etcd, redis]: [u16; 3]) -> Vec<String> {
    [
        "--profile",
        "distributed",
        "--nats-port",
        &nats.to_string(),
        "--etcd-port",
        &etcd.to_string(),
        "--redis-port",
        &redis.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Self {
        let bin = bin_dir();
        let dir =
            std::env::temp_dir().join(format!("tessera-e2e-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let control_port = free_port();
        // Gateway i listens on each of these ports + i: they must all be free.
        let shares = opts.shared.is_some()
            || (redis::profile().is_some()
                && !opts.mtls
                && !opts.up_args.iter().any(|a| a == "distributed"));
        let n = opts.gateways.unwrap_or(if shares { 2 } else { 1 }).max(1) as u16;
        let free_run =
            |p: u16| (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok());
        let gateway_port = std::iter::repeat_with(free_port)
            .find(|p| !(*p..*p + n).contains(&control_port) && free_run(*p))
            .expect("ports");
        let admin_port = std::iter::repeat_with(free_port)
            .find(|p| {
                !(*p..*p + n).contains(&control_port)
                    && !(*p..*p + n).any(|q| (gateway_port..gateway_port + n).contains(&q))
                    && free_run(*p)
            })
            .expect("ports");
        let tls_port = std::iter::repeat_with(free_port)
            .find(|p| ![control_port, gateway_port, admin_port].contains(p))
            .expect("ports");
        // The PostgreSQL profile: a database per service, fresh for this system.
        let own_database = opts.up_args.iter().any(|a| a == "postgres");
        let (server, replica) = match &opts.postgres {
            Some((primary, replica)) => (Some(primary.clone()), replica.clone()),
            None => (postgres::profile(), postgres::profile_replica()),
        };
        let databases = server.filter(|_| !own_database).map(|admin| {
            let id = &dir.file_name().unwrap().to_string_lossy()[12..24];
            let names: Vec<String> = manifest::database_services(opts.invest)
                .iter()
                .map(|service| format!("t{id}_{service}"))
                .collect();
            for name in &names {
                postgres::create_database(&admin, name);
            }
            let template = postgres::with_database(&admin, &format!("t{id}_{{service}}"));
            (admin, names, template)
        });
        let database = databases
            .as_ref()
            .map_or(String::new(), |(_, _, t)| format!("database = {t:?}"));
        // And its read replica, when the profile's server has one.
        let database = match (&databases, replica) {
            (Some((_, _, template)), Some(replica)) => {
                let db = template.rsplit_once('/').map_or("", |(_, db)| db);
                let replica = postgres::with_database(&replica, db);
                format!("{database}\ndatabase_replicas = [{replica:?}]")
            }
            _ => database,
        };
        // The NATS profile: events on JetStream, under a subject prefix of this system's own.
        let own_bus = opts.up_args.iter().any(|a| a == "distributed");
        // (The profile's server speaks plain NATS; a system with mutual TLS on reaches NATS
        // over TLS only, so it keeps the embedded log: the distributed profile's own TLS NATS
        // is tested in `runner.rs`.)
        let bus = opts
            .nats
            .clone()
            .or_else(|| nats::profile().filter(|_| !opts.mtls))
            .filter(|_| !own_bus)
            .map_or(String::new(), |url| {
                let id = &dir.file_name().unwrap().to_string_lossy()[12..24];
                format!("bus = \"{url}?prefix=t{id}&lease_ms=2000\"")
            });
        // And the registry on etcd, under a key prefix (and etcd users) of this system's own.
        let registry =
            etcd::profile()
                .filter(|_| !opts.mtls && !own_bus)
                .map_or(String::new(), |url| {
                    let id = &dir.file_name().unwrap().to_string_lossy()[12..24];
                    format!("registry = \"{url}?prefix=t{id}\"")
                });
        // And the gateways' shared state on Redis, under a key prefix of this system's own.
        let shared = opts
            .shared
            .clone()
            .or_else(|| redis::profile().filter(|_| !opts.mtls && !own_bus))
            .map_or(String::new(), |url| {
                let id = &dir.file_name().unwrap().to_string_lossy()[12..24];
                format!("shared = \"{url}?prefix=t{id}\"")
            });
        let manifest = format!(
            r#"
[system]
name = "shop-test"
state_dir = "state"
mtls = "{mtls}"
{database}
{bus}
{registry}
{shared}

[control]
listen = "127.0.0.1:{control_port}"
heartbeat_ms = {heartbeat}
ttl_ms = {ttl}
lease_ms = 2000

[gateway]
listen = "127.0.0.1:{gateway_port}"
admin_listen = "127.0.0.1:{admin_port}"
replicas = {gateways}
upstream_timeout_ms = {upstream_timeout}
header_timeout_ms = {header_timeout}
max_body_bytes = {max_body}
{gateway_extra}

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
prefix = "/api/auth/keys"
service = "auth"
auth = "required"
roles = ["admin"]

[services.auth]
command = ["{bin}/shop-auth"]
env = {{ AUTH_ADMIN_EMAIL = "{ADMIN_EMAIL}", AUTH_ADMIN_PASSWORD = "{ADMIN_PASSWORD}", AUTH_ACCESS_TTL_SECS = "600" }}

{system}
{extra}
"#,
            mtls = if opts.mtls { "on" } else { "off" },
            gateways = n,
            heartbeat = opts.heartbeat_ms,
            ttl = opts.ttl_ms,
            upstream_timeout = opts.upstream_timeout_ms,
            header_timeout = opts.header_timeout_ms,
            max_body = opts.max_body_bytes,
            gateway_extra = manifest::gateway_extra(&opts, tls_port),
            bin = bin.display(),
            extra = opts.extra_manifest,
            system = if opts.invest {
                manifest::invest(&bin, &opts.checkout_env)
            } else {
                manifest::shop(&bin, &opts, databases.is_some())
            },
        );
        let manifest_path = dir.join("tessera.toml");
        std::fs::write(&manifest_path, manifest).expect("write manifest");
        let log = dir.join("up.log");
        let out = std::fs::File::create(&log).expect("log file");
        let up = Command::new(bin.join("tessera"))
            .arg("--manifest")
            .arg(&manifest_path)
            .arg("up")
            .args(&opts.up_args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start tessera up");
        let system = System {
            gateway: format!("http://127.0.0.1:{gateway_port}"),
            gateways: (0..n)
                .map(|i| format!("http://127.0.0.1:{}", gateway_port + i))
                .collect(),
            gateway_tls: opts
                .tls
                .as_ref()
                .map(|_| format!("https://127.0.0.1:{tls_port}")),
            gateway_admin: format!("http://127.0.0.1:{admin_port}"),
            control: format!(
                "{}://127.0.0.1:{control_port}",
                if opts.mtls { "https" } else { "http" }
            ),
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            up: Some(up),
            log,
            databases: databases.map(|(admin, names, _)| (admin, names)),
            read_after: std::sync::Mutex::default(),
            turn: Default::default(),
        };
        system
            .wait_until(Duration::from_secs(60), "the system to be ready", || {
                system.is_ready()
            })
            .await;
        system
    }

    async fn is_ready(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("| ready in"))
    }

    /// Polls `check` every 50 ms until it is true; panics (with the log) after `timeout`.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits (up to 10 s) until some log line satisfies `matches`, and returns it. Processes
    /// write their logs in batches, a few milliseconds behind.
    pub async fn log_line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log().lines().find(|l| matches(l)) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!("no log line for {what}\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `tessera <args>` against this system, as an operator types it: (succeeded, stdout,
    /// stderr).
    /// The keys the control plane keeps under `<prefix>/control/<under>` on the registry's
    /// etcd, when this system's registry is on etcd (the distributed profile); none otherwise.
    pub async fn kept_on_etcd(&self, under: &str) -> Option<Vec<String>> {
        let manifest = std::fs::read_to_string(self.dir.join("tessera.toml")).ok()?;
        let url = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("registry = \""))?
            .trim_end_matches('"');
        let settings = tessera::registry::etcd::EtcdSettings::parse(url).ok()?;
        let mut client = settings.connect().await.expect("the profile's etcd");
        let prefix = format!("{}/control/{under}", settings.prefix);
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_keys_only();
        let got = client
            .get(prefix, Some(options))
            .await
            .expect("a read of etcd");
        Some(
            got.kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect(),
        )
    }

    /// [`System::cli`] without blocking the test's runtime (a load it runs goes on meanwhile).
    pub async fn cli_async(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(bin_dir().join("tessera"))
            .arg("--manifest")
            .arg(self.dir.join("tessera.toml"))
            .args(args)
            .output()
            .await
            .expect("the tessera binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin_dir().join("tessera"))
            .arg("--manifest")
            .arg(self.dir.join("tessera.toml"))
            .args(args)
            .output()
            .expect("the tessera binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The control-plane credential of `principal` (`service:<name>`, `gateway`,
    /// `supervisor`, `admin`) in this system, made with its control keys as `tessera up` does.
    /// With mutual TLS on: an HTTP client holding `principal`'s identity certificate (issued by
    /// the system CA, as the runner issues them), that expects the server to be `target`
    /// (`control`, `service:order`, …).
    pub fn client_as(&self, principal: &str, target: &str) -> reqwest::Client {
        let tls = self.dir.join("state/tls");
        let ca = tessera::tls::Authority::load_or_create(&tls.join("system-ca"), "unused")
            .expect("the system CA");
        let identity = tessera::tls::Identity::of_principal("shop-test", principal);
        let files = ca
            .issue_identity(&self.dir.join("test-identities"), &identity)
            .expect("an identity certificate");
        let internal = tessera::tls::internal::Internal::load(
            "shop-test",
            identity,
            &files,
            &ca.certificate(),
        )
        .expect("mutual TLS");
        let config = internal
            .client_config_for(&internal.identity_of(target))
            .expect("client config");
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .use_preconfigured_tls(config)
            .build()
            .expect("client")
    }

    /// The development CA the gateway's certificate comes from: what HTTPS clients trust.
    pub fn development_ca(&self) -> PathBuf {
        self.dir.join("state/tls/dev-ca/ca.pem")
    }

    /// The gateway's development certificate and key (replace them to rotate it).
    pub fn gateway_certificate(&self) -> (PathBuf, PathBuf) {
        let tls = self.dir.join("state/tls");
        (tls.join("gateway.pem"), tls.join("gateway.key"))
    }

    pub fn credential(&self, principal: &str) -> Credential {
        let spec =
            std::fs::read_to_string(self.dir.join("state/control.keys")).expect("the control keys");
        ControlKeys::from_spec(spec.trim())
            .expect("the system's control keys")
            .issue(&Principal::parse(principal).expect("a principal"))
    }

    /// A request to the control plane at `path`, as an admin.
    pub fn control(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let client = match self.control.starts_with("https://") {
            true => self.client_as("admin", "control"),
            false => self.http.clone(),
        };
        client
            .request(method, format!("{}{path}", self.control))
            .header("authorization", self.credential("admin").authorization())
    }

    /// The control plane's JSON answer at `path`, read as an admin.
    pub async fn control_json(&self, path: &str) -> Value {
        self.control(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// What an instance's admin listener (`admin`, `host:port`) serves on `/metrics`.
    pub async fn metrics_of(&self, admin: &str) -> String {
        self.http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The registry's current view, if the control plane answers now (after a kill it may
    /// still be restarting).
    pub async fn try_registry(&self) -> Option<Catalog> {
        self.control(reqwest::Method::GET, "/v1/services")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// The registry's current view.
    pub async fn registry(&self) -> Catalog {
        self.control(reqwest::Method::GET, "/v1/services")
            .send()
            .await
            .expect("registry")
            .json()
            .await
            .expect("catalog")
    }

    /// The passport key set of this system (tests use it to forge and to call services directly).
    pub fn passport_keys(&self) -> String {
        std::fs::read_to_string(self.dir.join("state/passport.keys"))
            .expect("passport keys")
            .trim()
            .to_string()
    }

    /// A passport of this system for a service (`service:test`, role `system`): for calling
    /// services directly, as another service would.
    pub fn system_passport(&self) -> String {
        tessera::PassportKeys::from_spec(&self.passport_keys(), "shop-test")
            .expect("the system's keys")
            .mint(
                "test",
                "service:test",
                &["system".into()],
                None,
                &tessera::TraceContext::new_root(),
            )
    }

    /// A passport of this system for user `sub` with `roles`, as the gateway mints one: for
    /// calling a service directly as that user (many users, without signing each up).
    pub fn user_passport(&self, sub: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        tessera::PassportKeys::from_spec(&self.passport_keys(), "shop-test")
            .expect("the system's keys")
            .mint(
                "tessera-gateway",
                sub,
                &roles,
                None,
                &tessera::TraceContext::new_root(),
            )
    }

    /// `http://<address>` of the first live instance of `service`.
    pub async fn instance_url(&self, service: &str) -> String {
        let catalog = self.registry().await;
        let instance = catalog
            .services
            .get(service)
            .and_then(|list| list.first())
            .unwrap_or_else(|| panic!("no instance of {service}"));
        format!("http://{}", instance.address)
    }

    /// `path` on a gateway: each call the next one in turn, so that every gateway of the
    /// system serves the tests' requests.
    pub fn url(&self, path: &str) -> String {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{path}", self.gateways[turn % self.gateways.len()])
    }

    /// The URL of `path` on the gateway's admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_admin)
    }

    /// Sends through the gateway; returns status and the envelope.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        // As a client that reads its own writes does: what the last write answered, sent back
        // (with read replicas, docs/databases.md).
        let seen = self.read_after.lock().unwrap().clone();
        if let Some(lsn) = seen {
            req = req.header(tessera::store::session::HEADER, lsn);
        }
        let resp = req.send().await.expect("request");
        if let Some(lsn) = resp
            .headers()
            .get(tessera::store::session::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(tessera::store::session::parse)
        {
            let mut seen = self.read_after.lock().unwrap();
            let highest = seen
                .as_deref()
                .and_then(tessera::store::session::parse)
                .map_or(lsn, |s| s.max(lsn));
            *seen = Some(tessera::store::session::format(highest));
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        (status, json)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Signs up a fresh user and logs in: (access token, refresh token).
    pub async fn new_user(&self) -> (String, String) {
        let email = format!("u{}@shop.test", uuid::Uuid::new_v4().simple());
        let (status, body) = self
            .post(
                "/api/auth/signup",
                None,
                serde_json::json!({"email": email, "password": "password123", "name": "Test"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        self.login(&email, "password123").await
    }

    /// Places an order of `items` (`[{"productId", "quantity"}]`) as `token`'s user: its id.
    pub async fn place_order(&self, token: &str, items: Value) -> String {
        let (status, body) = self
            .post(
                "/api/orders",
                Some(token),
                serde_json::json!({ "items": items }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["data"]["orderId"]
            .as_str()
            .expect("an order id")
            .to_string()
    }

    /// Waits (30 s at most) until the order is CONFIRMED or REJECTED: its detail.
    pub async fn settled_order(&self, token: &str, order_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self
                .get(&format!("/api/orders/{order_id}"), Some(token))
                .await;
            assert_eq!(status, 200, "{body}");
            if matches!(
                body["data"]["status"].as_str(),
                Some("CONFIRMED" | "REJECTED")
            ) {
                return body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "order {order_id} not settled: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tessera Invest: buys `quantity` of `ticker` as `token`'s member.
    pub async fn buy(&self, token: &str, ticker: &str, quantity: u32) {
        let (status, body) = self
            .post(
                "/api/portfolio/trades",
                Some(token),
                serde_json::json!({ "ticker": ticker, "side": "buy", "quantity": quantity }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Tessera Invest: waits (30 s at most) until alerts counts `members` in the audience of
    /// `query` (`sector=Utilities`, `ticker=UTI01`): what a news item or a signal reaches.
    pub async fn wait_for_audience(&self, admin: &str, query: &str, members: usize) {
        let path = format!("/api/alerts/audience?{query}");
        self.wait_until(
            Duration::from_secs(30),
            &format!("alerts to know {members} members of {query}"),
            || async {
                let (_, body) = self.get(&path, Some(admin)).await;
                body["data"]["members"] == members
            },
        )
        .await;
    }

    /// Tessera Invest: publishes a news item as `admin`; the answer's `data`.
    pub async fn publish_news(&self, admin: &str, news: Value) -> Value {
        let (status, body) = self.post("/api/market/news", Some(admin), news).await;
        assert_eq!(status, 201, "{body}");
        body["data"].clone()
    }

    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/api/auth/login",
                None,
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let data = &body["data"];
        (
            data["accessToken"].as_str().unwrap().to_string(),
            data["refreshToken"].as_str().unwrap().to_string(),
        )
    }

    pub async fn admin(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.0
    }

    /// The pid of `tessera up`.
    pub fn up_pid(&self) -> u32 {
        self.up.as_ref().expect("running").id()
    }

    /// Every process below `tessera up`.
    pub fn tree_pids(&self) -> Vec<u32> {
        descendants(self.up_pid())
    }

    /// The gateway's pid (`tessera … gateway`, a child of `tessera up`).
    pub fn gateway_pid(&self) -> u32 {
        self.tree_pids()
            .into_iter()
            .find(|pid| cmdline(*pid).last().is_some_and(|a| a == "gateway"))
            .expect("a gateway process")
    }

    /// Sends SIGINT (Ctrl-C) to `tessera up` and waits for it to exit.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let mut up = self.up.take().expect("running");
        signal(up.id(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = up.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = up.kill();
                panic!("tessera up did not stop within 30 s\n{}", self.log_tail(60));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            if std::thread::panicking() {
                eprintln!("--- tessera up log (tail) ---\n{}", self.log_tail(120));
            }
            // Children die with it (PR_SET_PDEATHSIG).
            let _ = up.kill();
            let _ = up.wait();
        }
        if let Some((admin, names)) = &self.databases {
            for name in names {
                postgres::drop_database(admin, name);
            }
        }
        // TESSERA_TEST_KEEP=1 keeps the system's directory (its whole log) for a look.
        if std::env::var_os("TESSERA_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
