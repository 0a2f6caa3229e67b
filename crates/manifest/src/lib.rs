//! The system manifest, `tessera.toml`: what `tessera up` runs and how the gateway routes.
//!
//! The format is documented in `docs/manifest.md`. It is a crate of its own because only the
//! CLI (which runs the system), the gateway (which routes) and tests read it: a service never
//! does (it gets its settings from the environment the runner hands it), so the service
//! library does not link it. The resilience settings it holds are `tessera_resilience`'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use tessera_resilience::RateLimit;
pub use tessera_resilience::{Resilience, RetryConfig};

mod cidr;
mod database;
mod tls;

pub use cidr::Cidr;
pub use tls::{CertificatePaths, Http2, Plain, Tls};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub system: System,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub gateway: Gateway,
    #[serde(default)]
    pub telemetry: Telemetry,
    #[serde(default)]
    pub console: Console,
    /// Routes, matched by longest path prefix.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// Directories the gateway serves as static files (`[[files]]`), matched by longest
    /// prefix together with the routes.
    #[serde(default)]
    pub files: Vec<FilesRoute>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// What `tessera up --profile <name>` changes (`[profile.postgres]`).
    #[serde(default, rename = "profile")]
    pub profiles: BTreeMap<String, ProfileSpec>,
}

/// The profiles `tessera up` knows: where the services keep their data.
pub const PROFILES: [&str; 3] = ["embedded", "postgres", "distributed"];

/// What a profile changes in the system it runs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Replicas of these services under the profile, instead of their own `replicas`: on a
    /// shared database a stateful service can run several (`replicas = { order = 2 }`).
    #[serde(default)]
    pub replicas: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct System {
    /// The system's name; also the audience of its passports.
    pub name: String,
    /// Where state lives (registry files, databases, keys), relative to the manifest.
    pub state_dir: PathBuf,
    /// A command `tessera up` runs before starting anything (for example a build).
    pub build: Option<Command>,
    /// Mutual TLS between the system's processes (`docs/tls.md`): `"auto"` turns it on when
    /// any address in the manifest is not loopback.
    pub mtls: Mtls,
    /// Where the services keep their data (`docs/databases.md`): a URL for every service,
    /// `{service}` standing for the service's name (`postgres://shop@db/shop_{service}`);
    /// a service's own `database` wins. None: each service's embedded SQLite file.
    pub database: Option<String>,
    /// Read replicas of each service's database, `{service}` as in `database`.
    #[serde(default)]
    pub database_replicas: Vec<String>,
    /// Where events go (`docs/scale-out.md`): a `nats://` URL puts them on NATS JetStream,
    /// `{service}` standing for each process's name (a NATS user of its own); None: the
    /// control plane's embedded log.
    pub bus: Option<String>,
    /// Where the registry lives (`docs/scale-out.md`): an `etcd://` URL puts instances on
    /// etcd, each process as an etcd user of its own; None: the control plane's.
    pub registry: Option<String>,
    /// What the gateways (and a service's replicas) share (`docs/scale-out.md`): a
    /// `redis://` (`rediss://`: over TLS, required with mutual TLS on) URL puts rate limits,
    /// revocations and the services' caches there; None: each process's memory.
    pub shared: Option<String>,
}

/// Whether the system's processes speak mutual TLS among themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mtls {
    #[default]
    Auto,
    On,
    Off,
}

impl Default for System {
    fn default() -> Self {
        Self {
            name: "tessera".into(),
            state_dir: ".tessera".into(),
            build: None,
            mtls: Mtls::Auto,
            database: None,
            database_replicas: Vec::new(),
            bus: None,
            registry: None,
            shared: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    pub listen: SocketAddr,
    /// How often instances heartbeat.
    pub heartbeat_ms: u64,
    /// How long an instance stays registered without a heartbeat.
    pub ttl_ms: u64,
    /// Partitions of a new event-log topic.
    pub partitions: u32,
    /// How long a consumer holds its partitions without fetching.
    pub lease_ms: u64,
    /// `"full"`: the log acknowledges an event once it is synced to disk (it survives a power
    /// loss); `"normal"`: once it is written (it survives a crash of the control plane only).
    pub log_sync: LogSync,
}

/// What the system's processes record of their work, and where it goes
/// (`docs/observability.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// The share of traces recorded, from 0 to 1 (head sampling: decided where a trace starts,
    /// followed by every hop after it).
    pub sample: f64,
    /// OTLP/HTTP endpoints (base URLs: Jaeger, Tempo, an OpenTelemetry Collector) that spans
    /// go to besides the control plane's collector.
    pub export: Vec<String>,
    /// How long the control plane's collector keeps spans, in hours.
    pub retention_hours: u64,
    /// How much the collector keeps at most, in MiB (the oldest go first).
    pub max_mb: u64,
    /// How often the control plane scrapes every instance's `/metrics` for its RED series.
    pub scrape_ms: u64,
    /// Whether spans and log records go to the control plane's collector (the console's
    /// traces and logs); false sends them to `export` only (a team that keeps them in Tempo
    /// or Jaeger).
    pub collect: bool,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            sample: 1.0,
            export: Vec::new(),
            retention_hours: 7 * 24,
            max_mb: 512,
            scrape_ms: 5000,
            collect: true,
        }
    }
}

/// The Tessera Console (`docs/observability.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// `false` on a local development system: `tessera up` prints the console's URL with the
    /// admin's credential in it, so opening it signs in. Otherwise the console asks for the
    /// credential (`tessera credential admin`).
    pub login: bool,
}

impl Default for Console {
    fn default() -> Self {
        Self { login: true }
    }
}

/// When the event log acknowledges an append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSync {
    #[default]
    Full,
    Normal,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8500)),
            heartbeat_ms: 1000,
            ttl_ms: 3000,
            partitions: 4,
            lease_ms: 10_000,
            log_sync: LogSync::Full,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    pub listen: SocketAddr,
    /// How many gateway processes `tessera up` runs (each stateless apart from its caches;
    /// share rate limits and revocations through `system.shared`). Gateway *i* (from 0)
    /// listens on each of its addresses' port + *i*.
    pub replicas: u32,
    /// Where `/metrics` and `/status/*` are served: an address of their own, loopback by
    /// default, never the public one.
    pub admin_listen: SocketAddr,
    /// Whole-request time limit for an upstream, in milliseconds (504 after it).
    pub upstream_timeout_ms: u64,
    /// Time limit for a client to send its request headers, in milliseconds.
    pub header_timeout_ms: u64,
    /// A kept-alive client connection idle this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Time limit for a client to send a request body, in milliseconds, extended by a second
    /// for every `min_body_rate` bytes received.
    pub body_timeout_ms: u64,
    /// The least rate, in bytes per second, at which a client must send a body once past
    /// `body_timeout_ms` (0: the whole body within it); slower clients are disconnected.
    pub min_body_rate: u64,
    /// The most client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: u64,
    /// Largest upstream response body the gateway will wrap.
    pub max_response_bytes: u64,
    /// A WebSocket (any upgraded connection) is closed when nothing crosses it for this
    /// long, in milliseconds…
    pub websocket_idle_timeout_ms: u64,
    /// …and in any case after this long (so that a revoked session's socket ends too).
    pub websocket_max_ms: u64,
    /// Peers whose `X-Forwarded-For` and `Forwarded` are believed (a load balancer in front of
    /// the gateway); every other client's are dropped. None by default.
    pub trusted_proxies: Vec<Cidr>,
    /// HTTPS (`tls.rs`); off when absent.
    pub tls: Option<Tls>,
    /// HTTP/2's limits.
    pub http2: Http2,
    /// Where access tokens come from; without it, every route must be public.
    pub tokens: Option<Tokens>,
    /// Breakers, bulkheads and retries for every upstream service…
    pub resilience: Resilience,
    /// …or, per service, instead.
    pub upstreams: BTreeMap<String, Resilience>,
    /// How often, in milliseconds, the gateway checks its manifest file for a change, and
    /// reloads its routes when it changed (`docs/gateway.md`); 0: only on `tessera reload`.
    pub reload_watch_ms: u64,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            replicas: 1,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            upstream_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            body_timeout_ms: 10_000,
            min_body_rate: 1024,
            max_connections: 10_000,
            max_body_bytes: 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            websocket_idle_timeout_ms: 300_000,
            websocket_max_ms: 3_600_000,
            trusted_proxies: Vec::new(),
            tls: None,
            http2: Http2::default(),
            tokens: None,
            resilience: Resilience::default(),
            upstreams: BTreeMap::new(),
            reload_watch_ms: 1000,
        }
    }
}

/// The service that issues access tokens, and how to check them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    /// The issuing service (found through the registry).
    pub service: String,
    /// Its JWKS path.
    pub jwks_path: String,
    /// Its revocation feed path.
    pub revocations_path: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
}

/// A directory of static files the gateway serves under a path prefix: a web page, its
/// scripts and styles (`docs/gateway.md`, "Static files").
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesRoute {
    /// Path prefix, matched at segment boundaries like a route's.
    pub prefix: String,
    /// The directory, relative to the manifest's.
    pub dir: PathBuf,
    /// The file a request for a directory gets.
    #[serde(default = "index_html")]
    pub index: String,
    /// How long a browser may keep a file other than a page without asking again
    /// (`Cache-Control: max-age`); pages (`.html`) are always revalidated.
    #[serde(default = "five_minutes")]
    pub max_age_secs: u64,
}

fn index_html() -> String {
    "index.html".into()
}

fn five_minutes() -> u64 {
    300
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix, matched at segment boundaries (`/api/auth` matches `/api/auth/login`).
    pub prefix: String,
    pub service: String,
    /// `public`: a token is optional; `required`: 401 without a valid one.
    #[serde(default)]
    pub auth: AuthMode,
    /// If not empty, the caller needs one of these roles (403 otherwise).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Token-bucket limits on this route (429 past them).
    #[serde(default)]
    pub rate_limit: Option<RouteLimits>,
    /// What to answer while the service's breaker is open, instead of 503.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// Whether WebSocket upgrades pass to the service (authenticated like any request, then
    /// spliced); on other routes an upgrade is a plain request.
    #[serde(default)]
    pub websocket: bool,
    /// Whether HTTP/2 requests pass to the service as streams, trailers included (gRPC; the
    /// service speaks HTTP/2 with prior knowledge).
    #[serde(default)]
    pub grpc: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// Per client address, e.g. `"100/s"`.
    pub per_ip: Option<RateLimit>,
    /// Per signed-in user.
    pub per_user: Option<RateLimit>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    #[serde(default = "ok_status")]
    pub status: u16,
    /// A JSON document, answered as the envelope's `data`.
    pub body: String,
}

fn ok_status() -> u16 {
    200
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Public,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The program and its arguments: a string split on white space, or a list.
    pub command: Command,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Extra environment for every replica: the service's settings, which `tessera config`
    /// changes at run time (`docs/config.md`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Settings never shown (`tessera config`, the log), beside those whose name says so
    /// (`PASSWORD`, `SECRET`, `TOKEN`, `KEY`, `CREDENTIAL`).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The topics it publishes to: the log refuses it any other, and consumers refuse events
    /// of these topics from any other service. (Its consumer groups' dead-letter topics are
    /// its own without saying.)
    #[serde(default)]
    pub produces: Vec<String>,
    /// The topics it reads, in consumer groups named after it (`<name>` or `<name>.<more>`).
    #[serde(default)]
    pub consumes: Vec<String>,
    /// The services it calls: with mutual TLS on, a service accepts calls only from the
    /// gateway, the operators, and the services that name it here.
    #[serde(default)]
    pub calls: Vec<String>,
    /// Its database URL, if not the system's (`system.database`) or the embedded default.
    pub database: Option<String>,
    /// Read replicas of its own database (with its own `database`).
    #[serde(default)]
    pub database_replicas: Vec<String>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Line(String),
    Argv(Vec<String>),
}

impl Command {
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Line(s) => s.split_whitespace().map(str::to_string).collect(),
            Command::Argv(v) => v.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ManifestError::Read(path.to_path_buf(), e))?;
        Self::parse(&text).map_err(|e| match e {
            ManifestError::Parse(_, m) => ManifestError::Parse(path.to_path_buf(), m),
            ManifestError::Invalid(_, m) => ManifestError::Invalid(path.to_path_buf(), m),
            other => other,
        })
    }

    /// The manifest as profile `name` runs it: the overrides of its `[profile.<name>]`, if any.
    pub fn with_profile(mut self, name: &str) -> Self {
        if let Some(profile) = self.profiles.get(name) {
            for (service, &replicas) in &profile.replicas {
                if let Some(spec) = self.services.get_mut(service) {
                    spec.replicas = replicas;
                }
            }
        }
        self
    }

    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| {
            ManifestError::Parse(PathBuf::new(), database::hide_passwords(&e.to_string()))
        })?;
        m.validate()
            .map_err(|msg| ManifestError::Invalid(PathBuf::new(), msg))?;
        Ok(m)
    }

    /// Whether the system's processes speak mutual TLS: on when asked, or, for `auto`, when
    /// the control plane or the gateway listens on an address that is not loopback.
    pub fn mtls(&self) -> bool {
        match self.system.mtls {
            Mtls::On => true,
            Mtls::Off => false,
            Mtls::Auto => {
                let mut addresses = vec![self.control.listen, self.gateway.listen];
                addresses.extend(self.gateway.tls.as_ref().map(|t| t.listen));
                // A service told to listen elsewhere than loopback counts too.
                addresses.extend(
                    self.services
                        .values()
                        .filter_map(|s| s.env.get("TESSERA_LISTEN")?.parse::<SocketAddr>().ok()),
                );
                addresses.iter().any(|a| !a.ip().is_loopback())
            }
        }
    }

    /// The control plane's URL, as the system's processes reach it.
    /// This manifest as gateway `index` (from 0) of `gateway.replicas` sees it: each of its
    /// listening ports moved up by `index`.
    pub fn gateway_replica(mut self, index: u32) -> Self {
        let up = |a: &mut SocketAddr| a.set_port(a.port() + index as u16);
        up(&mut self.gateway.listen);
        up(&mut self.gateway.admin_listen);
        if let Some(tls) = &mut self.gateway.tls {
            up(&mut tls.listen);
        }
        self
    }

    pub fn control_url(&self) -> String {
        let scheme = if self.mtls() { "https" } else { "http" };
        format!("{scheme}://{}", self.control.listen)
    }

    /// The principals a service accepts calls from: the gateway, the operators, and the
    /// services that say they call it.
    pub fn callers_of(&self, service: &str) -> Vec<String> {
        let mut callers: Vec<String> = ["gateway", "supervisor", "admin", "control"]
            .map(String::from)
            .to_vec();
        callers.extend(
            self.services
                .iter()
                .filter(|(_, spec)| spec.calls.iter().any(|c| c == service))
                .map(|(name, _)| format!("service:{name}")),
        );
        callers
    }

    /// Every principal of the system: each service, the gateway, the operators.
    pub fn principals(&self) -> Vec<String> {
        let mut all: Vec<String> = ["gateway", "supervisor", "admin"]
            .map(String::from)
            .to_vec();
        all.extend(self.services.keys().map(|name| format!("service:{name}")));
        all
    }

    /// The database URL of `service`: its own `database`, else `system.database` with
    /// `{service}` replaced by its name (`-` written `_`, as a database name wants), else
    /// none (the embedded default).
    pub fn database_of(&self, service: &str) -> Option<String> {
        if let Some(own) = self.services.get(service).and_then(|s| s.database.clone()) {
            return Some(own);
        }
        let template = self.system.database.as_ref()?;
        Some(template.replace("{service}", &service.replace('-', "_")))
    }

    /// The bus URL of `principal`'s process (`service:order`, `control`): `system.bus` with
    /// `{service}` replaced by its name; None for the embedded log.
    pub fn bus_of(&self, principal: &str) -> Option<String> {
        let name = principal.strip_prefix("service:").unwrap_or(principal);
        Some(self.system.bus.as_ref()?.replace("{service}", name))
    }

    /// The read replicas of `service`'s database: its own, else (when its database is the
    /// system's) `system.database_replicas` with `{service}` replaced as in
    /// [`Manifest::database_of`].
    pub fn database_replicas_of(&self, service: &str) -> Vec<String> {
        match self.services.get(service) {
            Some(spec) if spec.database.is_some() => spec.database_replicas.clone(),
            _ if self.system.database.is_some() => self
                .system
                .database_replicas
                .iter()
                .map(|t| t.replace("{service}", &service.replace('-', "_")))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every declared topic and the services that produce it.
    pub fn producers(&self) -> BTreeMap<String, Vec<String>> {
        let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, spec) in &self.services {
            for topic in &spec.produces {
                topics.entry(topic.clone()).or_default().push(name.clone());
            }
        }
        topics
    }

    fn validate(&self) -> Result<(), String> {
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !valid_name(&self.system.name) {
            return Err("system.name: use letters, digits, '-' or '_'".into());
        }
        if let Some(url) = &self.system.database {
            database::check_database_url(url).map_err(|e| format!("system.database: {e}"))?;
        }
        for url in &self.system.database_replicas {
            database::check_replica_url(url)
                .map_err(|e| format!("system.database_replicas: {e}"))?;
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample) {
            return Err("telemetry.sample: a share from 0 to 1".into());
        }
        for url in &self.telemetry.export {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(',') {
                return Err(format!(
                    "telemetry.export: {url:?} is not an http:// or https:// base URL"
                ));
            }
        }
        if self.telemetry.retention_hours == 0 || self.telemetry.max_mb == 0 {
            return Err("telemetry.retention_hours and telemetry.max_mb: more than 0".into());
        }
        if self.telemetry.scrape_ms < 100 {
            return Err("telemetry.scrape_ms: at least 100".into());
        }
        if let Some(url) = &self.system.bus
            && !url.starts_with("nats://")
        {
            return Err("system.bus: a nats:// URL (or none, for the embedded log)".into());
        }
        if let Some(url) = &self.system.shared {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(
                    "system.shared: a redis:// or rediss:// URL (or none, for each gateway's memory)"
                        .into(),
                );
            }
            // As NATS and etcd are: with the system's mutual TLS on, no process speaks to an
            // engine in clear (its password would cross the network as it is).
            if self.mtls() && url.starts_with("redis://") {
                return Err(
                    "system.shared: with mutual TLS on (system.mtls), Redis is reached over TLS: a rediss:// URL".into(),
                );
            }
        }
        if (1..100).contains(&self.gateway.reload_watch_ms) {
            return Err("gateway.reload_watch_ms: 0 (off) or at least 100".into());
        }
        if !(1..=16).contains(&self.gateway.replicas) {
            return Err("gateway.replicas: from 1 to 16".into());
        }
        // Gateway i listens on each port + i: the ranges must not meet, nor pass 65535.
        let n = self.gateway.replicas;
        let mut ranges = vec![
            ("gateway.listen", self.gateway.listen),
            ("gateway.admin_listen", self.gateway.admin_listen),
        ];
        if let Some(tls) = &self.gateway.tls {
            ranges.push(("gateway.tls.listen", tls.listen));
        }
        for (i, (name, a)) in ranges.iter().enumerate() {
            if u32::from(a.port()) + n - 1 > 65535 {
                return Err(format!("{name}: its port + gateway.replicas passes 65535"));
            }
            for (other, b) in &ranges[i + 1..] {
                let (a0, b0) = (u32::from(a.port()), u32::from(b.port()));
                if a.ip() == b.ip() && a0 < b0 + n && b0 < a0 + n {
                    return Err(format!(
                        "{name} and {other}: with gateway.replicas = {n}, gateway i listens on each port + i, and these ranges meet"
                    ));
                }
            }
        }
        if let Some(url) = &self.system.registry
            && !url.starts_with("etcd://")
        {
            return Err(
                "system.registry: an etcd:// URL (or none, for the control plane's)".into(),
            );
        }
        for (profile, spec) in &self.profiles {
            if !PROFILES.contains(&profile.as_str()) {
                return Err(format!(
                    "profile.{profile}: no such profile (one of: {})",
                    PROFILES.join(", ")
                ));
            }
            for (service, &replicas) in &spec.replicas {
                if !self.services.contains_key(service) {
                    return Err(format!(
                        "profile.{profile}.replicas.{service}: no such service"
                    ));
                }
                if !(1..=64).contains(&replicas) {
                    return Err(format!(
                        "profile.{profile}.replicas.{service}: must be 1 to 64"
                    ));
                }
            }
        }
        for (name, spec) in &self.services {
            if !valid_name(name) {
                return Err(format!(
                    "services.{name}: a service name uses letters, digits, '-' or '_'"
                ));
            }
            // The control plane's and the gateways' own names on the engines (their users).
            if name == "control" || name == "gateway" {
                return Err(format!(
                    "services.{name}: the name is the {}'s",
                    if name == "control" {
                        "control plane"
                    } else {
                        "gateway"
                    }
                ));
            }
            if spec.command.argv().is_empty() {
                return Err(format!("services.{name}.command: is empty"));
            }
            if !(1..=64).contains(&spec.replicas) {
                return Err(format!("services.{name}.replicas: must be 1 to 64"));
            }
            if let Some(url) = &spec.database {
                database::check_database_url(url)
                    .map_err(|e| format!("services.{name}.database: {e}"))?;
            }
            for url in &spec.database_replicas {
                database::check_replica_url(url)
                    .map_err(|e| format!("services.{name}.database_replicas: {e}"))?;
            }
            for (key, topics) in [("produces", &spec.produces), ("consumes", &spec.consumes)] {
                for topic in topics {
                    if !valid_topic(topic) {
                        return Err(format!(
                            "services.{name}.{key}: {topic:?} is not a topic name (1 to 200 of a-z, A-Z, 0-9, '.', '-', '_')"
                        ));
                    }
                    if topic.starts_with("deadletter.") {
                        return Err(format!(
                            "services.{name}.{key}: {topic:?}: dead-letter topics are their groups' own, not declared"
                        ));
                    }
                }
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !route.prefix.starts_with('/') {
                return Err(format!("route[{i}].prefix: must start with '/'"));
            }
            if !valid_name(&route.service) {
                return Err(format!(
                    "route[{i}].service: {:?} is not a service name",
                    route.service
                ));
            }
            if route.auth == AuthMode::Required && self.gateway.tokens.is_none() {
                return Err(format!(
                    "route[{i}]: auth = \"required\" needs a [gateway.tokens] section"
                ));
            }
            if self.routes[..i]
                .iter()
                .any(|r| r.prefix.trim_end_matches('/') == route.prefix.trim_end_matches('/'))
            {
                return Err(format!(
                    "route[{i}].prefix: {:?} is listed twice",
                    route.prefix
                ));
            }
        }
        for (i, files) in self.files.iter().enumerate() {
            let prefix = files.prefix.trim_end_matches('/');
            if !files.prefix.starts_with('/') {
                return Err(format!("files[{i}].prefix: must start with '/'"));
            }
            if self
                .routes
                .iter()
                .map(|r| &r.prefix)
                .chain(self.files[..i].iter().map(|f| &f.prefix))
                .any(|p| p.trim_end_matches('/') == prefix)
            {
                return Err(format!(
                    "files[{i}].prefix: {:?} is already a route's or files' prefix",
                    files.prefix
                ));
            }
            if files.index.is_empty() || files.index.contains('/') {
                return Err(format!("files[{i}].index: a file name"));
            }
        }
        if !(1..=256).contains(&self.control.partitions) {
            return Err("control.partitions: must be 1 to 256".into());
        }
        if self.control.lease_ms < 500 {
            return Err("control.lease_ms: must be at least 500".into());
        }
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(f) = &route.fallback {
                if serde_json::from_str::<serde::de::IgnoredAny>(&f.body).is_err() {
                    return Err(format!("route[{i}].fallback.body: must be a JSON document"));
                }
                if !(200..=599).contains(&f.status) {
                    return Err(format!("route[{i}].fallback.status: must be 200 to 599"));
                }
            }
        }
        for (name, r) in std::iter::once((&"(default)".to_string(), &self.gateway.resilience))
            .chain(&self.gateway.upstreams)
        {
            r.breaker
                .validate()
                .map_err(|e| format!("gateway.upstreams.{name}.breaker: {e}"))?;
            if r.max_concurrent == 0 || r.retry.max_attempts == 0 {
                return Err(format!(
                    "gateway.upstreams.{name}: max_concurrent and retry.max_attempts must be at least 1"
                ));
            }
        }
        let g = &self.gateway;
        if g.admin_listen == g.listen {
            return Err("gateway.admin_listen: must differ from gateway.listen".into());
        }
        if self.mtls() {
            // Names become DNS names in identity certificates: compared without case, and
            // only letters, digits and hyphens.
            let dns = |n: &str| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !dns(&self.system.name) {
                return Err("system.name: with mutual TLS, only letters, digits and '-'".into());
            }
            let mut seen = std::collections::BTreeSet::new();
            for name in self.services.keys() {
                if !dns(name) || !seen.insert(name.to_ascii_lowercase()) {
                    return Err(format!(
                        "services.{name}: with mutual TLS, a name of letters, digits and '-', unlike every other service's but for case"
                    ));
                }
            }
            for (name, spec) in &self.services {
                if let Some(unknown) = spec.calls.iter().find(|c| !self.services.contains_key(*c)) {
                    return Err(format!("services.{name}.calls: no service {unknown:?}"));
                }
                // Mail asks auth for each recipient's address (`tessera::mail`).
                if spec.env.contains_key("MAIL_SMTP_HOST")
                    && !spec.calls.iter().any(|c| c == "auth")
                {
                    return Err(format!(
                        "services.{name}: it sends mail (MAIL_SMTP_HOST), which asks auth for each recipient's address: add calls = [\"auth\"]"
                    ));
                }
            }
        }
        if self.mtls()
            && let Some(i) = self.routes.iter().position(|r| r.grpc)
        {
            return Err(format!(
                "route[{i}].grpc: gRPC upstreams are not yet spoken to over mutual TLS (system.mtls is on)"
            ));
        }
        if let Some(tls) = &g.tls {
            if [g.listen, g.admin_listen].contains(&tls.listen) {
                return Err(
                    "gateway.tls.listen: must differ from gateway.listen and admin_listen".into(),
                );
            }
            if tls.reload_ms == 0 {
                return Err("gateway.tls.reload_ms: must be at least 1".into());
            }
        }
        let h2 = &g.http2;
        if h2.max_concurrent_streams == 0
            || h2.max_header_list_bytes < 1024
            || h2.stream_window_bytes < 65_535
            || h2.connection_window_bytes < h2.stream_window_bytes
        {
            return Err("gateway.http2: at least 1 stream, 1 KiB of headers, and windows of at least 65535 bytes (the connection's at least a stream's)".into());
        }
        if g.max_connections == 0 {
            return Err("gateway.max_connections: must be at least 1".into());
        }
        for (key, ms) in [
            ("upstream_timeout_ms", g.upstream_timeout_ms),
            ("header_timeout_ms", g.header_timeout_ms),
            ("idle_timeout_ms", g.idle_timeout_ms),
            ("body_timeout_ms", g.body_timeout_ms),
            ("websocket_idle_timeout_ms", g.websocket_idle_timeout_ms),
            ("websocket_max_ms", g.websocket_max_ms),
        ] {
            if ms == 0 {
                return Err(format!("gateway.{key}: must be at least 1"));
            }
        }
        if self.control.ttl_ms <= self.control.heartbeat_ms {
            return Err("control.ttl_ms: must be longer than control.heartbeat_ms".into());
        }
        Ok(())
    }
}

/// What the event log accepts as a topic name.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 200
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_is_reached_over_tls_with_mutual_tls_on_and_engine_names_are_reserved() {
        let with = |system: &str, services: &str| {
            Manifest::parse(&format!(
                "[system]\nname = \"s\"\n{system}\n[services.a]\ncommand = \"a\"\n{services}"
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let clear = "shared = \"redis://:pw@10.0.0.1:6379\"";
        let tls = "shared = \"rediss://:pw@10.0.0.1:6379\"";
        assert_eq!(with(&format!("mtls = \"off\"\n{clear}"), ""), Ok(()));
        assert_eq!(with(&format!("mtls = \"on\"\n{tls}"), ""), Ok(()));
        let refused = with(&format!("mtls = \"on\"\n{clear}"), "").unwrap_err();
        assert!(refused.contains("rediss://"), "{refused}");
        let refused = with("", "[services.gateway]\ncommand = \"g\"").unwrap_err();
        assert!(refused.contains("services.gateway"), "{refused}");
    }

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(
            r#"
            [system]
            name = "shop"
            build = "cargo build"
            [gateway.tokens]
            service = "auth"
            jwks_path = "/jwks"
            revocations_path = "/rev"
            issuer = "auth"
            audience = "api"
            [[route]]
            prefix = "/api/catalog"
            service = "catalog"
            auth = "public"
            [[route]]
            prefix = "/api/admin"
            service = "catalog"
            roles = ["admin"]
            [services.catalog]
            command = ["bin/catalog", "--flag"]
            replicas = 2
            env = { A = "1" }
            produces = ["catalog.events"]
            [services.search]
            command = "bin/search"
            consumes = ["catalog.events"]
            produces = ["catalog.events"]
            "#,
        )
        .unwrap();
        assert_eq!(
            m.producers(),
            BTreeMap::from([(
                "catalog.events".to_string(),
                vec!["catalog".to_string(), "search".to_string()]
            )])
        );
        assert_eq!(m.services["search"].consumes, ["catalog.events"]);
        for (bad, key) in [
            ("produces = [\"a b\"]", "services.x.produces"),
            ("consumes = [\"deadletter.x\"]", "services.x.consumes"),
        ] {
            let e =
                Manifest::parse(&format!("[services.x]\ncommand = \"a\"\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        assert_eq!(m.system.name, "shop");
        assert_eq!(m.routes[1].auth, AuthMode::Required);
        assert_eq!(m.services["catalog"].replicas, 2);
        assert_eq!(
            m.services["catalog"].command.argv(),
            ["bin/catalog", "--flag"]
        );
        assert_eq!(m.gateway.listen.port(), 8080);
        assert_eq!(m.gateway.admin_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(m.gateway.resilience, Resilience::default());
    }

    #[test]
    fn parses_resilience_and_limits() {
        let m = Manifest::parse(
            r#"
            [gateway.resilience]
            max_concurrent = 10
            breaker = { failure_rate = 0.25, minimum_calls = 5 }
            retry = { max_attempts = 3, backoff = { base_ms = 10, max_ms = 100 } }
            [gateway.upstreams.slow]
            max_concurrent = 2
            [[route]]
            prefix = "/api/auth/login"
            service = "auth"
            auth = "public"
            rate_limit = { per_ip = "10/m" }
            fallback = { body = '{"items": []}' }
            "#,
        )
        .unwrap();
        assert_eq!(m.gateway.resilience.max_concurrent, 10);
        assert_eq!(m.gateway.resilience.breaker.failure_rate, 0.25);
        assert_eq!(
            m.gateway.resilience.breaker.window_calls, 20,
            "unset fields keep their defaults"
        );
        assert_eq!(m.gateway.resilience.retry.max_attempts, 3);
        assert_eq!(m.gateway.upstreams["slow"].max_concurrent, 2);
        let limits = m.routes[0].rate_limit.as_ref().unwrap();
        assert_eq!(limits.per_ip.as_ref().unwrap().requests, 10);
        assert_eq!(m.routes[0].fallback.as_ref().unwrap().status, 200);
        let e = Manifest::parse("[[route]]\nprefix = \"/a\"\nservice = \"a\"\nauth = \"public\"\nrate_limit = { per_ip = \"lots\" }\n").unwrap_err();
        assert!(e.to_string().contains("lots"), "{e}");
        let e = Manifest::parse("[gateway.resilience]\nbreaker = { failure_rate = 2.0 }\n")
            .unwrap_err();
        assert!(e.to_string().contains("breaker"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Manifest::parse("[services.x]\ncommand = \"a\"\nreplicas = 0\n").unwrap_err();
        assert!(e.to_string().contains("services.x.replicas"), "{e}");
        let e =
            Manifest::parse("[[route]]\nprefix = \"api\"\nservice = \"x\"\nauth = \"public\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("route[0].prefix"), "{e}");
        let e = Manifest::parse("[gateway]\nlisten = 5\n").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        let e = Manifest::parse("[gateway]\nidle_timeout_ms = 0\n").unwrap_err();
        assert!(e.to_string().contains("gateway.idle_timeout_ms"), "{e}");
        let e = Manifest::parse(
            "[gateway]\nlisten = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("gateway.admin_listen"), "{e}");
        let e = Manifest::parse("[gateway]\nbody_timeout_ms = 0\n").unwrap_err();
        assert!(e.to_string().contains("gateway.body_timeout_ms"), "{e}");
        let e = Manifest::parse("[gateway]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.to_string().contains("trusted_proxies"), "{e}");
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let m =
            Manifest::parse("[gateway]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        assert_eq!(m.gateway.trusted_proxies.len(), 2);
        let e = Manifest::parse("[sytem]\n").unwrap_err();
        assert!(e.to_string().contains("sytem"), "{e}");
    }

    #[test]
    fn static_files_have_a_prefix_of_their_own() {
        let m = Manifest::parse("[[files]]\nprefix = \"/\"\ndir = \"web\"\n").unwrap();
        assert_eq!(m.files[0].index, "index.html");
        assert_eq!(m.files[0].max_age_secs, 300);
        let route = "[[route]]\nprefix = \"/app/\"\nservice = \"x\"\nauth = \"public\"\n";
        let e = Manifest::parse(&format!(
            "{route}[[files]]\nprefix = \"/app\"\ndir = \"web\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("files[0].prefix"), "{e}");
        let e = Manifest::parse("[[files]]\nprefix = \"app\"\ndir = \"web\"\n").unwrap_err();
        assert!(e.to_string().contains("files[0].prefix"), "{e}");
        let e = Manifest::parse("[[files]]\nprefix = \"/a\"\ndir = \"w\"\nindex = \"x/y\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("files[0].index"), "{e}");
    }

    #[test]
    fn a_profile_sets_replicas_of_named_services_only_under_it() {
        let text = "[services.order]\ncommand = \"o\"\n[services.auth]\ncommand = \"a\"\n\
                    [profile.postgres]\nreplicas = { order = 3 }\n";
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.services["order"].replicas, 1);
        let pg = m.clone().with_profile("postgres");
        assert_eq!(pg.services["order"].replicas, 3);
        assert_eq!(pg.services["auth"].replicas, 1);
        assert_eq!(m.with_profile("embedded").services["order"].replicas, 1);
        for (bad, key) in [
            ("[profile.postgress]\n", "profile.postgress"),
            (
                "[profile.postgres]\nreplicas = { ordr = 2 }\n",
                "profile.postgres.replicas.ordr",
            ),
            (
                "[profile.postgres]\nreplicas = { order = 0 }\n",
                "profile.postgres.replicas.order",
            ),
        ] {
            let e =
                Manifest::parse(&format!("[services.order]\ncommand = \"o\"\n{bad}")).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn databases_per_service_from_a_template_and_errors_that_hide_the_password() {
        let m = Manifest::parse(
            "[system]\ndatabase = \"postgres://shop:pw@db/shop_{service}\"\n\
             database_replicas = [\"postgres://shop:pw@replica/shop_{service}\"]\n\
             [services.payment-provider]\ncommand = \"p\"\n\
             [services.audit]\ncommand = \"a\"\ndatabase = \"postgres://audit@elsewhere/audit\"\n",
        )
        .unwrap();
        assert_eq!(
            m.database_of("payment-provider").as_deref(),
            Some("postgres://shop:pw@db/shop_payment_provider")
        );
        assert_eq!(
            m.database_replicas_of("payment-provider"),
            ["postgres://shop:pw@replica/shop_payment_provider"]
        );
        // A service with a database of its own has only the replicas it names.
        assert_eq!(
            m.database_of("audit").as_deref(),
            Some("postgres://audit@elsewhere/audit")
        );
        assert!(m.database_replicas_of("audit").is_empty());
        assert_eq!(Manifest::parse("").unwrap().database_of("x"), None);

        for (text, key) in [
            (
                "[system]\ndatabase = \"mysql://u:s3cret@h/d\"\n",
                "system.database",
            ),
            (
                "[system]\ndatabase = \"postgres://u:s3cret@h\"\n",
                "system.database",
            ),
            ("[system]\ndatabase = \"u:s3cret@h/d\"\n", "system.database"),
            (
                "[services.x]\ncommand = \"a\"\ndatabase = \"postgres://u:s3cret@/d\"\n",
                "services.x.database",
            ),
            (
                "[system]\ndatabase_replicas = [\"sqlite://r.db\"]\n",
                "system.database_replicas",
            ),
        ] {
            let e = Manifest::parse(text).unwrap_err().to_string();
            assert!(e.contains(key) && !e.contains("s3cret"), "{text}: {e}");
        }
        // A parse error quotes the line: not its password.
        let e = Manifest::parse("[system]\ndatabase = [\"postgres://u:s3cret@h/d\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("u:***@h/d") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn tls_and_http2() {
        let m = Manifest::parse(
            r#"
            [gateway.tls]
            listen = "0.0.0.0:8443"
            certificates = [{ chain = "certs/a.pem", key = "certs/a.key" }]
            plain = "refuse"
            [gateway.http2]
            max_concurrent_streams = 10
            "#,
        )
        .unwrap();
        let tls = m.gateway.tls.unwrap();
        assert_eq!(tls.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(tls.plain, Plain::Refuse);
        assert_eq!(tls.certificates[0].key, PathBuf::from("certs/a.key"));
        assert_eq!(tls.reload_ms, 1000);
        assert_eq!(m.gateway.http2.max_concurrent_streams, 10);
        assert!(m.gateway.http2.enabled && !m.gateway.http2.h2c);
        let m = Manifest::parse("[gateway.tls]\nlisten = \"127.0.0.1:8443\"\n").unwrap();
        let tls = m.gateway.tls.unwrap();
        assert!(tls.certificates.is_empty());
        assert_eq!(tls.plain, Plain::Redirect);
        assert!(Manifest::parse("").unwrap().gateway.tls.is_none());

        let e = Manifest::parse("[gateway.tls]\nlisten = \"127.0.0.1:8080\"\n").unwrap_err();
        assert!(e.to_string().contains("gateway.tls.listen"), "{e}");
        let e = Manifest::parse("[gateway.tls]\nlisten = \"127.0.0.1:1\"\nplain = \"maybe\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
        let e = Manifest::parse("[gateway.http2]\nstream_window_bytes = 10\n").unwrap_err();
        assert!(e.to_string().contains("gateway.http2"), "{e}");
    }

    #[test]
    fn mutual_tls_auto_and_what_it_asks_of_names() {
        assert!(
            !Manifest::parse("").unwrap().mtls(),
            "loopback everywhere: off"
        );
        let m = Manifest::parse("[control]\nlisten = \"10.0.0.1:8500\"\n").unwrap();
        assert!(m.mtls(), "a control plane on another address: on");
        let m = Manifest::parse(
            "[services.a]\ncommand = \"a\"\nenv = { TESSERA_LISTEN = \"0.0.0.0:9000\" }\n",
        )
        .unwrap();
        assert!(m.mtls(), "a service listening beyond loopback: on");
        assert!(
            !Manifest::parse("[system]\nmtls = \"off\"\n[control]\nlisten = \"10.0.0.1:8500\"\n")
                .unwrap()
                .mtls()
        );
        assert_eq!(
            Manifest::parse("[system]\nmtls = \"on\"\n")
                .unwrap()
                .control_url(),
            "https://127.0.0.1:8500"
        );

        let on = "[system]\nmtls = \"on\"\n";
        for (extra, key) in [
            (
                "[[route]]\nprefix = \"/x\"\nservice = \"a\"\nauth = \"public\"\ngrpc = true\n",
                "route[0].grpc",
            ),
            (
                "[services.Order]\ncommand = \"a\"\n[services.order]\ncommand = \"b\"\n",
                "services.order",
            ),
            ("[services.a_b]\ncommand = \"a\"\n", "services.a_b"),
            (
                "[services.a]\ncommand = \"a\"\ncalls = [\"b\"]\n",
                "services.a.calls",
            ),
            (
                "[services.auth]\ncommand = \"a\"\n[services.n]\ncommand = \"n\"\nenv = { MAIL_SMTP_HOST = \"smtp\" }\n",
                "services.n: it sends mail",
            ),
        ] {
            let e = Manifest::parse(&format!("{on}{extra}")).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let m = Manifest::parse(&format!(
            "{on}[services.a]\ncommand = \"a\"\ncalls = [\"b\"]\n[services.b]\ncommand = \"b\"\n"
        ))
        .unwrap();
        assert_eq!(
            m.callers_of("b"),
            ["gateway", "supervisor", "admin", "control", "service:a"]
        );
        assert_eq!(
            m.callers_of("a"),
            ["gateway", "supervisor", "admin", "control"]
        );
    }
}
