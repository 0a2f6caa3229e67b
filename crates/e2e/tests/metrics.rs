//! Metrics end to end: the control plane scrapes every instance (the services, the gateway,
//! itself) into RED series per route; a real Prometheus (the Debian package) finds the same
//! instances through the control plane's HTTP service discovery and scrapes them all; and
//! `promtool` accepts what each one exposes.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tessera_testkit::{Options, System, free_port};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

/// Prometheus as a process of the test's own, stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempdir::Dir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn start_prometheus(sd_url: &str, credential: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("tessera-prom-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tessera
    http_sd_configs:
      - url: {sd_url}
        refresh_interval: 1s
        authorization:
          type: Bearer
          credentials: "{credential}"
"#
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus runs (apt-get install prometheus)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: tempdir::Dir(dir),
    }
}

#[tokio::test]
async fn prometheus_finds_and_scrapes_every_instance_and_the_control_plane_keeps_red_series() {
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
    sys.settled_order(&token, &order).await;

    // Discovery: every registered instance, the gateway and the control plane, labelled.
    let groups: Value = sys.control_json("/v1/telemetry/prometheus").await;
    let groups = groups.as_array().unwrap().clone();
    let services: BTreeSet<&str> = groups
        .iter()
        .map(|g| g["labels"]["tessera_service"].as_str().unwrap())
        .collect();
    for want in [
        "gateway",
        "control",
        "order",
        "catalog",
        "inventory",
        "payment",
        "auth",
    ] {
        assert!(services.contains(want), "{want} in {groups:?}");
    }
    // promtool accepts what each one exposes.
    for g in &groups {
        let address = g["targets"][0].as_str().unwrap();
        let text = sys
            .http
            .get(format!("http://{address}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{address}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Only operators discover.
    let as_service = sys
        .http
        .get(format!("{}/v1/telemetry/prometheus", sys.control))
        .header(
            "authorization",
            sys.credential("service:order").authorization(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(as_service.status(), 403);

    // A real Prometheus, given only the discovery URL and a credential, scrapes them all.
    let prometheus = start_prometheus(
        &format!("{}/v1/telemetry/prometheus", sys.control),
        sys.credential("admin").token(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets: Option<Value> = match sys
            .http
            .get(format!("{}/api/v1/targets", prometheus.url))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let active = targets
            .as_ref()
            .and_then(|t| t["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        if active.len() == groups.len() && up == groups.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus scrapes {up} of {} targets: {targets:?}",
            groups.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = sys
            .http
            .get(format!("{}/api/v1/query", prometheus.url))
            .query(&[(
                "query",
                "sum by (tessera_service) (http_server_requests_total)",
            )])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen: BTreeSet<String> = answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"]["tessera_service"].as_str().map(str::to_string))
            .collect();
        if ["gateway", "order", "catalog"]
            .iter()
            .all(|s| seen.contains(*s))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has {seen:?}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The Grafana dashboard in the repository asks Prometheus only what it can answer: every
    // panel's query runs, and the request panels have data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/tessera.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$service", ".*");
            let answer: Value = sys
                .http
                .get(format!("{}/api/v1/query", prometheus.url))
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                answer["status"], "success",
                "{}: {expr}: {answer}",
                panel["title"]
            );
        }
    }
    let requests = panels
        .iter()
        .find(|p| p["title"] == "Requests per second, by service")
        .unwrap()["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .replace("$service", ".*");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sys.get(&format!("/api/orders/{order}"), Some(&token)).await;
        let answer: Value = sys
            .http
            .get(format!("{}/api/v1/query", prometheus.url))
            .query(&[("query", requests.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !answer["data"]["result"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the requests panel stays empty: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The control plane's own series: requests keep coming, and the order route has a rate,
    // no errors, and its latency quantiles.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sys.get(&format!("/api/orders/{order}"), Some(&token)).await;
        let series: Value = sys
            .control_json("/v1/telemetry/metrics?service=order&route=/api/orders/{id}")
            .await;
        let busy = series["routes"].as_array().unwrap().iter().any(|r| {
            r["points"].as_array().unwrap().iter().any(|p| {
                p["rate"].as_f64().unwrap() > 0.0
                    && p["errors"].as_f64().unwrap() == 0.0
                    && p["p50_ms"].as_f64().is_some_and(|v| v > 0.0)
                    && p["p99_ms"].as_f64().unwrap() >= p["p50_ms"].as_f64().unwrap()
            })
        });
        if busy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no point with requests: {series}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway: Value = sys
        .control_json("/v1/telemetry/metrics?service=gateway")
        .await;
    assert!(
        gateway["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["route"] == "/api/orders"),
        "{gateway}"
    );
    // Each process's resilience: the gateway's breaker to the order service, closed, beside
    // its counters from the last scrape.
    let resilience = sys.control_json("/v1/telemetry/resilience").await;
    let processes = resilience["processes"].as_array().unwrap();
    let gateway = processes
        .iter()
        .find(|p| p["service"] == "gateway")
        .unwrap_or_else(|| panic!("{resilience}"));
    assert_eq!(
        gateway["status"]["upstreams"]["order"]["breaker"], "closed",
        "{gateway}"
    );
    assert!(
        gateway["counters"]["tessera_retries_total"].is_number(),
        "{gateway}"
    );
    assert!(processes.iter().all(|p| p["service"] != "control"));
    let bad = sys
        .control(Method::GET, "/v1/telemetry/metrics?colour=red")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
