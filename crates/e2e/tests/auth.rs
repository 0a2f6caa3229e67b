//! Accounts and tokens, end to end through the gateway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tessera_testkit::System;

#[tokio::test]
async fn signup_login_me() {
    let sys = System::start().await;
    let (status, body) = sys
        .post(
            "/api/auth/signup",
            None,
            json!({"email": "Ann@Example.com", "password": "password123", "name": "Ann"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["email"], "ann@example.com");
    assert!(body["traceId"].as_str().unwrap().len() == 32);

    let (access, _) = sys.login("ann@example.com", "password123").await;
    let (status, me) = sys.get("/api/auth/me", Some(&access)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["name"], "Ann");
    assert_eq!(me["data"]["roles"], json!(["user"]));

    // Duplicate email, in any case.
    let (status, body) = sys
        .post(
            "/api/auth/signup",
            None,
            json!({"email": "ANN@example.com", "password": "password123", "name": "Ann 2"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "email_taken");

    // Wrong password, unknown user: the same answer.
    let (s1, b1) = sys
        .post(
            "/api/auth/login",
            None,
            json!({"email": "ann@example.com", "password": "wrong-pass"}),
        )
        .await;
    let (s2, b2) = sys
        .post(
            "/api/auth/login",
            None,
            json!({"email": "nobody@example.com", "password": "wrong-pass"}),
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(b1["error"], b2["error"]);

    // /me without a token.
    let (status, body) = sys.get("/api/auth/me", None).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn bad_signups_get_clear_errors_and_write_nothing() {
    let sys = System::start().await;
    let cases: Vec<(&str, u16, &str)> = vec![
        (
            r#"{"email": "a@b.co", "password": "password123""#,
            400,
            "malformed_json",
        ),
        (
            r#"{"email": "a@b.co", "password": "password123"}"#,
            400,
            "invalid_body",
        ),
        (
            r#"{"email": "a@b.co", "password": 12345678, "name": "A"}"#,
            400,
            "invalid_body",
        ),
        (
            r#"{"email": "a@b.co", "password": "password123", "name": "A", "admin": true}"#,
            400,
            "invalid_body",
        ),
        (
            r#"{"email": "not-an-email", "password": "password123", "name": "A"}"#,
            400,
            "invalid_email",
        ),
        (
            r#"{"email": "a@b.co", "password": "short", "name": "A"}"#,
            400,
            "weak_password",
        ),
        (
            r#"{"email": "a@b.co", "password": "password123", "name": ""}"#,
            400,
            "invalid_name",
        ),
        (r#"[]"#, 400, "invalid_body"),
    ];
    for (body, want_status, want_code) in cases {
        let resp = sys
            .http
            .post(sys.url("/api/auth/signup"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let env: Value = resp.json().await.unwrap();
        assert_eq!(status, want_status, "{body} → {env}");
        assert_eq!(env["success"], false);
        assert_eq!(env["error"]["code"], want_code, "{body} → {env}");
    }
    // Not JSON at all.
    let resp = sys
        .http
        .post(sys.url("/api/auth/signup"))
        .body("email=a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    // None of those created the account.
    let (status, _) = sys
        .post(
            "/api/auth/login",
            None,
            json!({"email": "a@b.co", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let sys = System::start().await;
    let (access0, refresh0) = sys.new_user().await;

    let (status, body) = sys
        .post("/api/auth/refresh", None, json!({"refreshToken": refresh0}))
        .await;
    assert_eq!(status, 200, "{body}");
    let refresh1 = body["data"]["refreshToken"].as_str().unwrap().to_string();
    let access1 = body["data"]["accessToken"].as_str().unwrap().to_string();
    assert_ne!(refresh0, refresh1);
    assert_eq!(sys.get("/api/auth/me", Some(&access1)).await.0, 200);

    let (status, body) = sys
        .post("/api/auth/refresh", None, json!({"refreshToken": refresh1}))
        .await;
    assert_eq!(status, 200, "{body}");
    let refresh2 = body["data"]["refreshToken"].as_str().unwrap().to_string();

    // Someone replays the first token: the whole session ends.
    let (status, body) = sys
        .post("/api/auth/refresh", None, json!({"refreshToken": refresh0}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    let (status, body) = sys
        .post("/api/auth/refresh", None, json!({"refreshToken": refresh2}))
        .await;
    assert_eq!(
        status, 401,
        "the newest token of a revoked family is dead too: {body}"
    );
    for token in [&access0, &access1] {
        let (status, body) = sys.get("/api/auth/me", Some(token)).await;
        assert_eq!(
            status, 401,
            "access tokens of the session are rejected: {body}"
        );
    }

    let (status, _) = sys
        .post(
            "/api/auth/refresh",
            None,
            json!({"refreshToken": "made-up"}),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn logout_rejects_the_token_until_it_expires() {
    let sys = System::start().await;
    let (access, refresh) = sys.new_user().await;
    let (other, _) = sys.new_user().await;
    assert_eq!(sys.get("/api/auth/me", Some(&access)).await.0, 200);
    let (status, body) = sys.post("/api/auth/logout", Some(&access), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sys.get("/api/auth/me", Some(&access)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    // On public routes too: a revoked token is refused, not downgraded to anonymous.
    assert_eq!(sys.get("/api/catalog/products", Some(&access)).await.0, 401);
    let (status, _) = sys
        .post("/api/auth/refresh", None, json!({"refreshToken": refresh}))
        .await;
    assert_eq!(status, 401);
    // Other sessions are untouched.
    assert_eq!(sys.get("/api/auth/me", Some(&other)).await.0, 200);
}

/// Splits a JWT into (header, claims, signature).
fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let c = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, c, it.next().unwrap().to_string())
}

fn join(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    )
}

fn sign_with_new_key(header: &Value, claims: &Value) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let der = key.to_pkcs8_der().unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = header["kid"].as_str().map(str::to_string);
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn the_gateway_refuses_bad_access_tokens() {
    let sys = System::start().await;
    let (access, _) = sys.new_user().await;
    assert_eq!(sys.get("/api/auth/me", Some(&access)).await.0, 200);
    let (header, claims, sig) = parts(&access);

    let mut admin_claims = claims.clone();
    admin_claims["roles"] = json!(["admin", "user"]);
    let tampered = join(&header, &admin_claims, &sig);

    let mut old = claims.clone();
    old["exp"] = json!(tessera::unix_now() - 120);
    old["iat"] = json!(tessera::unix_now() - 1000);
    let expired = sign_with_new_key(&header, &old); // wrong key as well as expired
    let wrong_key = sign_with_new_key(&header, &claims);
    let mut unknown_kid_header = header.clone();
    unknown_kid_header["kid"] = json!("no-such-key");
    let unknown_kid = sign_with_new_key(&unknown_kid_header, &claims);
    let none = join(
        &json!({"alg": "none", "typ": "JWT", "kid": header["kid"]}),
        &admin_claims,
        "",
    );
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = header["kid"].as_str().map(str::to_string);
        jsonwebtoken::encode(
            &h,
            &admin_claims,
            &jsonwebtoken::EncodingKey::from_secret(b"guess"),
        )
        .unwrap()
    };
    let mut foreign = claims.clone();
    foreign["aud"] = json!("some-other-api");
    let wrong_audience = join(&header, &foreign, &sig);

    for (name, token) in [
        ("tampered", tampered.as_str()),
        ("expired", &expired),
        ("wrong key", &wrong_key),
        ("unknown kid", &unknown_kid),
        ("alg none", &none),
        ("HS256 confusion", &hs256),
        ("wrong audience", &wrong_audience),
        ("garbage", "abc.def.ghi"),
        ("empty", ""),
    ] {
        let (status, body) = sys.get("/api/auth/me", Some(token)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["success"], false, "{name}");
        let (status, _) = sys.get("/api/catalog/products", Some(token)).await;
        assert_eq!(status, 401, "{name} on a public route");
    }
    let resp = sys
        .http
        .get(sys.url("/api/auth/me"))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The real token still works after all that.
    assert_eq!(sys.get("/api/auth/me", Some(&access)).await.0, 200);
}

#[tokio::test]
async fn signing_key_rotation_keeps_old_tokens_and_accepts_new_ones() {
    let sys = System::start().await;
    let (user, _) = sys.new_user().await;
    assert_eq!(
        sys.post("/api/auth/keys/rotate", Some(&user), json!({}))
            .await
            .0,
        403
    );
    let admin = sys.admin().await;
    let (status, body) = sys
        .post("/api/auth/keys/rotate", Some(&admin), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let new_kid = body["data"]["kid"].as_str().unwrap().to_string();

    let (fresh, _) = sys.new_user().await;
    assert_eq!(parts(&fresh).0["kid"], new_kid.as_str());
    assert_ne!(parts(&user).0["kid"], new_kid.as_str());
    assert_eq!(
        sys.get("/api/auth/me", Some(&fresh)).await.0,
        200,
        "new key picked up from the JWKS"
    );
    assert_eq!(
        sys.get("/api/auth/me", Some(&user)).await.0,
        200,
        "old key still trusted"
    );
    let (status, jwks) = sys.get("/api/auth/.well-known/jwks.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["data"]["keys"].as_array().unwrap().len(), 2);
}
