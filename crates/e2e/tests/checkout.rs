//! Checkout across services, end to end: real processes, HTTP only.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_testkit::{Options, System};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005"; // 29.00 USD, 100 in stock
const LAMP: &str = "0190f000-0000-7000-8000-000000000017"; // 49.00 USD

fn checkout(env: Vec<(&'static str, &'static str, String)>) -> Options {
    Options {
        checkout: true,
        checkout_env: env,
        ..Options::default()
    }
}

async fn place(sys: &System, token: &str, items: Value, key: Option<&str>) -> (u16, Value) {
    let mut req = sys
        .http
        .post(sys.url("/api/orders"))
        .bearer_auth(token)
        .json(&json!({ "items": items }));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Places an order and waits for it to settle: (order id, detail).
async fn checkout_settled(sys: &System, token: &str, items: Value) -> (String, Value) {
    let (status, body) = place(sys, token, items, None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["orderId"].as_str().unwrap().to_string();
    let order = settled(sys, token, &id).await;
    (id, order)
}

/// Waits until the order is CONFIRMED or REJECTED; returns its detail.
async fn settled(sys: &System, token: &str, order_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = sys
            .get(&format!("/api/orders/{order_id}"), Some(token))
            .await;
        assert_eq!(status, 200, "{body}");
        let s = body["data"]["status"].as_str().unwrap().to_string();
        if s != "PENDING" {
            return body["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} still PENDING\n{}",
            sys.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stock(sys: &System, admin: &str, product: &str) -> (i64, i64) {
    let (status, body) = sys
        .get(&format!("/api/inventory/{product}"), Some(admin))
        .await;
    assert_eq!(status, 200, "{body}");
    (
        body["data"]["available"].as_i64().unwrap(),
        body["data"]["reserved"].as_i64().unwrap(),
    )
}

async fn set_stock(sys: &System, admin: &str, product: &str, available: i64) {
    let (status, body) = sys
        .call(
            reqwest::Method::PUT,
            &format!("/api/inventory/{product}"),
            Some(admin),
            Some(json!({"available": available})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn notifications(sys: &System, token: &str) -> Vec<Value> {
    let (status, body) = sys.get("/api/notifications", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// The provider's charges (it is a service of the system: called with a passport of our own).
async fn charges(sys: &System) -> Vec<Value> {
    let provider = sys.registry().await.services["payment-provider"][0]
        .address
        .clone();
    sys.http
        .get(format!("http://{provider}/v1/charges"))
        .header("x-passport", sys.system_passport())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn provider_behavior(sys: &System, behavior: Value) {
    let provider = sys.registry().await.services["payment-provider"][0]
        .address
        .clone();
    let resp = sys
        .http
        .put(format!("http://{provider}/v1/behavior"))
        .header("x-passport", sys.system_passport())
        .json(&behavior)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// Eventually `check` holds (for effects that land after the order settles).
async fn eventually<F: AsyncFnMut() -> bool>(sys: &System, what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "never: {what}\n{}",
            sys.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn happy_path_confirms_with_stock_payment_and_one_notification() {
    let sys = System::start_with(checkout(vec![])).await;
    let admin = sys.admin().await;
    let (user, _) = sys.new_user().await;
    let before = stock(&sys, &admin, MOUSE).await;

    let (status, body) = place(
        &sys,
        &user,
        json!([{"productId": MOUSE, "quantity": 2}, {"productId": LAMP, "quantity": 1}]),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["status"], "PENDING");
    let order_id = body["data"]["orderId"].as_str().unwrap().to_string();

    let order = settled(&sys, &user, &order_id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["total"], 2 * 2900 + 4900, "priced by the catalog");
    assert_eq!(order["items"][0]["unitPrice"], 2900);

    eventually(&sys, "the reservation to be committed", async || {
        stock(&sys, &admin, MOUSE).await == (before.0 - 2, 0)
    })
    .await;
    let (_, payments) = sys
        .get(&format!("/api/payments?orderId={order_id}"), Some(&user))
        .await;
    assert_eq!(payments["data"][0]["status"], "authorized", "{payments}");
    let (_, mine) = sys.get("/api/payments", Some(&user)).await;
    assert_eq!(mine["data"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine["data"][0]["orderId"], order_id.as_str());
    let (_, all) = sys.get("/api/payments", Some(&admin)).await;
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["orderId"] == order_id.as_str()),
        "{all}"
    );
    let captured: Vec<Value> = charges(&sys)
        .await
        .into_iter()
        .filter(|c| c["reference"] == order_id.as_str())
        .collect();
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0]["status"], "captured");
    assert_eq!(captured[0]["amount"], 2 * 2900 + 4900);

    eventually(&sys, "one notification", async || {
        !notifications(&sys, &user).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notes = notifications(&sys, &user).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["kind"], "order_confirmed");
    assert_eq!(notes[0]["orderId"], order_id.as_str());

    let (_, history) = sys
        .get(&format!("/api/orders/{order_id}/history"), Some(&user))
        .await;
    let types: Vec<&str> = history["data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "StockReserved",
            "PaymentAuthorized",
            "OrderConfirmed"
        ]
    );

    let (_, mine) = sys.get("/api/orders", Some(&user)).await;
    assert_eq!(mine["data"]["items"][0]["orderId"], order_id.as_str());
    assert_eq!(mine["data"]["items"][0]["status"], "CONFIRMED");

    // One checkout is one trace: the order service's saga and the inventory and payment
    // services' handlers all log under the trace id of the POST.
    let trace = body["traceId"].as_str().unwrap();
    for service in ["order", "inventory", "payment"] {
        let tag = format!("\"service\":\"{service}\"");
        sys.log_line(
            &format!("{service} logging the checkout's trace {trace}"),
            |l| l.contains(&tag) && l.contains(trace),
        )
        .await;
    }
}

#[tokio::test]
async fn out_of_stock_and_declined_payments_are_rejected_and_leave_stock_as_it_was() {
    let sys = System::start_with(checkout(vec![(
        "payment-provider",
        "PROVIDER_DECLINE_OVER",
        "10000".into(),
    )]))
    .await;
    let admin = sys.admin().await;
    let (user, _) = sys.new_user().await;

    set_stock(&sys, &admin, LAMP, 1).await;
    let (short, order) =
        checkout_settled(&sys, &user, json!([{"productId": LAMP, "quantity": 2}])).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("REJECTED"), Some("out_of_stock"))
    );
    assert_eq!(stock(&sys, &admin, LAMP).await, (1, 0), "stock unchanged");

    // 4 × 29.00 is over the provider's 100.00 limit: declined, and the stock comes back.
    let before = stock(&sys, &admin, MOUSE).await;
    let (declined, order) =
        checkout_settled(&sys, &user, json!([{"productId": MOUSE, "quantity": 4}])).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("REJECTED"), Some("payment_declined"))
    );
    eventually(&sys, "the reservation to be released", async || {
        stock(&sys, &admin, MOUSE).await == before
    })
    .await;
    assert!(
        charges(&sys)
            .await
            .iter()
            .all(|c| c["reference"] != declined.as_str() || c["status"] != "captured")
    );

    eventually(&sys, "two notifications", async || {
        notifications(&sys, &user).await.len() == 2
    })
    .await;
    let notes = notifications(&sys, &user).await;
    assert!(
        notes.iter().all(|n| n["kind"] == "order_rejected"),
        "{notes:?}"
    );
    let (_, payments) = sys
        .get(&format!("/api/payments?orderId={short}"), Some(&user))
        .await;
    assert_eq!(
        payments["data"],
        json!([]),
        "no payment was asked for an order out of stock"
    );
}

#[tokio::test]
async fn a_hanging_provider_times_the_saga_out_and_nothing_is_charged() {
    let sys = System::start_with(checkout(vec![
        ("order", "ORDER_PAYMENT_TIMEOUT_MS", "1500".into()),
        ("payment", "PAYMENT_PROVIDER_TIMEOUT_MS", "4000".into()),
    ]))
    .await;
    let admin = sys.admin().await;
    let (user, _) = sys.new_user().await;
    let before = stock(&sys, &admin, MOUSE).await;
    provider_behavior(
        &sys,
        json!({"latencyMs": 0, "failureRate": 0.0, "hang": true, "declineOver": 1_000_000}),
    )
    .await;

    let started = Instant::now();
    let (order_id, order) =
        checkout_settled(&sys, &user, json!([{"productId": MOUSE, "quantity": 1}])).await;
    assert_eq!(order["status"], "REJECTED");
    assert_eq!(order["reason"], "timeout: authorize-payment");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "settled by the saga's timeout: {:?}",
        started.elapsed()
    );
    eventually(&sys, "the stock to come back", async || {
        stock(&sys, &admin, MOUSE).await == before
    })
    .await;

    // The provider recovers; the abandoned payment is voided, never captured.
    provider_behavior(
        &sys,
        json!({"latencyMs": 0, "failureRate": 0.0, "hang": false, "declineOver": 1_000_000}),
    )
    .await;
    eventually(&sys, "the payment to be voided", async || {
        let (_, p) = sys
            .get(&format!("/api/payments?orderId={order_id}"), Some(&user))
            .await;
        p["data"][0]["status"] == "voided" || p["data"][0]["status"] == "cancelled"
    })
    .await;
    assert!(
        charges(&sys)
            .await
            .iter()
            .all(|c| c["reference"] != order_id.as_str() || c["status"] != "captured")
    );

    // And checkouts work again.
    let (_, body) = place(
        &sys,
        &user,
        json!([{"productId": MOUSE, "quantity": 1}]),
        None,
    )
    .await;
    let order = settled(&sys, &user, body["data"]["orderId"].as_str().unwrap()).await;
    assert_eq!(order["status"], "CONFIRMED");
}

#[tokio::test]
async fn a_failing_provider_fails_the_payment_and_voids_it() {
    let sys = System::start_with(checkout(vec![(
        "payment",
        "PAYMENT_MAX_ATTEMPTS",
        "2".into(),
    )]))
    .await;
    let (user, _) = sys.new_user().await;
    provider_behavior(
        &sys,
        json!({"latencyMs": 0, "failureRate": 1.0, "hang": false, "declineOver": 1_000_000}),
    )
    .await;
    let (order_id, order) =
        checkout_settled(&sys, &user, json!([{"productId": MOUSE, "quantity": 1}])).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("REJECTED"), Some("payment_failed"))
    );
    eventually(&sys, "the failed payment voided", async || {
        let (_, p) = sys
            .get(&format!("/api/payments?orderId={order_id}"), Some(&user))
            .await;
        p["data"][0]["status"] == "voided"
    })
    .await;
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_order() {
    let sys = System::start_with(checkout(vec![])).await;
    let (user, _) = sys.new_user().await;
    let (other, _) = sys.new_user().await;
    let items = json!([{"productId": MOUSE, "quantity": 1}]);
    let (s1, a) = place(&sys, &user, items.clone(), Some("buy-mouse-1")).await;
    let (s2, b) = place(&sys, &user, items.clone(), Some("buy-mouse-1")).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a["data"]["orderId"], b["data"]["orderId"]);
    // Concurrent twins as well (eight at once: some are stored in one transaction).
    let twins = futures_join(&sys, &user, &items, "buy-mouse-2").await;
    assert_eq!(twins.len(), 8);
    assert!(
        twins.iter().all(|t| *t == twins[0]),
        "concurrent requests with one key make one order: {twins:?}"
    );
    // Keys are per user.
    let (_, c) = place(&sys, &other, items.clone(), Some("buy-mouse-1")).await;
    assert_ne!(c["data"]["orderId"], a["data"]["orderId"]);
    let (_, mine) = sys.get("/api/orders?limit=100", Some(&user)).await;
    assert_eq!(mine["data"]["items"].as_array().unwrap().len(), 2);
}

async fn futures_join(sys: &System, token: &str, items: &Value, key: &str) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url, token, items, key) = (
            sys.http.clone(),
            sys.url("/api/orders"),
            token.to_string(),
            items.clone(),
            key.to_string(),
        );
        set.spawn(async move {
            let v: Value = http
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&json!({"items": items}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"]["orderId"].as_str().unwrap().to_string()
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = set.join_next().await {
        ids.push(id.unwrap());
    }
    ids
}

/// Two hundred checkouts at once for the last fifty units: exactly fifty confirmed, the stock
/// at zero and never below. In the PostgreSQL profile two inventory replicas (and two of
/// every stateful service) share one database, so the reservations race for real.
#[tokio::test]
async fn two_hundred_orders_for_the_last_fifty_units_confirm_exactly_fifty() {
    let sys = System::start_with(checkout(vec![])).await;
    let admin = sys.admin().await;
    set_stock(&sys, &admin, LAMP, 50).await;
    let mut users = Vec::new();
    for _ in 0..5 {
        users.push(sys.new_user().await.0);
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (http, url, token) = (
            sys.http.clone(),
            sys.url("/api/orders"),
            users[i % 5].clone(),
        );
        set.spawn(async move {
            let resp = http
                .post(url)
                .bearer_auth(&token)
                .json(&json!({"items": [{"productId": LAMP, "quantity": 1}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 202);
            let v: Value = resp.json().await.unwrap();
            (token, v["data"]["orderId"].as_str().unwrap().to_string())
        });
    }
    let mut orders = Vec::new();
    while let Some(r) = set.join_next().await {
        orders.push(r.unwrap());
    }
    let mut confirmed = 0;
    for (token, id) in &orders {
        let o = settled(&sys, token, id).await;
        match o["status"].as_str().unwrap() {
            "CONFIRMED" => confirmed += 1,
            _ => assert_eq!(o["reason"], "out_of_stock"),
        }
    }
    assert_eq!(confirmed, 50);
    eventually(&sys, "all reservations committed", async || {
        stock(&sys, &admin, LAMP).await == (0, 0)
    })
    .await;
}

#[tokio::test]
async fn duplicated_events_have_no_second_effect_and_projections_rebuild_identically() {
    let sys = System::start_with(checkout(vec![])).await;
    let admin = sys.admin().await;
    let (user, _) = sys.new_user().await;
    let mut ids = Vec::new();
    for q in 1..=3 {
        let (_, body) = place(
            &sys,
            &user,
            json!([{"productId": MOUSE, "quantity": q}]),
            None,
        )
        .await;
        ids.push(body["data"]["orderId"].as_str().unwrap().to_string());
    }
    for id in &ids {
        assert_eq!(settled(&sys, &user, id).await["status"], "CONFIRMED");
    }
    eventually(&sys, "three notifications", async || {
        notifications(&sys, &user).await.len() == 3
    })
    .await;
    let stock_before = stock(&sys, &admin, MOUSE).await;
    let charges_before = charges(&sys).await.len();

    // Copy every event about the first order back into its topic: commands and outcomes.
    let mut injected = 0;
    for topic in [
        "inventory.commands",
        "payment.commands",
        "order.events",
        "saga.checkout.replies",
    ] {
        for partition in 0..4 {
            let page: Value = sys
                .control(
                    reqwest::Method::GET,
                    &format!("/v1/topics/{topic}/events?partition={partition}&limit=1000"),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            // Each copy published again by the service that published the original.
            for e in page["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["event"]["subject"] == ids[0].as_str())
            {
                injected += 1;
                let producer = e["producer"].as_str().expect("the log names the producer");
                let resp = sys
                    .http
                    .post(format!("{}/v1/topics/{topic}/events", sys.control))
                    .header("authorization", sys.credential(producer).authorization())
                    .json(&json!({ "events": [e["event"]] }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
            }
        }
    }
    assert!(injected >= 5, "injected {injected}");
    // Let the consumers chew on them, then nothing must have changed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stock(&sys, &admin, MOUSE).await, stock_before);
    assert_eq!(charges(&sys).await.len(), charges_before);
    assert_eq!(notifications(&sys, &user).await.len(), 3);
    let (_, history) = sys
        .get(&format!("/api/orders/{}/history", ids[0]), Some(&user))
        .await;
    assert_eq!(history["data"]["events"].as_array().unwrap().len(), 4);

    // Projections rebuilt from scratch equal the live ones.
    let mut live = Vec::new();
    for id in &ids {
        live.push(sys.get(&format!("/api/orders/{id}"), Some(&user)).await.1["data"].clone());
    }
    let live_list = sys.get("/api/orders", Some(&user)).await.1["data"].clone();
    let (status, _) = sys
        .post("/api/orders/projections/rebuild", Some(&user), json!({}))
        .await;
    assert_eq!(status, 403);
    let (status, rebuilt) = sys
        .post("/api/orders/projections/rebuild", Some(&admin), json!({}))
        .await;
    assert_eq!(status, 200, "{rebuilt}");
    assert_eq!(rebuilt["data"]["orders"], 3);
    for (id, before) in ids.iter().zip(&live) {
        assert_eq!(
            &sys.get(&format!("/api/orders/{id}"), Some(&user)).await.1["data"],
            before
        );
    }
    assert_eq!(
        sys.get("/api/orders", Some(&user)).await.1["data"],
        live_list
    );
}

#[tokio::test]
async fn bad_orders_are_refused_and_start_nothing() {
    let sys = System::start_with(checkout(vec![])).await;
    let (user, _) = sys.new_user().await;
    let (other, _) = sys.new_user().await;
    let too_many: Vec<Value> = (1..=21)
        .map(|n| json!({"productId": format!("0190f000-0000-7000-8000-{n:012}"), "quantity": 1}))
        .collect();
    for (body, code) in [
        (
            json!({"items": [{"productId": "0190f000-0000-7000-8000-999999999999", "quantity": 1}]}),
            "unknown_product",
        ),
        (
            json!({"items": [{"productId": MOUSE, "quantity": 0}]}),
            "invalid_quantity",
        ),
        (
            json!({"items": [{"productId": MOUSE, "quantity": -3}]}),
            "invalid_quantity",
        ),
        (
            json!({"items": [{"productId": MOUSE, "quantity": 1_000_000_000_000i64}]}),
            "invalid_quantity",
        ),
        (
            json!({"items": [{"productId": MOUSE, "quantity": 1}, {"productId": MOUSE, "quantity": 2}]}),
            "duplicate_product",
        ),
        (json!({"items": []}), "invalid_items"),
        (json!({"items": too_many}), "invalid_items"),
        (
            json!({"items": [{"productId": "not-a-uuid", "quantity": 1}]}),
            "invalid_body",
        ),
        (
            json!({"items": [{"productId": MOUSE, "quantity": 1}], "price": 1}),
            "invalid_body",
        ),
        (
            json!({"items": [{"productId": MOUSE, "quantity": "1"}]}),
            "invalid_body",
        ),
    ] {
        let (status, resp) = sys.post("/api/orders", Some(&user), body.clone()).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_eq!(resp["error"]["code"], code, "{body} → {resp}");
    }
    let resp = sys
        .http
        .post(sys.url("/api/orders"))
        .bearer_auth(&user)
        .header("content-type", "application/json")
        .body("{\"items\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        sys.post(
            "/api/orders",
            None,
            json!({"items": [{"productId": MOUSE, "quantity": 1}]})
        )
        .await
        .0,
        401
    );
    let (_, mine) = sys.get("/api/orders", Some(&user)).await;
    assert_eq!(mine["data"]["items"], json!([]), "nothing was written");

    // Someone else's order is not found.
    let (_, body) = place(
        &sys,
        &user,
        json!([{"productId": MOUSE, "quantity": 1}]),
        None,
    )
    .await;
    let id = body["data"]["orderId"].as_str().unwrap();
    assert_eq!(
        sys.get(&format!("/api/orders/{id}"), Some(&other)).await.0,
        404
    );
    assert_eq!(
        sys.get(&format!("/api/orders/{id}/history"), Some(&other))
            .await
            .0,
        404
    );
    assert_eq!(sys.get("/api/orders/not-a-uuid", Some(&user)).await.0, 400);
}
