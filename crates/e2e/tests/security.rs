//! The internal plane as an attacker on the same host sees it: a process that can reach the
//! control plane but holds no credential, or holds one service's credential and tries to act
//! as another (`docs/security.md`). Each attack once worked; each is refused now.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqwest::Method;
use serde_json::{Value, json};
use tessera_testkit::{Options, System};

/// Calls the control plane at `path` as `who` (`None`: with no credential); the status.
async fn control(
    sys: &System,
    who: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> u16 {
    let mut req = sys.http.request(method, format!("{}{path}", sys.control));
    if let Some(who) = who {
        req = req.header("authorization", sys.credential(who).authorization());
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A server of the attacker's own that publishes a key set with the attacker's key, as the
/// token service publishes its own: its address, and a token it signed for an admin.
async fn fake_token_service() -> (String, String) {
    use base64::Engine;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "evil", "x": x}]});
    let app = Router::new().route(
        "/api/auth/.well-known/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("evil".into());
    let now = tessera::unix_now();
    let claims = json!({"iss": "tessera-auth", "aud": "tessera-api", "sub": "mallory",
                        "roles": ["admin", "user"], "iat": now, "exp": now + 600});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
    )
    .unwrap();
    (address, token)
}

fn registration(id: &str, service: &str, address: &str) -> Value {
    json!({"id": id, "service": service, "address": address, "version": "evil",
           "metadata": {}, "ttl_ms": 60_000})
}

#[tokio::test]
async fn nobody_poses_as_the_token_service_or_takes_over_an_instance() {
    let sys = System::start().await;
    let (fake, forged_token) = fake_token_service().await;
    let auth = sys.registry().await.services["auth"][0].clone();

    // No credential: nothing at all, not even a read.
    for (method, path, body) in [
        (Method::GET, "/v1/services".to_string(), None),
        (
            Method::PUT,
            "/v1/instances/auth-9".to_string(),
            Some(registration("auth-9", "auth", &fake)),
        ),
        (
            Method::PUT,
            format!("/v1/instances/{}/heartbeat", auth.id),
            None,
        ),
        (Method::DELETE, format!("/v1/instances/{}", auth.id), None),
    ] {
        assert_eq!(
            control(&sys, None, method.clone(), &path, body).await,
            401,
            "{method} {path}"
        );
    }
    // A forged credential: refused alike.
    let forged = sys
        .http
        .get(format!("{}/v1/services", sys.control))
        .header(
            "authorization",
            "Bearer service:auth.c1.bm90IHRoZSByaWdodCBNQUMgYXQgYWxsLCBub3BlIQ",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);

    // One service's credential (the catalog's, say it is compromised) does not make it another.
    let catalog = Some("service:catalog");
    let take_over = format!("/v1/instances/{}", auth.id);
    for (method, path, body, status) in [
        (
            Method::PUT,
            "/v1/instances/auth-9".to_string(),
            Some(registration("auth-9", "auth", &fake)),
            403,
        ),
        (
            Method::PUT,
            take_over.clone(),
            Some(registration(&auth.id, "auth", &fake)),
            403,
        ),
        (
            Method::PUT,
            take_over.clone(),
            Some(registration(&auth.id, "catalog", &fake)),
            409,
        ),
        (Method::PUT, format!("{take_over}/heartbeat"), None, 403),
        (Method::DELETE, take_over.clone(), None, 403),
    ] {
        assert_eq!(
            control(&sys, catalog, method.clone(), &path, body).await,
            status,
            "{method} {path}"
        );
    }
    // The gateway reads the registry, and that is all.
    assert_eq!(
        control(&sys, Some("gateway"), Method::DELETE, &take_over, None).await,
        403
    );

    // The token service is where it was, alone, and the attacker's key is trusted nowhere.
    let now = sys.registry().await;
    assert_eq!(now.services["auth"], [auth]);
    assert_eq!(sys.get("/api/auth/me", Some(&forged_token)).await.0, 401);
    let (status, _) = sys
        .call(
            Method::POST,
            "/api/auth/keys/rotate",
            Some(&forged_token),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let admin = sys.admin().await;
    assert_eq!(sys.get("/api/auth/me", Some(&admin)).await.0, 200);
}

#[tokio::test]
async fn nobody_forges_reads_or_steals_events() {
    let sys = System::start_with(Options {
        checkout: true,
        ..Options::default()
    })
    .await;
    let cancel = json!({"events": [{
        "specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "/shop/order",
        "type": "shop.payment.cancel", "subject": "some-order",
        "data": {"orderId": "some-order", "userId": "u", "total": 1, "currency": "USD"}}]});
    let fetch = |group: &str| json!({"group": group, "consumer": "thief", "max": 10, "waitMs": 0});

    // No credential: no publish, no fetch, no reading the log.
    let post = Method::POST;
    for (method, path, body) in [
        (
            post.clone(),
            "/v1/topics/payment.commands/events",
            Some(cancel.clone()),
        ),
        (
            post.clone(),
            "/v1/topics/payment.commands/fetch",
            Some(fetch("payment")),
        ),
        (Method::GET, "/v1/topics", None),
        (
            Method::GET,
            "/v1/topics/order.events/events?partition=0",
            None,
        ),
        (Method::GET, "/v1/deadletters/payment", None),
        (post.clone(), "/v1/deadletters/payment/replay", None),
    ] {
        assert_eq!(
            control(&sys, None, method.clone(), path, body).await,
            401,
            "{method} {path}"
        );
    }

    // A service publishes only what the manifest says it produces, and reads only what it
    // consumes, in its own groups.
    for (who, method, path, body, status) in [
        // The catalog produces nothing: no forged payment cancel, no forged confirmation.
        (
            "service:catalog",
            post.clone(),
            "/v1/topics/payment.commands/events",
            Some(cancel.clone()),
            403,
        ),
        (
            "service:catalog",
            post.clone(),
            "/v1/topics/order.events/events",
            Some(cancel.clone()),
            403,
        ),
        // Payment replies to sagas; it does not command itself.
        (
            "service:payment",
            post.clone(),
            "/v1/topics/payment.commands/events",
            Some(cancel.clone()),
            403,
        ),
        // Nobody joins another service's group, or reads a topic it does not consume.
        (
            "service:catalog",
            post.clone(),
            "/v1/topics/payment.commands/fetch",
            Some(fetch("payment")),
            403,
        ),
        (
            "service:catalog",
            post.clone(),
            "/v1/topics/order.events/fetch",
            Some(fetch("catalog")),
            403,
        ),
        (
            "service:notification",
            post.clone(),
            "/v1/topics/order.events/fetch",
            Some(fetch("payment")),
            403,
        ),
        (
            "service:notification",
            post.clone(),
            "/v1/topics/payment.commands/fetch",
            Some(fetch("notification")),
            403,
        ),
        // Reading the log as a whole is for operators; replaying, for admins.
        ("service:order", Method::GET, "/v1/topics", None, 403),
        (
            "service:order",
            Method::GET,
            "/v1/topics/order.events/events?partition=0",
            None,
            403,
        ),
        (
            "service:order",
            Method::GET,
            "/v1/deadletters/order",
            None,
            403,
        ),
        (
            "supervisor",
            post.clone(),
            "/v1/deadletters/order/replay",
            None,
            403,
        ),
        ("admin", Method::GET, "/v1/topics", None, 200),
    ] {
        assert_eq!(
            control(&sys, Some(who), method.clone(), path, body).await,
            status,
            "{who} {method} {path}"
        );
    }

    // And the system works as ever: a checkout goes through on the credentials it was given.
    let (token, _) = sys.new_user().await;
    let (status, order) = sys
        .post(
            "/api/orders",
            Some(&token),
            json!({"items": [{"productId": "0190f000-0000-7000-8000-000000000001", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, 202, "{order}");
    let id = order["data"]["orderId"].as_str().unwrap().to_string();
    sys.wait_until(
        Duration::from_secs(20),
        "the order to be confirmed",
        || async {
            let (_, o) = sys.get(&format!("/api/orders/{id}"), Some(&token)).await;
            o["data"]["status"] == "CONFIRMED"
        },
    )
    .await;
}
