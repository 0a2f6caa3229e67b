//! The Tessera Console in a real browser: headless Chromium (the Debian package) loads the
//! console from the control plane, signs in with the admin's credential, finds a checkout's
//! trace, opens its waterfall, and shows what a person would see; every page renders without
//! an error. Screenshots are kept in `target/console-screenshots/` as the test's artifacts.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_testkit::{Options, System, free_port};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

/// Where screenshots go.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page at `url` as headless Chromium rendered it (its DOM once scripts and requests
/// settled), with a screenshot saved as `shot`.
fn browse(url: &str, shot: &str) -> String {
    let profile = std::env::temp_dir().join(format!("tessera-chromium-{}", free_port()));
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1400,1000",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    let mut dump = Command::new("chromium");
    common(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut screenshot = Command::new("chromium");
    common(&mut screenshot);
    let path = artifacts().join(shot);
    let shot_out = screenshot
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        shot_out.status.success() && path.exists(),
        "{}",
        String::from_utf8_lossy(&shot_out.stderr)
    );
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8(out.stdout).unwrap()
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
        assert!(!page.contains("class=\"error\""), "{hash}: {page}");
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
