//! `/metrics` and `/status/*` are on admin listeners of their own, on loopback: the gateway's
//! (`gateway.admin_listen`) and each service's (registered as its instance's `admin`), never on
//! a public port, where only `/health/*` answers without credentials.

use serde_json::Value;
use tessera_testkit::{System, admin_of};

async fn status_of(sys: &System, url: &str, passport: Option<&str>) -> u16 {
    let mut req = sys.http.get(url);
    if let Some(p) = passport {
        req = req.header("x-passport", p);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn metrics_and_status_are_not_on_the_public_ports() {
    let sys = System::start().await;
    assert_eq!(sys.get("/api/catalog/products?limit=1", None).await.0, 200);

    for path in ["/metrics", "/status/resilience"] {
        assert_eq!(status_of(&sys, &sys.url(path), None).await, 404, "{path}");
    }
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(status_of(&sys, &sys.url(path), None).await, 200, "{path}");
    }

    let catalog = &sys.registry().await.services["catalog"][0];
    let main = format!("http://{}", catalog.address);
    let passport = sys.system_passport();
    for path in ["/metrics", "/status/resilience"] {
        let url = format!("{main}{path}");
        assert_eq!(
            status_of(&sys, &url, None).await,
            401,
            "{path}: a passport first"
        );
        assert_eq!(status_of(&sys, &url, Some(&passport)).await, 404, "{path}");
    }
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(status_of(&sys, &format!("{main}{path}"), None).await, 200);
    }
}

#[tokio::test]
async fn they_are_on_the_admin_listeners() {
    let sys = System::start().await;
    assert_eq!(sys.get("/api/catalog/products?limit=1", None).await.0, 200);

    // The gateway's, at `gateway.admin_listen`.
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
        metrics.contains(r#"http_server_requests_total{route="/api/catalog""#),
        "{metrics}"
    );
    let status: Value = sys
        .http
        .get(sys.admin_url("/status/resilience"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["upstreams"]["catalog"]["breaker"], "closed",
        "{status}"
    );
    assert_eq!(
        status_of(&sys, &sys.admin_url("/api/catalog/products"), None).await,
        404
    );

    // A service's, on loopback, found in its registration.
    let catalog = sys.registry().await;
    let admin = admin_of(&catalog, "catalog-1").expect("catalog-1 registered its admin address");
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    assert_ne!(admin, catalog.services["catalog"][0].address);
    let metrics = sys.metrics_of(&admin).await;
    assert!(
        metrics.contains(r#"route="/api/catalog/products""#),
        "{metrics}"
    );
    let status: Value = sys
        .http
        .get(format!("http://{admin}/status/resilience"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status["upstreams"].is_object(), "{status}");
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(
            status_of(&sys, &format!("http://{admin}{path}"), None).await,
            200
        );
    }
    assert_eq!(
        status_of(&sys, &format!("http://{admin}/api/catalog/products"), None).await,
        404,
        "the service's routes are not on its admin listener"
    );
}
