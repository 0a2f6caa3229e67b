//! Rollouts (`docs/rollouts.md`) under a steady load through the gateway: a canary of
//! `catalog` to completion, then a new version that fails 30% of its requests, rolled back by
//! itself at its first step; not one request fails, the old instances of a completed rollout
//! are drained and gone, and the failing version's too.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tessera_testkit::load::Load;
use tessera_testkit::{Options, System};

/// `service`'s registered instances: (id, version).
async fn instances(sys: &System, service: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = sys
        .registry()
        .await
        .services
        .get(service)
        .map(|list| {
            list.iter()
                .map(|i| (i.id.clone(), i.version.clone()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits until the rollout of `service` has ended: what it came to.
async fn ended(sys: &System, service: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = sys.control_json(&format!("/v1/rollouts/{service}")).await;
        if !now["ended_ms"].is_null() {
            return now;
        }
        assert!(Instant::now() < deadline, "the rollout did not end: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_canary_completes_and_a_failing_version_rolls_back_without_a_failed_request() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    let before = instances(&sys, "catalog").await;
    assert_eq!(before.len(), 2);
    let old = before[0].1.clone();
    let load = Load::start(&sys, 15).await;
    let started = Instant::now();
    let answered_before = load.answered();

    // A canary, 10% → 50% → 100%, through the command, which follows it to its end.
    let (ok, out, err) = sys
        .cli_async(&[
            "rollout",
            "catalog",
            "--env",
            "CATALOG_NOTE=canary",
            "--version",
            "v2",
            "--canary",
            "10,50,100",
            "--step",
            "1500ms",
            "--max-p99-ratio",
            "4",
        ])
        .await;
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches(": passed").count(), 3, "{out}");
    assert!(
        out.contains(&format!("catalog: {old} → v2 completed")),
        "{out}"
    );
    let rollout = sys.control_json("/v1/rollouts/catalog").await;
    // Each step sent the new version traffic, more at each.
    let served: Vec<f64> = rollout["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["new"]["requests"].as_f64().unwrap())
        .collect();
    assert!(served[0] > 0.0 && served[0] < served[2], "{rollout}");
    // The old instances were drained and stopped: only the new version is left, as many.
    sys.wait_until(Duration::from_secs(10), "the old version gone", || async {
        instances(&sys, "catalog")
            .await
            .iter()
            .all(|(_, v)| v == "v2")
    })
    .await;
    let after = instances(&sys, "catalog").await;
    assert_eq!(after.len(), 2, "{after:?}");
    let (ok, status, _) = sys.cli_async(&["status"]).await;
    assert!(ok && status.contains(" v2 "), "{status}");

    // A version failing 30% of its requests: rolled back at its first step, by itself.
    let resp = sys
        .control(Method::POST, "/v1/rollouts/catalog")
        .json(&json!({
            "env": { "TESSERA_FAULT_RATE": "0.3" },
            "steps": [10, 50, 100],
            "step_ms": 1500,
            "max_p99_ratio": 4.0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    // One at a time.
    let again = sys
        .control(Method::POST, "/v1/rollouts/catalog")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let failed = ended(&sys, "catalog").await;
    assert_eq!(failed["state"], "rolled_back", "{failed}");
    assert_eq!(failed["reports"].as_array().unwrap().len(), 1, "{failed}");
    assert!(
        failed["reason"].as_str().unwrap().contains("error rate"),
        "{failed}"
    );
    sys.wait_until(
        Duration::from_secs(10),
        "the failing version gone",
        || async { instances(&sys, "catalog").await == after },
    )
    .await;

    // Only the admin rolls out; bad plans are refused with a reason.
    let as_service = sys
        .http
        .post(format!("{}/v1/rollouts/catalog", sys.control))
        .header(
            "authorization",
            sys.credential("service:order").authorization(),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_service.status(), 403);
    for bad in [
        json!({ "steps": [50, 10] }),
        json!({ "env": { "TESSERA_SERVICE": "auth" } }),
        json!({ "nonsense": 1 }),
    ] {
        let resp = sys
            .control(Method::POST, "/v1/rollouts/catalog")
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let none = sys
        .control(Method::POST, "/v1/rollouts/nobody")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);

    // On the distributed profile the rollouts are kept on the registry's etcd.
    if let Some(keys) = sys.kept_on_etcd("rollouts").await {
        assert_eq!(keys.len(), 1, "{keys:?}");
    }

    let elapsed = started.elapsed();
    let (answered, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    eprintln!(
        "{} requests at {:.0}/s across two rollouts, none failed",
        answered - answered_before,
        (answered - answered_before) as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn a_blue_green_switch_of_order_while_checkouts_run_loses_no_checkout() {
    const MOUSE: &str = "0190f000-0000-7000-8000-000000000005"; // 29.00 USD
    let sys = System::start_with(Options {
        checkout: true,
        ..Options::default()
    })
    .await;
    let sys = std::sync::Arc::new(sys);
    let old = instances(&sys, "order").await;
    // Checkouts, one after another from each of three users (about ten a second in all, so
    // that the 100 mice in stock last), until stopped: every order placed (202), and its id,
    // to see each one settle.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut buyers = Vec::new();
    for _ in 0..3 {
        let (token, _) = sys.new_user().await;
        let (sys, stop) = (sys.clone(), stop.clone());
        buyers.push(tokio::spawn(async move {
            let (mut placed, mut failed) = (Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = sys
                    .post(
                        "/api/orders",
                        Some(&token),
                        json!({ "items": [{ "productId": MOUSE, "quantity": 1 }] }),
                    )
                    .await;
                match (status, body["data"]["orderId"].as_str()) {
                    (202, Some(id)) => placed.push(id.to_string()),
                    _ => failed.push(format!("{status} {body}")),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (token, placed, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out, err) = sys
        .cli_async(&[
            "rollout",
            "order",
            "--blue-green",
            "--version",
            "green",
            "--step",
            "1500ms",
            "--max-p99-ratio",
            "4",
        ])
        .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("completed"), "{out}");
    sys.wait_until(
        Duration::from_secs(10),
        "the blue instances gone",
        || async {
            let now = instances(&sys, "order").await;
            !now.is_empty() && now.iter().all(|(_, v)| v == "green")
        },
    )
    .await;
    // Checkouts go on against the green version alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Every checkout reaches its end: confirmed, or rejected once the mice ran out (100 in
    // stock), never stuck or failed half-way.
    let (mut total, mut confirmed) = (0, 0);
    for buyer in buyers {
        let (token, placed, failed) = buyer.await.unwrap();
        assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());
        for id in &placed {
            let order = sys.settled_order(&token, id).await;
            match order["status"].as_str() {
                Some("CONFIRMED") => confirmed += 1,
                _ => assert_eq!(order["reason"], "out_of_stock", "{order}"),
            }
        }
        total += placed.len();
    }
    assert!(
        confirmed >= 20,
        "only {confirmed} of {total} checkouts confirmed"
    );
    assert!(old.iter().all(|(_, v)| v != "green"));
    eprintln!(
        "{total} checkouts across a blue-green switch of order, every one settled ({confirmed} confirmed)"
    );
}
