//! Two gateways sharing their state on a real Redis (`docs/scale-out.md`): a rate limit holds
//! across both, a Redis outage loosens it to each gateway's own buckets without failing or
//! slowing a request, and a session revoked through one gateway is refused by the other at
//! once.

use std::time::{Duration, Instant};

use base64::Engine as _;
use tessera_testkit::{Options, System};

/// The shop with two gateways sharing `redis`, `/api/limited` limited to six a minute per
/// address.
async fn two_gateways(redis: &str) -> System {
    System::start_with(Options {
        gateways: Some(2),
        shared: Some(redis.to_string()),
        extra_manifest: r#"
[[route]]
prefix = "/api/limited"
service = "catalog"
auth = "public"
rate_limit = { per_ip = "6/m" }
"#
        .into(),
        ..Options::default()
    })
    .await
}

async fn status(sys: &System, gateway: usize, path: &str) -> (u16, Duration) {
    let start = Instant::now();
    let status = sys
        .http
        .get(format!("{}{path}", sys.gateways[gateway]))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    (status, start.elapsed())
}

#[tokio::test]
async fn a_rate_limit_holds_across_gateways_and_a_redis_outage_loosens_it_without_failing() {
    let mut redis = tessera_testkit::redis::Server::start();
    let sys = two_gateways(&redis.url).await;
    let path = "/api/limited/products";
    // Six in a minute, whichever gateway they come through.
    for i in 0..6 {
        let (s, _) = status(&sys, i % 2, path).await;
        assert_ne!(s, 429, "request {i} is within the limit");
    }
    for gateway in [0, 1] {
        assert_eq!(status(&sys, gateway, path).await.0, 429, "gateway {gateway}");
    }
    // Redis goes away: each gateway limits with its own buckets meanwhile; no request fails
    // for it, and none waits on it.
    redis.kill();
    for i in 0..6 {
        let (s, took) = status(&sys, i % 2, path).await;
        assert_ne!(s, 429, "request {i}: each gateway's own bucket is full");
        assert!(s < 500, "request {i} answered {s} during the outage");
        assert!(took < Duration::from_millis(700), "request {i} took {took:?}");
    }
    sys.log_line("the outage logged", |l| l.contains("redis unavailable")).await;
    // Each gateway's own limit still holds meanwhile (six each, after the three each above).
    let mut refused = 0;
    for i in 0..8 {
        if status(&sys, i % 2, path).await.0 == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 2, "local limits hold: {refused} refused");
    // Back (empty): once the gateways try it again, the count is shared again: six pass
    // across both gateways, then 429 from either. (A request that finds the connection still
    // broken is counted locally and the round is tried again.)
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut conn = redis_client(&redis.url).await;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let mut passed = 0;
        for i in 0..8 {
            if status(&sys, i % 2, path).await.0 != 429 {
                passed += 1;
            }
        }
        if passed == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "the shared limit never came back: {passed} passed");
    }
    sys.log_line("the recovery logged", |l| l.contains("redis reachable again"))
        .await;
}

async fn redis_client(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The session id an access token carries (its `sid` claim).
fn session_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sid"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_session_revoked_through_one_gateway_is_refused_by_the_other_at_once() {
    let redis = tessera_testkit::redis::Server::start();
    let sys = two_gateways(&redis.url).await;
    let me = |gateway: usize, token: String| {
        let sys = &sys;
        async move {
            sys.http
                .get(format!("{}/api/auth/me", sys.gateways[gateway]))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // What gateway 0 revokes, it tells every gateway through Redis.
    let mut conn = redis_client(&redis.url).await;
    let (token, _) = sys.new_user().await;
    assert_eq!(me(1, token.clone()).await, 200);
    let sid = session_of(&token);
    let start = Instant::now();
    let out = sys
        .http
        .post(format!("{}/api/auth/logout", sys.gateways[0]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 200);
    while me(1, token.clone()).await != 401 {
        assert!(start.elapsed() < Duration::from_millis(100), "gateway 1 still accepts it");
    }
    let revoked: Vec<String> = redis::cmd("KEYS")
        .arg("*:revoked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let score: Option<u64> = redis::cmd("ZSCORE")
        .arg(&revoked[0])
        .arg(&sid)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(score.is_some(), "the session is in the shared set");

    // And what arrives only through Redis (another gateway's, say) is refused at once: a
    // revocation published there, for a session neither gateway has seen revoked.
    let (token, _) = sys.new_user().await;
    assert_eq!(me(0, token.clone()).await, 200);
    assert_eq!(me(1, token.clone()).await, 200);
    let prefix = revoked[0].trim_end_matches(":revoked").to_string();
    let shared = tessera_shared::Shared::new(
        tessera_shared::RedisSettings::parse(&format!("{}?prefix={prefix}", redis.url)).unwrap(),
    )
    .unwrap();
    let start = Instant::now();
    assert!(
        shared
            .revoke(&tessera_shared::Revocation {
                sid: session_of(&token),
                until: tessera::unix_now() + 600,
            })
            .await
    );
    for gateway in [0, 1] {
        while me(gateway, token.clone()).await != 401 {
            assert!(
                start.elapsed() < Duration::from_millis(100),
                "gateway {gateway} still accepts it"
            );
        }
    }
}
