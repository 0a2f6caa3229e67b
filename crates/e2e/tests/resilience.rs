//! Resilience at the gateway, against a service that fails, hangs or is hammered on purpose
//! (the Python echo service), and in the shop against a failing payment provider.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_testkit::{Options, System};

fn echo_system(extra: &str) -> Options {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/echo_service.py"
    );
    // A breaker, an ejection and a bulkhead are each gateway's own (as an Envoy's are): these
    // tests watch one gateway's.
    Options {
        gateways: Some(1),
        upstream_timeout_ms: 5000,
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/api/echo"
service = "echo"
auth = "public"

[[route]]
prefix = "/api/budget"
service = "budgeted"
auth = "public"

[services.echo]
command = ["python3", "{script}"]

[services.budgeted]
command = ["python3", "{script}"]

[gateway.upstreams.echo]
max_concurrent = 4
breaker = {{ minimum_calls = 4, failure_rate = 0.5, wait_in_open_ms = 60000 }}
retry = {{ max_attempts = 1 }}

[gateway.upstreams.budgeted]
breaker = {{ minimum_calls = 100000 }}
retry = {{ max_attempts = 3, backoff = {{ base_ms = 1, max_ms = 5 }}, budget = {{ ratio = 0.2, min_per_sec = 0, window_secs = 10 }} }}
{extra}
"#
        ),
        ..Options::default()
    }
}

/// The gateway's `/status/resilience`, on its admin listener.
async fn resilience_status(sys: &System) -> Value {
    sys.http
        .get(sys.admin_url("/status/resilience"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn status(sys: &System, path: &str) -> (u16, Value) {
    sys.get(path, None).await
}

#[tokio::test]
async fn a_failing_upstream_trips_its_breaker_and_fails_fast_while_others_serve() {
    let sys = System::start_with(echo_system("")).await;
    for _ in 0..4 {
        let (code, body) = status(&sys, "/api/echo/fail").await;
        assert_eq!(code, 500, "{body}");
        assert_eq!(body["error"]["code"], "boom");
    }
    let started = Instant::now();
    let (code, body) = status(&sys, "/api/echo/fail").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("circuit_open")),
        "{body}"
    );
    let (code, _) = status(&sys, "/api/echo/headers").await;
    assert_eq!(code, 503, "the whole upstream is cut off while open");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(
        status(&sys, "/api/catalog/products?limit=1").await.0,
        200,
        "other routes are unaffected"
    );

    let gateway_status: Value = resilience_status(&sys).await;
    assert_eq!(
        gateway_status["upstreams"]["echo"]["breaker"], "open",
        "{gateway_status}"
    );
    assert_eq!(gateway_status["upstreams"]["catalog"]["breaker"], "closed");
    let metrics = sys
        .http
        .get(sys.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tessera_breaker_rejected_total"),
        "{metrics}"
    );
    sys.log_line("the breaker's transition, with its reason", |l| {
        l.contains("circuit breaker state change") && l.contains("reason")
    })
    .await;
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let sys = System::start_with(echo_system("")).await;
    for _ in 0..50 {
        let (code, _) = status(&sys, "/api/budget/fail").await;
        assert_eq!(code, 500);
    }
    let (_, counts) = status(&sys, "/api/budget/count").await;
    let received = counts["data"]["/api/budget/fail"].as_i64().unwrap();
    // 50 requests, 3 attempts each if nothing held them back: 150. The budget allows 20% more.
    assert!(
        (50..=60).contains(&received),
        "the upstream saw {received} requests for 50"
    );
    assert!(received > 50, "some retries happened");
}

#[tokio::test]
async fn a_hanging_upstream_cannot_exhaust_the_gateway() {
    let sys = System::start_with(echo_system("")).await;
    let mut hung = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, url) = (sys.http.clone(), sys.url("/api/echo/sleep?ms=3000"));
        hung.spawn(async move { http.get(url).send().await.unwrap().status().as_u16() });
    }
    // Until all four hold the echo route's bulkhead (a fixed pause is too short on a busy
    // machine).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let s: Value = resilience_status(&sys).await;
        if s["upstreams"]["echo"]["inFlight"] == s["upstreams"]["echo"]["maxConcurrent"] {
            break;
        }
        assert!(Instant::now() < deadline, "the bulkhead never filled: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (code, body) = status(&sys, "/api/echo/sleep?ms=3000").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("bulkhead_full")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "rejected at once, not queued"
    );
    for _ in 0..20 {
        assert_eq!(
            status(&sys, "/api/catalog/products?limit=1").await.0,
            200,
            "other routes keep answering"
        );
    }
    while let Some(code) = hung.join_next().await {
        assert_eq!(code.unwrap(), 200);
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let sys = System::start_with(echo_system(
        r#"
[[route]]
prefix = "/api/auth/login"
service = "auth"
auth = "public"
rate_limit = { per_ip = "3/m" }
"#,
    ))
    .await;
    let login = json!({"email": "nobody@shop.test", "password": "wrong-password"});
    for _ in 0..3 {
        assert_eq!(
            sys.post("/api/auth/login", None, login.clone()).await.0,
            401
        );
    }
    let resp = sys
        .http
        .post(sys.url("/api/auth/login"))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let h = resp.headers();
    assert_eq!(h["ratelimit-limit"], "3");
    assert_eq!(h["ratelimit-remaining"], "0");
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "one token comes back every 20 s: {retry_after}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Other routes are not limited.
    for _ in 0..10 {
        assert_eq!(status(&sys, "/api/catalog/products?limit=1").await.0, 200);
    }
}

#[tokio::test]
async fn an_open_breaker_serves_the_routes_fallback() {
    let sys = System::start_with(echo_system(
        r#"
[[route]]
prefix = "/api/echo/fallback"
service = "echo"
auth = "public"
fallback = { body = '{"items": [], "stale": true}' }
"#,
    ))
    .await;
    for _ in 0..4 {
        status(&sys, "/api/echo/fail").await;
    }
    let resp = sys
        .http
        .get(sys.url("/api/echo/fallback/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-tessera-fallback"], "circuit-open");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"], json!({"items": [], "stale": true}));
}

#[tokio::test]
async fn the_payment_providers_breaker_rejects_checkouts_fast_and_recovers() {
    let sys = System::start_with(Options {
        gateways: Some(1),
        checkout: true,
        checkout_env: vec![
            ("payment", "PAYMENT_BREAKER_MIN_CALLS", "4".into()),
            // Open long enough for every payment replica's breaker (each process has its own:
            // two in the PostgreSQL profile) to be seen open below.
            ("payment", "PAYMENT_BREAKER_WAIT_MS", "4000".into()),
            ("payment", "PAYMENT_MAX_ATTEMPTS", "2".into()),
        ],
        ..Options::default()
    })
    .await;
    let (user, _) = sys.new_user().await;
    let keys = tessera::PassportKeys::from_spec(&sys.passport_keys(), "shop-test").unwrap();
    let passport = keys.mint(
        "test",
        "service:test",
        &["system".into()],
        None,
        &tessera::TraceContext::new_root(),
    );
    let provider = sys.registry().await.services["payment-provider"][0]
        .address
        .clone();
    let behave = |rate: f64| {
        let (http, url, passport) = (
            sys.http.clone(),
            format!("http://{provider}/v1/behavior"),
            passport.clone(),
        );
        async move {
            let body = json!({"latencyMs": 0, "failureRate": rate, "hang": false, "declineOver": 1_000_000});
            assert_eq!(
                http.put(url)
                    .header("x-passport", passport)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
                200
            );
        }
    };
    let order = |quantity: i64| {
        let (http, url, user) = (sys.http.clone(), sys.url("/api/orders"), user.clone());
        async move {
            let body = json!({"items": [{"productId": "0190f000-0000-7000-8000-000000000005", "quantity": quantity}]});
            let v: Value = http
                .post(url)
                .bearer_auth(user)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"]["orderId"].as_str().unwrap().to_string()
        }
    };
    let settle = |id: String| {
        let (http, base, user) = (sys.http.clone(), sys.gateway.clone(), user.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let v: Value = http
                    .get(format!("{base}/api/orders/{id}"))
                    .bearer_auth(&user)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if v["data"]["status"] != "PENDING" {
                    return v["data"].clone();
                }
                assert!(Instant::now() < deadline, "order {id} never settled");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };

    behave(1.0).await;
    let mut reasons = Vec::new();
    // Enough failures that every replica's breaker opens, whichever replica each lands on.
    for _ in 0..12 {
        let o = settle(order(1).await).await;
        assert_eq!(o["status"], "REJECTED");
        reasons.push(o["reason"].as_str().unwrap().to_string());
    }
    assert!(
        reasons.iter().any(|r| r == "payment_provider_unavailable"),
        "the breaker opened: {reasons:?}"
    );
    let started = Instant::now();
    let o = settle(order(1).await).await;
    assert_eq!(
        (o["status"].as_str(), o["reason"].as_str()),
        (Some("REJECTED"), Some("payment_provider_unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "rejected quickly: {:?}",
        started.elapsed()
    );

    behave(0.0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = settle(order(1).await).await;
        if o["status"] == "CONFIRMED" {
            break;
        }
        assert!(Instant::now() < deadline, "checkouts never recovered: {o}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_hanging_instance_is_ejected_and_latency_returns_to_normal() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/echo_service.py"
    );
    let sys = System::start_with(Options {
        gateways: Some(1),
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/api/echo"
service = "echo"
auth = "public"

[services.echo]
command = ["python3", "{script}"]
replicas = 2

[gateway.upstreams.echo]
breaker = {{ minimum_calls = 100000 }}
retry = {{ max_attempts = 2, per_try_timeout_ms = 300, budget = {{ ratio = 1.0, min_per_sec = 10 }} }}
outlier = {{ consecutive_errors = 3, base_ejection_ms = 60000 }}
"#
        ),
        ..Options::default()
    })
    .await;
    let echo = sys.registry().await.services["echo"].clone();
    assert_eq!(echo.len(), 2);
    let hung = echo
        .iter()
        .find(|i| i.id == "echo-1")
        .unwrap()
        .address
        .clone();
    sys.http
        .get(format!("http://{hung}/admin/hang"))
        .send()
        .await
        .unwrap();

    let mut latencies = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let (code, body) = status(&sys, "/api/echo/headers").await;
        assert_eq!(code, 200, "retried on the healthy instance: {body}");
        latencies.push(started.elapsed());
    }
    let slow = latencies
        .iter()
        .filter(|d| **d >= Duration::from_millis(250))
        .count();
    assert!(
        slow <= 3,
        "only the calls before the ejection waited: {slow} slow"
    );
    let tail = &latencies[20..];
    assert!(
        tail.iter().all(|d| *d < Duration::from_millis(200)),
        "normal latency after the ejection: {tail:?}"
    );
    let state: Value = resilience_status(&sys).await;
    assert_eq!(
        state["upstreams"]["echo"]["instances"]["echo-1"]["ejected"], true,
        "{state}"
    );
    assert_eq!(
        state["upstreams"]["echo"]["instances"]["echo-2"]["ejected"], false,
        "never both"
    );
    sys.log_line("the ejection", |l| l.contains("instance ejected"))
        .await;
}

#[tokio::test]
async fn orders_are_priced_from_the_last_good_catalog_answer_while_the_catalog_is_down() {
    let sys = System::start_with(Options {
        gateways: Some(1),
        checkout: true,
        ..Options::default()
    })
    .await;
    let (user, _) = sys.new_user().await;
    let body =
        json!({"items": [{"productId": "0190f000-0000-7000-8000-000000000005", "quantity": 1}]});
    let place = || {
        let (http, url, user, body) = (
            sys.http.clone(),
            sys.url("/api/orders"),
            user.clone(),
            body.clone(),
        );
        async move {
            let resp = http
                .post(url)
                .bearer_auth(user)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    // Warms the cache of every order replica (the PostgreSQL profile runs two): each must have
    // seen the product once.
    let replicas = sys.registry().await.services["order"].len();
    let mut warmed = std::collections::BTreeSet::new();
    for _ in 0..60 {
        assert_eq!(place().await.0, 202, "warms the cache");
        warmed = (1..=replicas)
            .filter(|r| {
                sys.log()
                    .lines()
                    .any(|l| l.contains(&format!("order-{r} |")) && l.contains("order placed"))
            })
            .collect();
        if warmed.len() == replicas {
            break;
        }
    }
    assert_eq!(
        warmed.len(),
        replicas,
        "every order replica served an order"
    );
    let catalog = sys.registry().await.services["catalog"][0].metadata["pid"]
        .parse::<u32>()
        .unwrap();
    tessera_testkit::freeze(catalog);
    let (status, answer) = place().await;
    tessera_testkit::thaw(catalog);
    assert_eq!(status, 202, "served from the fallback cache: {answer}");
    sys.log_line("the fallback", |l| {
        l.contains("serving the last good answer")
    })
    .await;
    // A product never seen before has no fallback: a clear 503, not a guess.
    tessera_testkit::freeze(catalog);
    let other =
        json!({"items": [{"productId": "0190f000-0000-7000-8000-000000000006", "quantity": 1}]});
    let resp = sys
        .http
        .post(sys.url("/api/orders"))
        .bearer_auth(&user)
        .json(&other)
        .send()
        .await
        .unwrap();
    tessera_testkit::thaw(catalog);
    assert_eq!(resp.status().as_u16(), 503);
}
