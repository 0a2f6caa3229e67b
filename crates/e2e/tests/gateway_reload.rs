//! Gateway hot reload (`docs/gateway.md`): the routes change from the manifest while the
//! gateway serves a steady load, by `tessera reload`, by the file changing, and through the
//! control plane's API, and not one request fails; a manifest that does not validate is
//! refused with its error and the running routes stay; the gateway is never restarted.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tessera_testkit::load::Load;
use tessera_testkit::{Options, System};

/// The route table the gateway serves (its admin listener's `/status/routes`).
async fn routes(sys: &System) -> Value {
    sys.http
        .get(sys.admin_url("/status/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn route<'a>(table: &'a Value, prefix: &str) -> &'a Value {
    table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == prefix)
        .unwrap_or_else(|| panic!("no route {prefix} in {table}"))
}

/// How many of `n` calls by a fresh user to `/api/payments/none` the gateway's rate limit
/// refused (the payment service does not run here: what passes the limit is a 503).
async fn limited_of(sys: &System, n: usize) -> usize {
    let (token, _) = sys.new_user().await;
    let mut limited = 0;
    for _ in 0..n {
        let (status, body) = sys.get("/api/payments/none", Some(&token)).await;
        if status == 429 && body["error"]["code"] == "rate_limited" {
            limited += 1;
        }
    }
    limited
}

#[tokio::test]
async fn routes_change_under_load_without_a_failed_request_or_a_restart() {
    // The file is not watched at first: each way of reloading is seen on its own.
    let sys = System::start_with(Options {
        gateway: "reload_watch_ms = 0".into(),
        ..Options::default()
    })
    .await;
    let path = sys.dir.join("tessera.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let pid = sys.gateway_pid();
    assert_eq!(routes(&sys).await["version"], 0);
    assert_eq!(limited_of(&sys, 3).await, 0);

    // Fifteen users, each twice every 100 ms: about 300 requests a second.
    let load = Load::start(&sys, 15).await;
    let started = Instant::now();
    let before = load.answered();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. `tessera reload`: a rate limit on the payments, and the file watched from now on.
    let limited = original
        .replace(
            "service = \"payment\"\nauth = \"required\"\n",
            "service = \"payment\"\nauth = \"required\"\nrate_limit = { per_user = \"2/m\" }\n",
        )
        .replace("reload_watch_ms = 0", "reload_watch_ms = 100");
    assert_ne!(limited, original);
    std::fs::write(&path, &limited).unwrap();
    let (ok, out, err) = sys.cli_async(&["reload"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("gateway-0: routes reloaded (reload 1"),
        "{out}"
    );
    let table = routes(&sys).await;
    assert_eq!(table["version"], 1);
    assert_eq!(route(&table, "/api/payments")["per_user"]["requests"], 2);
    assert_eq!(limited_of(&sys, 3).await, 1);

    // 2. The file changes: the inventory's roles, and the watch off again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let roles = limited
        .replace(
            "service = \"inventory\"\nauth = \"required\"\nroles = [\"admin\"]",
            "service = \"inventory\"\nauth = \"required\"\nroles = [\"admin\", \"auditor\"]",
        )
        .replace("reload_watch_ms = 100", "reload_watch_ms = 0");
    assert_ne!(roles, limited);
    std::fs::write(&path, &roles).unwrap();
    sys.wait_until(Duration::from_secs(5), "the watch reloads", || async {
        routes(&sys).await["version"] == 2
    })
    .await;
    assert_eq!(
        route(&routes(&sys).await, "/api/inventory")["roles"],
        serde_json::json!(["admin", "auditor"])
    );

    // A manifest that does not validate: refused by the command before any gateway is
    // asked, and by the gateway itself when asked; the routes in force stay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let broken = roles.replace("per_user = \"2/m\"", "per_user = \"2/fortnight\"");
    std::fs::write(&path, &broken).unwrap();
    let (ok, out, err) = sys.cli_async(&["reload"]).await;
    assert!(!ok, "{out}");
    assert!(err.contains("fortnight"), "{err}");
    let resp = sys
        .control(Method::POST, "/v1/gateways/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["code"], "invalid_manifest", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("fortnight"),
        "{answer}"
    );
    assert_eq!(answer["gateways"][0]["outcome"], "refused", "{answer}");
    assert_eq!(routes(&sys).await["version"], 2);
    assert_eq!(limited_of(&sys, 3).await, 1);

    // Only the admin reloads; the gateway's own endpoint takes the control plane's passport.
    let as_service = sys
        .http
        .post(format!("{}/v1/gateways/reload", sys.control))
        .header(
            "authorization",
            sys.credential("service:order").authorization(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(as_service.status(), 403);
    let direct = sys
        .http
        .post(sys.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);

    // 3. Through the control plane's API: the original manifest again.
    std::fs::write(&path, &original).unwrap();
    let resp = sys
        .control(Method::POST, "/v1/gateways/reload")
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["code"], "reloaded", "{answer}");
    assert_eq!(answer["gateways"][0]["reloaded"]["version"], 3, "{answer}");
    let table = routes(&sys).await;
    assert_eq!(route(&table, "/api/payments")["per_user"], Value::Null);
    assert_eq!(limited_of(&sys, 3).await, 0);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    let (answered, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    let rate = (answered - before) as f64 / elapsed.as_secs_f64();
    assert!(rate > 150.0, "only {rate:.0} requests/s of load");
    eprintln!("{answered} requests at {rate:.0}/s across three reloads, none failed");
    assert_eq!(sys.gateway_pid(), pid, "the gateway was restarted");
}

#[tokio::test]
async fn static_files_are_served_with_caching_headers_and_renewed_by_a_reload() {
    let web = std::env::temp_dir().join(format!("tessera-web-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<h1>dashboard</h1>").unwrap();
    std::fs::write(web.join("app.js"), "let version = 1;").unwrap();
    let files = format!(
        "[[files]]\nprefix = \"/\"\ndir = {:?}\n",
        web.display().to_string()
    );
    let sys = System::start_with(Options {
        gateway: "reload_watch_ms = 0".into(),
        extra_manifest: files.clone(),
        ..Options::default()
    })
    .await;
    let get = |path: &str, etag: Option<&str>| {
        let mut req = sys.http.get(format!("{}{path}", sys.gateway));
        if let Some(etag) = etag {
            req = req.header("if-none-match", etag);
        }
        req.send()
    };
    let page = get("/", None).await.unwrap();
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert_eq!(page.text().await.unwrap(), "<h1>dashboard</h1>");
    let script = get("/app.js", None).await.unwrap();
    assert_eq!(header(&script, "cache-control"), "public, max-age=300");
    assert!(header(&script, "content-type").starts_with("text/javascript"));
    let etag = header(&script, "etag");
    assert!(!etag.is_empty());
    // The browser's copy is still good: 304, no body.
    let again = get("/app.js", Some(&etag)).await.unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    // The routes keep their paths; what is neither is the gateway's 404.
    let (status, _) = sys.get("/api/catalog/products", None).await;
    assert_eq!(status, 200);
    let (status, body) = sys.get("/missing.js", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = sys.post("/app.js", None, serde_json::json!({})).await;
    assert_eq!(status, 405);
    let table = routes(&sys).await;
    assert_eq!(table["files"][0]["files"], 2, "{table}");

    // A new version of the page, and a new cache lifetime: a reload serves both.
    std::fs::write(web.join("app.js"), "let version = 2;").unwrap();
    let path = sys.dir.join("tessera.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let changed = manifest.replace(&files, &format!("{files}max_age_secs = 60\n"));
    assert_ne!(changed, manifest);
    std::fs::write(&path, changed).unwrap();
    let (ok, out, err) = sys.cli_async(&["reload"]).await;
    assert!(ok, "{out}{err}");
    let script = get("/app.js", Some(&etag)).await.unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(header(&script, "cache-control"), "public, max-age=60");
    assert_eq!(script.text().await.unwrap(), "let version = 2;");
    let _ = std::fs::remove_dir_all(&web);
}
