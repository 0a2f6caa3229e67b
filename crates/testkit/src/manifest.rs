//! The parts of a test system's manifest that depend on its options: the checkout services'
//! sections, the `[gateway]` keys set only when not the default, and the services that get a
//! database of their own in the PostgreSQL profile.

use std::path::Path;

use crate::Options;

/// The checkout services' sections. `replicas`: of each stateful one (order, inventory,
/// payment, notification); the PostgreSQL profile runs two of each on one database.
pub(crate) fn checkout_services(
    bin: &Path,
    env: &[(&'static str, &'static str, String)],
    replicas: u32,
) -> String {
    let mut out = String::new();
    for service in [
        "order",
        "inventory",
        "payment",
        "payment-provider",
        "notification",
    ] {
        let vars: Vec<String> = env
            .iter()
            .filter(|(s, _, _)| *s == service)
            .map(|(_, k, v)| format!("{k} = {v:?}"))
            .collect();
        let replicas = if service == "payment-provider" {
            1 // an external processor's simulator, not one of the system's own
        } else {
            replicas
        };
        out.push_str(&format!(
            "[services.{service}]\ncommand = [\"{}/shop-{service}\"]\nreplicas = {replicas}\nenv = {{ {} }}\n{}\n\n",
            bin.display(),
            vars.join(", "),
            topics(service),
        ));
    }
    out
}

/// What each checkout service produces, consumes and calls, as the shop's manifest declares it.
fn topics(service: &str) -> &'static str {
    match service {
        "order" => {
            "produces = [\"order.events\", \"inventory.commands\", \"payment.commands\"]\nconsumes = [\"saga.checkout.replies\"]\ncalls = [\"catalog\"]"
        }
        "inventory" => {
            "produces = [\"saga.checkout.replies\"]\nconsumes = [\"inventory.commands\"]"
        }
        "payment" => {
            "produces = [\"saga.checkout.replies\"]\nconsumes = [\"payment.commands\"]\ncalls = [\"payment-provider\"]"
        }
        "notification" => "consumes = [\"order.events\"]\ncalls = [\"auth\"]",
        _ => "",
    }
}

/// The `[gateway]` keys the options set only when they are not the default.
pub(crate) fn gateway_extra(opts: &Options, tls_port: u16) -> String {
    let mut out = String::new();
    if let Some(ms) = opts.body_timeout_ms {
        out.push_str(&format!("body_timeout_ms = {ms}\n"));
    }
    if !opts.trusted_proxies.is_empty() {
        out.push_str(&format!("trusted_proxies = {:?}\n", opts.trusted_proxies));
    }
    out.push_str(&opts.gateway);
    out.push('\n');
    if let Some(tls) = &opts.tls {
        out.push_str(&format!(
            "[gateway.tls]\nlisten = \"127.0.0.1:{tls_port}\"\nreload_ms = 100\n{tls}\n"
        ));
    }
    if !opts.http2.is_empty() {
        out.push_str(&format!("[gateway.http2]\n{}\n", opts.http2));
    }
    out
}

/// The services of the shop that keep data: in the PostgreSQL profile, each gets a database.
const DATABASE_SERVICES: [&str; 7] = [
    "auth",
    "catalog",
    "order",
    "inventory",
    "payment",
    "payment_provider",
    "notification",
];

/// The services of the invest example that keep a database (with auth's).
const INVEST_DATABASES: [&str; 4] = ["auth", "market", "portfolio", "alerts"];

/// The services that get a database of their own in the PostgreSQL profile.
pub(crate) fn database_services(invest: bool) -> &'static [&'static str] {
    if invest {
        &INVEST_DATABASES
    } else {
        &DATABASE_SERVICES
    }
}

/// The shop's routes and services beyond auth: the catalog, and the checkout's if asked.
pub(crate) fn shop(bin: &Path, opts: &Options, on_postgres: bool) -> String {
    let mut out = format!(
        r#"
[[route]]
prefix = "/api/catalog"
service = "catalog"
auth = "public"

[[route]]
prefix = "/api/orders"
service = "order"
auth = "required"

[[route]]
prefix = "/api/payments"
service = "payment"
auth = "required"

[[route]]
prefix = "/api/notifications"
service = "notification"
auth = "required"
websocket = true

[[route]]
prefix = "/api/inventory"
service = "inventory"
auth = "required"
roles = ["admin"]

[services.catalog]
command = ["{bin}/shop-catalog"]
replicas = {replicas}
produces = ["catalog.events"]
consumes = ["catalog.events"]
"#,
        bin = bin.display(),
        replicas = opts.catalog_replicas,
    );
    if opts.checkout {
        out.push_str(&checkout_services(
            bin,
            &opts.checkout_env,
            if on_postgres { 2 } else { 1 },
        ));
    }
    out
}

/// Tessera Invest's routes and services beyond auth, as `examples/invest/tessera.toml` has
/// them; `env`: extra settings per service. The market starts paused and makes up no news:
/// a test sets the pace (`MARKET_TICK_MS`, `MARKET_NEWS_MS`) or publishes news itself.
pub(crate) fn invest(bin: &Path, env: &[(&'static str, &'static str, String)]) -> String {
    // The Python service runs from the repository's sources.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.canonicalize().unwrap_or(repo);
    let vars = |service: &str, defaults: &[(&str, &str)]| {
        let mut vars: Vec<String> = defaults
            .iter()
            .filter(|(k, _)| !env.iter().any(|(s, key, _)| *s == service && key == k))
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        vars.extend(
            env.iter()
                .filter(|(s, _, _)| *s == service)
                .map(|(_, k, v)| format!("{k} = {v:?}")),
        );
        vars.join(", ")
    };
    format!(
        r#"
[[route]]
prefix = "/api/market"
service = "market"
auth = "public"

[[route]]
prefix = "/api/portfolio"
service = "portfolio"
auth = "required"

[[route]]
prefix = "/api/alerts"
service = "alerts"
auth = "required"
websocket = true         # GET /api/alerts/live: new alerts as they are made

[[route]]
prefix = "/api/signals"
service = "signals"
auth = "public"


[[files]]
prefix = "/"
dir = "{repo}/examples/invest/web"

[services.market]
command = ["{bin}/invest-market"]
produces = ["market.ticks", "market.news"]
env = {{ {market} }}

[services.portfolio]
command = ["{bin}/invest-portfolio"]
produces = ["portfolio.events"]
calls = ["market"]
env = {{ {portfolio} }}

[services.alerts]
command = ["{bin}/invest-alerts"]
consumes = ["portfolio.events", "market.news", "signals.changed"]
calls = ["auth"]
env = {{ {alerts} }}

[services.signals]
command = ["python3", "{repo}/examples/invest/signals/service.py"]
consumes = ["market.ticks", "market.news"]
produces = ["signals.changed"]
env = {{ {signals} }}
"#,
        bin = bin.display(),
        market = vars(
            "market",
            &[("MARKET_TICK_MS", "0"), ("MARKET_NEWS_MS", "0")]
        ),
        portfolio = vars("portfolio", &[]),
        alerts = vars("alerts", &[]),
        signals = vars(
            "signals",
            &[("PYTHONPATH", &format!("{}/sdk/python", repo.display()))]
        ),
        repo = repo.display(),
    )
}
