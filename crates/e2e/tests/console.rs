//! The Tessera Console in a real browser: headless Chromium (the Debian package) loads the
//! console from the control plane, signs in with the admin's credential, finds a checkout's
//! trace, opens its waterfall, and shows what a person would see; every page renders without
//! an error (a page that failed to load shows its error as `id="failed"`); a saga an admin
//! acted on is drawn with its timeline. Screenshots are kept in `target/console-screenshots/` as the test's artifacts.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_testkit::{Options, System};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

/// The page at `url` in headless Chromium, with a screenshot kept as `shot`.
fn browse(url: &str, shot: &str) -> String {
    tessera_testkit::browser::browse(
        url,
        &tessera_testkit::browser::artifacts("console-screenshots").join(shot),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_finds_a_checkouts_trace_and_draws_its_waterfall_in_a_real_browser() {
    let sys = System::start_with(Options {
        checkout: true,
        extra_manifest: "[telemetry]\nscrape_ms = 500\n".into(),
        ..Options::default()
    })
    .await;
    let (token, _) = sys.new_user().await;
    let order = sys
        .place_order(&token, json!([{ "productId": MOUSE, "quantity": 1 }]))
        .await;
    assert_eq!(
        sys.settled_order(&token, &order).await["status"],
        "CONFIRMED"
    );
    // The checkout's trace, once the notification's consumer span is in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let trace_id = loop {
        let found: Value = sys
            .control_json("/v1/telemetry/traces?service=notification&limit=5")
            .await;
        let hit = found["traces"].as_array().unwrap().iter().find(|t| {
            t["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "payment-provider")
        });
        if let Some(t) = hit {
            break t["trace_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no checkout trace: {found}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let console = format!("{}/console/", sys.control);
    let credential = sys.credential("admin").token().to_string();

    // Without a credential: the sign-in form, and no figure of the system.
    let page = browse(&console, "sign-in.png");
    assert!(page.contains("Sign in"), "{page}");
    assert!(!page.contains("catalog-1"));

    // Services: every instance, up.
    let page = browse(
        &format!("{console}#/?credential={credential}"),
        "services.png",
    );
    for instance in [
        "catalog-1",
        "order-1",
        "payment-provider-1",
        "notification-1",
    ] {
        assert!(page.contains(instance), "{instance}: {page}");
    }
    // The platform's processes beside them: the gateway (it does not register) and the
    // control plane, each up, with its pid and restarts.
    assert!(page.contains("id=\"platform\""), "{page}");
    assert!(page.contains("gateway-0"), "{page}");
    let platform = sys.control_json("/v1/telemetry/platform").await;
    let processes = platform["processes"].as_array().unwrap();
    for instance in ["gateway-0", "control"] {
        let p = processes
            .iter()
            .find(|p| p["instance"] == instance)
            .unwrap_or_else(|| panic!("{instance}: {platform}"));
        assert_eq!(p["up"], true, "{platform}");
        assert!(p["process"]["pid"].as_u64().unwrap() > 1, "{platform}");
        assert_eq!(p["process"]["restarts"], 0, "{platform}");
    }

    // Traces: the search finds the checkout by service.
    let page = browse(
        &format!("{console}#/traces?service=notification&credential={credential}"),
        "traces.png",
    );
    assert!(page.contains(&trace_id[..8]), "{page}");
    assert!(page.contains("POST /api/orders"), "{page}");

    // Its waterfall: a row per span across the services, nested, with the trace's log lines.
    let page = browse(
        &format!("{console}#/trace/{trace_id}?credential={credential}"),
        "trace.png",
    );
    let rows = page.matches("class=\"span-row").count();
    assert!(rows >= 20, "{rows} span rows: {page}");
    for shown in [
        "POST /api/orders",
        "saga checkout step reserve-stock",
        "inventory.commands process",
        "POST /v1/charges",
        "payment-provider",
        "order placed",
        "Log lines of this trace",
    ] {
        assert!(page.contains(shown), "{shown}: {page}");
    }
    assert!(
        page.contains("padding-left:28px"),
        "children are indented under their parents"
    );

    // Every other page renders, without an error.
    for (hash, shot, shown) in [
        ("#/routes", "routes.png", "/api/orders"),
        ("#/logs?service=order", "logs.png", "order placed"),
        ("#/events", "events.png", "order.events"),
        ("#/resilience", "resilience.png", "class=\"breaker\""),
    ] {
        let joiner = if hash.contains('?') { '&' } else { '?' };
        let page = browse(
            &format!("{console}{hash}{joiner}credential={credential}"),
            shot,
        );
        assert!(!page.contains("id=\"failed\""), "{hash}: {page}");
        assert!(page.contains(shown), "{hash}: {shown}: {page}");
    }
}

#[tokio::test]
async fn the_consoles_pages_hold_no_data_and_forbid_framing_and_foreign_scripts() {
    let sys = System::start_with(Options::default()).await;
    for (path, kind) in [
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let resp = sys
            .http
            .get(format!("{}{path}", sys.control))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let headers = resp.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        assert_eq!(headers["x-frame-options"], "DENY");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        let body = resp.text().await.unwrap();
        assert!(!body.contains("catalog-1"));
    }
    // The data is behind the credential, as the rest of the API.
    let anonymous = sys
        .http
        .get(format!("{}/v1/telemetry/traces", sys.control))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

async fn stock(sys: &System, admin: &str) -> (i64, i64) {
    let (status, body) = sys
        .get(&format!("/api/inventory/{MOUSE}"), Some(admin))
        .await;
    assert_eq!(status, 200, "{body}");
    (
        body["data"]["available"].as_i64().unwrap(),
        body["data"]["reserved"].as_i64().unwrap(),
    )
}

/// A request to the control plane as `principal`.
fn control_as(
    sys: &System,
    principal: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    sys.http
        .request(method, format!("{}{path}", sys.control))
        .header("authorization", sys.credential(principal).authorization())
}

/// A checkout saga stuck on its first step (the inventory frozen, the step's timeout ten
/// minutes): the sagas API lists it among the running; a supervisor may look but not act; an
/// admin sends the step again, then compensates it, both written in its history and audited;
/// the order is rejected, and the stock comes back once the inventory thaws (it answers both
/// commands, late). The console draws the saga's steps and timeline in a real browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_retries_and_compensates_a_stuck_saga_and_the_console_draws_its_timeline() {
    let sys = System::start_with(Options {
        checkout: true,
        checkout_env: vec![("order", "ORDER_STOCK_TIMEOUT_MS", "600000".into())],
        ..Options::default()
    })
    .await;
    let (token, _) = sys.new_user().await;
    let admin = sys.admin().await;
    let before = stock(&sys, &admin).await;
    // Every replica of it (two on PostgreSQL): one left running would take the step over
    // once the frozen one's lease lapses, and the saga would not be stuck.
    let inventory: Vec<u32> = sys.registry().await.services["inventory"]
        .iter()
        .map(|i| i.metadata["pid"].parse().unwrap())
        .collect();
    for pid in &inventory {
        tessera_testkit::signal(*pid, libc::SIGSTOP);
    }
    let order = sys
        .place_order(&token, json!([{ "productId": MOUSE, "quantity": 3 }]))
        .await;

    // Listed among the running, on its first step, with the trace it started in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let body = sys.control_json("/v1/sagas?status=running").await;
        let found = body["services"].as_array().unwrap().iter().find_map(|s| {
            s["sagas"]
                .as_array()?
                .iter()
                .find(|g| g["id"] == order.as_str())
                .cloned()
        });
        if let Some(saga) = found {
            break saga;
        }
        assert!(
            Instant::now() < deadline,
            "the saga is not listed as running: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["name"], "checkout");
    assert_eq!(listed["step"], "reserve-stock");
    assert!(listed["deadline"].as_i64().unwrap() > tessera::unix_now_ms() + 60_000);
    assert_eq!(listed["traceId"].as_str().unwrap().len(), 32);
    let path = format!("/v1/sagas/order/checkout/{order}");

    // A supervisor reads, and may not act.
    let read = control_as(&sys, "supervisor", reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    for action in ["retry", "compensate"] {
        let refused = control_as(
            &sys,
            "supervisor",
            reqwest::Method::POST,
            &format!("{path}/{action}"),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(refused.status(), 403, "{action}");
    }

    // A shop user with the `admin` role (a gateway's passport) is not the platform's admin:
    // the order service refuses to show or move its sagas to it, called directly.
    let keys = tessera::PassportKeys::from_spec(&sys.passport_keys(), "shop-test").unwrap();
    let trace = tessera::TraceContext::new_root();
    let shop_admin = keys.mint(
        "tessera-gateway",
        "some-user",
        &["admin".to_string(), "user".to_string()],
        None,
        &trace,
    );
    let order_address = sys.registry().await.services["order"][0].address.clone();
    for (method, at) in [
        (reqwest::Method::GET, "/status/sagas".to_string()),
        (
            reqwest::Method::GET,
            format!("/status/sagas/checkout/{order}"),
        ),
        (
            reqwest::Method::POST,
            format!("/status/sagas/checkout/{order}/compensate"),
        ),
    ] {
        let refused = sys
            .http
            .request(method, format!("http://{order_address}{at}"))
            .header("x-passport", &shop_admin)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{at}");
    }

    // The admin sends the step again: its history says who.
    let retried = sys
        .control(reqwest::Method::POST, &format!("{path}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200);
    let retried: Value = retried.json().await.unwrap();
    let last = retried["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["action"].as_str(), last["by"].as_str()),
        (Some("retry"), Some("admin")),
        "{retried}"
    );
    assert_eq!(retried["status"], "running");

    // And compensates it: the order is rejected.
    let compensated = sys
        .control(reqwest::Method::POST, &format!("{path}/compensate"))
        .send()
        .await
        .unwrap();
    assert_eq!(compensated.status(), 200);
    let compensated: Value = compensated.json().await.unwrap();
    assert_eq!(compensated["status"], "failed");
    assert_eq!(compensated["reason"], "compensated by admin");
    let actions: Vec<&str> = compensated["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["command", "retry", "abort", "compensate"],
        "{compensated}"
    );
    assert_eq!(
        sys.settled_order(&token, &order).await["status"],
        "REJECTED"
    );
    let again = sys
        .control(reqwest::Method::POST, &format!("{path}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "only a running saga is acted on");
    sys.log_line("the control plane's audit of the action", |l| {
        l.contains("saga action")
            && l.contains("compensate")
            && l.contains("admin")
            && l.contains(&order)
    })
    .await;
    sys.log_line("the order service's audit of the action", |l| {
        l.contains("saga compensated") && l.contains(&order)
    })
    .await;

    // The inventory thaws: the reservation (asked twice, held once) is released.
    for pid in &inventory {
        tessera_testkit::signal(*pid, libc::SIGCONT);
    }
    sys.wait_until(Duration::from_secs(20), "the stock back as it was", || {
        let (sys, admin) = (&sys, &admin);
        async move { stock(sys, admin).await == before }
    })
    .await;

    // Both reserve commands were answered, late: the history says so.
    sys.wait_until(
        Duration::from_secs(10),
        "the two late answers in the saga's history",
        || async {
            let saga = sys.control_json(&path).await;
            let late = saga["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["action"] == "late-reply" && e["reason"] == "ok")
                .count();
            late == 2
        },
    )
    .await;

    // Bad requests get a clear answer, never a 500.
    for (method, bad, status) in [
        (
            reqwest::Method::GET,
            "/v1/sagas?status=stuckish".to_string(),
            400,
        ),
        (
            reqwest::Method::GET,
            "/v1/sagas?limit=100000".to_string(),
            400,
        ),
        (reqwest::Method::GET, "/v1/sagas?what=1".to_string(), 400),
        (
            reqwest::Method::GET,
            "/v1/sagas/order/checkout/a%2F..%2Fb".to_string(),
            400,
        ),
        (
            reqwest::Method::GET,
            "/v1/sagas/nobody/checkout/x".to_string(),
            404,
        ),
        (
            reqwest::Method::GET,
            "/v1/sagas/order/checkout/no-such-saga".to_string(),
            404,
        ),
        (
            reqwest::Method::GET,
            "/v1/sagas/order/nosuchsaga/x".to_string(),
            404,
        ),
        (reqwest::Method::POST, format!("{path}/explode"), 404),
    ] {
        let resp = sys.control(method, &bad).send().await.unwrap();
        assert_eq!(
            resp.status(),
            status,
            "{bad}: {}",
            resp.text().await.unwrap()
        );
    }

    // The console: the failed saga listed, and its steps and timeline drawn.
    let console = format!("{}/console/", sys.control);
    let credential = sys.credential("admin").token().to_string();
    let page = browse(
        &format!("{console}#/sagas?status=failed&credential={credential}"),
        "sagas.png",
    );
    assert!(!page.contains("id=\"failed\""), "{page}");
    assert!(page.contains(&order), "{page}");
    assert!(page.contains("compensated by admin"), "{page}");
    let page = browse(
        &format!("{console}#/saga/order/checkout/{order}?credential={credential}"),
        "saga.png",
    );
    assert!(!page.contains("id=\"failed\""), "{page}");
    for shown in [
        "reserve-stock",
        "authorize-payment",
        "sent again by an operator",
        "compensated by an operator",
        "compensation sent",
        "late answer",
        "id=\"timeline\"",
        "its trace",
    ] {
        assert!(page.contains(shown), "{shown}: {page}");
    }
    assert_eq!(page.matches("class=\"entry ").count(), 6, "{page}");
}
