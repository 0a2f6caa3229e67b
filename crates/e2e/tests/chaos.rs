//! The chaos test: a thousand checkouts at a steady rate while processes of the system (the
//! gateway and the control plane among them) are killed with SIGKILL and restarted by the
//! runner, and go on being killed until every order has settled. Nothing may be lost or done
//! twice, and the outcome is exactly what the inputs decide: each order's fate follows from
//! its product and quantity alone (stock that cannot run out, one product with none, a card
//! processor that declines charges over 100.00), whatever was killed when.
//!
//! The payment provider is not among the victims: it stands for a card processor outside the
//! system, whose outage the shop answers by failing payments fast (`docs/resilience.md`), an
//! outcome that depends on timing by design.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tessera_testkit::{Options, System, signal};

/// (product, unit price, stock). The provider declines charges over 100.00: every tent is
/// declined, three lamps are too; bottles are out of stock; the rest confirm (stock enough for
/// every order).
const PRODUCTS: [(&str, i64, i64); 4] = [
    ("0190f000-0000-7000-8000-000000000005", 2900, 1000), // wireless mouse
    ("0190f000-0000-7000-8000-000000000017", 4900, 1000), // desk lamp
    ("0190f000-0000-7000-8000-000000000021", 34900, 1000), // ultralight tent
    ("0190f000-0000-7000-8000-000000000022", 2900, 0),    // insulated bottle
];
const ORDERS: usize = 1000;
const RATE_PER_SEC: u64 = 25;
/// Users the orders are spread over (each one's notifications fit one page).
const USERS: usize = 25;
const DECLINE_OVER: i64 = 10_000;

/// What an order of `quantity` of product `index` must come to: its status, and the reason
/// it is rejected.
fn expected(index: usize, quantity: i64) -> (&'static str, Option<&'static str>) {
    let (_, price, stock) = PRODUCTS[index];
    if stock == 0 {
        ("REJECTED", Some("out_of_stock"))
    } else if price * quantity > DECLINE_OVER {
        ("REJECTED", Some("payment_declined"))
    } else {
        ("CONFIRMED", None)
    }
}

/// GET through the gateway, retried across the chaos until it answers 200.
async fn get_ok(sys: &System, path: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(resp) = sys
            .http
            .get(sys.url(path))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            && resp.status().as_u16() == 200
            && let Ok(v) = resp.json::<Value>().await
        {
            return v["data"].clone();
        }
        assert!(Instant::now() < deadline, "{path} never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every process of the tree that may be killed: services (by their registered pid, but for
/// the payment provider, which stands for a system outside), the control plane and the
/// gateway.
async fn victims(sys: &System) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    if let Ok(resp) = sys
        .control(reqwest::Method::GET, "/v1/services")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        && let Ok(catalog) = resp.json::<tessera::registry::Catalog>().await
    {
        for i in catalog.services.values().flatten() {
            if i.service == "payment-provider" {
                continue;
            }
            if let Some(pid) = i.metadata.get("pid").and_then(|p| p.parse().ok()) {
                out.push((i.id.clone(), pid));
            }
        }
    }
    for pid in sys.tree_pids() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        for platform in ["control", "gateway"] {
            if cmdline.split(|b| *b == 0).any(|a| a == platform.as_bytes()) {
                out.push((platform.into(), pid));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_survive_random_kill_9() {
    let sys = System::start_with(Options {
        checkout: true,
        checkout_env: vec![(
            "payment-provider",
            "PROVIDER_DECLINE_OVER",
            DECLINE_OVER.to_string(),
        )],
        upstream_timeout_ms: 5000,
        ..Options::default()
    })
    .await;
    let admin = sys.admin().await;
    for (product, _, stock) in PRODUCTS {
        let (status, body) = sys
            .call(
                reqwest::Method::PUT,
                &format!("/api/inventory/{product}"),
                Some(&admin),
                Some(json!({"available": stock})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(sys.new_user().await.0);
    }

    // Chaos: a random process every two seconds, until every order has settled.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let mut kills: Vec<String> = Vec::new();
    let chaos = async {
        // Random order, in rounds, so that every kind of process dies at least once.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut round: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => return,
            }
            let all = victims(&sys).await;
            if round.is_empty() {
                round = all.iter().map(|(name, _)| name.clone()).collect();
                round.shuffle(&mut rng);
            }
            let Some(name) = round.pop() else { continue };
            if let Some((_, pid)) = all.iter().find(|(n, _)| *n == name) {
                signal(*pid, libc::SIGKILL);
                kills.push(name);
            }
        }
    };

    // Checkouts at a steady rate, each retried with its Idempotency-Key until accepted.
    let send = async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut sent = tokio::task::JoinSet::new();
        let start = Instant::now();
        for n in 0..ORDERS {
            let due = start + Duration::from_millis(n as u64 * 1000 / RATE_PER_SEC);
            tokio::time::sleep_until(due.into()).await;
            let index = rng.gen_range(0..PRODUCTS.len());
            let product = PRODUCTS[index].0;
            let quantity: i64 = rng.gen_range(1..=3);
            let user = n % users.len();
            let (http, url, token) = (
                sys.http.clone(),
                sys.url("/api/orders"),
                users[user].clone(),
            );
            let key = format!("chaos-{n}");
            sent.spawn(async move {
                let body = json!({"items": [{"productId": product, "quantity": quantity}]});
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    let resp = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("idempotency-key", &key)
                        .json(&body)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    if let Ok(r) = resp {
                        let status = r.status().as_u16();
                        if status == 202 {
                            let v: Value = r.json().await.unwrap();
                            return (
                                user,
                                v["data"]["orderId"].as_str().unwrap().to_string(),
                                index,
                                quantity,
                            );
                        }
                        assert!(
                            status >= 500,
                            "order {key}: {status} {}",
                            r.text().await.unwrap_or_default()
                        );
                    }
                    assert!(Instant::now() < deadline, "order {key} was never accepted");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        let mut orders = Vec::new();
        while let Some(r) = sent.join_next().await {
            orders.push(r.unwrap());
        }
        let distinct: std::collections::HashSet<_> = orders.iter().map(|o| o.1.clone()).collect();
        assert_eq!(distinct.len(), ORDERS, "one order per idempotency key");

        // Every order settles, the chaos going on meanwhile.
        let settle_deadline = Instant::now() + Duration::from_secs(180);
        let mut outcome: HashMap<String, (String, Option<String>)> = HashMap::new();
        loop {
            for (user, id, _, _) in &orders {
                if outcome.contains_key(id) {
                    continue;
                }
                let o = get_ok(&sys, &format!("/api/orders/{id}"), &users[*user]).await;
                let status = o["status"].as_str().unwrap().to_string();
                if status != "PENDING" {
                    let reason = o["reason"].as_str().map(str::to_string);
                    outcome.insert(id.clone(), (status, reason));
                }
            }
            if outcome.len() == orders.len() {
                break;
            }
            assert!(
                Instant::now() < settle_deadline,
                "{} orders still PENDING\n{}",
                orders.len() - outcome.len(),
                sys.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = stop_tx.send(true);
        (orders, outcome)
    };
    let ((orders, outcome), ()) = tokio::join!(send, chaos);
    println!("chaos: {} kills: {kills:?}", kills.len());
    assert!(kills.len() >= 10, "the chaos ran");
    for kind in [
        "control",
        "gateway",
        "order-1",
        "inventory-1",
        "payment-1",
        "notification-1",
    ] {
        assert!(
            kills.iter().any(|k| k == kind),
            "{kind} was killed at least once: {kills:?}"
        );
    }
    // Exactly the outcome the inputs decide, order by order; and so per product.
    let mut counts: std::collections::BTreeMap<(usize, &str, Option<&str>), usize> =
        Default::default();
    for (_, id, index, quantity) in &orders {
        let (want, why) = expected(*index, *quantity);
        let (got, reason) = &outcome[id];
        assert_eq!(
            (got.as_str(), reason.as_deref()),
            (want, why),
            "order {id}: {quantity} of product {index}"
        );
        *counts.entry((*index, want, why)).or_default() += 1;
    }
    println!("outcome per (product, status, reason): {counts:?}");
    let confirmed: Vec<&(usize, String, usize, i64)> = orders
        .iter()
        .filter(|o| outcome[&o.1].0 == "CONFIRMED")
        .collect();
    let rejected = orders.len() - confirmed.len();

    // Stock: what is left plus what was sold is what there was.
    let mut sold: HashMap<&str, i64> = HashMap::new();
    for o in &confirmed {
        *sold.entry(PRODUCTS[o.2].0).or_default() += o.3;
    }
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let mut balanced = true;
        let mut report = Vec::new();
        for (product, _, stock) in PRODUCTS {
            let s = get_ok(&sys, &format!("/api/inventory/{product}"), &admin).await;
            let (available, reserved) = (
                s["available"].as_i64().unwrap(),
                s["reserved"].as_i64().unwrap(),
            );
            let sold = sold.get(product).copied().unwrap_or(0);
            report.push(format!(
                "{product}: available {available} + sold {sold} (reserved {reserved})"
            ));
            balanced &= available + sold == stock && reserved == 0;
        }
        if balanced {
            println!("stock balanced:\n  {}", report.join("\n  "));
            break;
        }
        assert!(
            Instant::now() < settle,
            "stock does not balance:\n  {}",
            report.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Charges: exactly one capture per confirmed order, none for rejected ones.
    let provider_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The control plane may have been the chaos's last victim: asked again until then.
        let provider = sys.try_registry().await.and_then(|catalog| {
            catalog
                .services
                .get("payment-provider")
                .and_then(|v| v.first().cloned())
        });
        let charges: Option<Vec<Value>> = match provider {
            Some(p) => match sys
                .http
                .get(format!("http://{}/v1/charges", p.address))
                .header("x-passport", sys.system_passport())
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        if let Some(charges) = charges {
            let captured: HashMap<&str, usize> = charges
                .iter()
                .filter(|c| c["status"] == "captured")
                .fold(HashMap::new(), |mut m, c| {
                    *m.entry(c["reference"].as_str().unwrap()).or_default() += 1;
                    m
                });
            let good_confirmed = confirmed
                .iter()
                .all(|o| captured.get(o.1.as_str()) == Some(&1));
            let rejected_charged: Vec<&String> = orders
                .iter()
                .filter(|o| outcome[&o.1].0 == "REJECTED" && captured.contains_key(o.1.as_str()))
                .map(|o| &o.1)
                .collect();
            if good_confirmed && rejected_charged.is_empty() {
                println!(
                    "charges: {} captured for {} confirmed orders, 0 for {rejected} rejected",
                    captured.len(),
                    confirmed.len()
                );
                assert_eq!(captured.len(), confirmed.len());
                break;
            }
            assert!(
                Instant::now() < provider_deadline,
                "charges wrong: confirmed without one capture: {}, rejected but captured: {rejected_charged:?}",
                confirmed
                    .iter()
                    .filter(|o| captured.get(o.1.as_str()) != Some(&1))
                    .count()
            );
        } else {
            assert!(
                Instant::now() < provider_deadline,
                "the payment provider's charges could not be read (nor, perhaps, the registry)"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Notifications: exactly one per order, matching its outcome.
    let notify_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut by_order: HashMap<String, Vec<String>> = HashMap::new();
        for token in &users {
            let list = get_ok(&sys, "/api/notifications", token).await;
            for n in list.as_array().unwrap() {
                by_order
                    .entry(n["orderId"].as_str().unwrap().to_string())
                    .or_default()
                    .push(n["kind"].as_str().unwrap().to_string());
            }
        }
        let exact = orders.iter().all(|o| {
            let want = if outcome[&o.1].0 == "CONFIRMED" {
                "order_confirmed"
            } else {
                "order_rejected"
            };
            by_order
                .get(&o.1)
                .is_some_and(|k| k.len() == 1 && k[0] == want)
        });
        if exact && by_order.len() == orders.len() {
            println!(
                "notifications: {} for {} orders",
                by_order.values().map(Vec::len).sum::<usize>(),
                orders.len()
            );
            break;
        }
        assert!(
            Instant::now() < notify_deadline,
            "notifications are not one per order ({} orders notified)",
            by_order.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "orders: {} sent, {} CONFIRMED, {rejected} REJECTED, {} kills",
        orders.len(),
        confirmed.len(),
        kills.len()
    );
}
