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
        "notification" => "consumes = [\"order.events\"]",
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
pub(crate) const DATABASE_SERVICES: [&str; 7] = [
    "auth",
    "catalog",
    "order",
    "inventory",
    "payment",
    "payment_provider",
    "notification",
];
