//! Services answer nothing but health to a caller that did not come through the gateway or
//! another service: calls straight to a service's port, bypassing the gateway. (Metrics and
//! status are on the admin listener, `admin.rs`.)

use tessera::passport::{Passport, PassportKeys};
use tessera::{TraceContext, unix_now};
use tessera_testkit::{System, admin_of};

async fn catalog_address(sys: &System) -> String {
    sys.registry().await.services["catalog"][0].address.clone()
}

#[tokio::test]
async fn direct_calls_need_a_valid_passport() {
    let sys = System::start().await;
    let addr = catalog_address(&sys).await;
    let url = format!("http://{addr}/api/catalog/products");
    let keys = PassportKeys::from_spec(&sys.passport_keys(), "shop-test").unwrap();
    let trace = TraceContext::new_root();
    let valid = keys.mint("test", "user-1", &["user".into()], None, &trace);

    let mut expired: Passport = keys.verify(&valid).unwrap();
    expired.iat = unix_now() - 600;
    expired.exp = unix_now() - 300;
    let expired = keys.sign(&expired);
    let other_system = PassportKeys::from_spec(&sys.passport_keys(), "another-system")
        .unwrap()
        .mint("test", "user-1", &[], None, &trace);
    let forged = PassportKeys::from_spec(&PassportKeys::generate_spec(), "shop-test")
        .unwrap()
        .mint("test", "admin", &["admin".into()], None, &trace);
    let mut tampered = valid.clone();
    tampered.pop();
    tampered.push(if valid.ends_with('A') { 'B' } else { 'A' });

    for (name, passport) in [
        ("missing", None),
        ("expired", Some(expired.as_str())),
        ("wrong audience", Some(&other_system)),
        ("forged", Some(&forged)),
        ("tampered", Some(&tampered)),
        ("garbage", Some("not-a-jwt")),
    ] {
        let mut req = sys.http.get(&url);
        if let Some(p) = passport {
            req = req.header("x-passport", p);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{name}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated", "{name}: {body}");
    }
    let resp = sys
        .http
        .get(&url)
        .header("x-passport", &valid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "a valid passport is accepted");

    for open in ["/health/live", "/health/ready"] {
        let resp = sys
            .http
            .get(format!("http://{addr}{open}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{open}");
    }
    for closed in ["/metrics", "/status/resilience"] {
        let resp = sys
            .http
            .get(format!("http://{addr}{closed}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{closed}");
    }
    let admin = admin_of(&sys.registry().await, "catalog-1").expect("an admin address");
    let metrics = sys.metrics_of(&admin).await;
    assert!(metrics.contains("http_server_requests_total"), "{metrics}");
    assert!(
        metrics.contains(r#"route="/api/catalog/products""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_server_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_supplied_passport_is_replaced_by_the_gateway() {
    let sys = System::start().await;
    // Even a passport signed with the system's real key is not honoured from outside.
    let keys = PassportKeys::from_spec(&sys.passport_keys(), "shop-test").unwrap();
    let admin_passport = keys.mint(
        "test",
        "root",
        &["admin".into()],
        None,
        &TraceContext::new_root(),
    );
    let resp = sys
        .http
        .post(sys.url("/api/catalog/products"))
        .header("x-passport", admin_passport)
        .json(&serde_json::json!({"name": "x", "category": "books", "price": 1, "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        401,
        "the caller is anonymous, whatever passport it sent"
    );
}

#[tokio::test]
async fn work_past_the_callers_deadline_is_not_started() {
    let sys = System::start().await;
    let addr = catalog_address(&sys).await;
    let keys = PassportKeys::from_spec(&sys.passport_keys(), "shop-test").unwrap();
    let passport = keys.mint("test", "user-1", &[], None, &TraceContext::new_root());
    let product = "0190f000-0000-7000-8000-000000000009";
    let url = format!("http://{addr}/api/catalog/products/{product}");
    let resp = sys
        .http
        .get(&url)
        .header("x-passport", &passport)
        .header("x-tessera-deadline-ms", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "deadline_exceeded");
    // The view was not counted: the handler never ran.
    let resp = sys
        .http
        .get(&url)
        .header("x-passport", &passport)
        .header("x-tessera-deadline-ms", "5000")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["viewCount"], 1, "{body}");
}
