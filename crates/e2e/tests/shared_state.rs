//! Two gateways sharing their state on a real Redis (`docs/scale-out.md`): a rate limit holds
//! across both, a Redis outage loosens it to each gateway's own buckets without failing or
//! slowing a request, and a session revoked through one gateway is refused by the other at
//! once.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
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
        assert_eq!(
            status(&sys, gateway, path).await.0,
            429,
            "gateway {gateway}"
        );
    }
    // Redis goes away: each gateway limits with its own buckets meanwhile; no request fails
    // for it, and none waits on it.
    redis.kill();
    for i in 0..6 {
        let (s, took) = status(&sys, i % 2, path).await;
        assert_ne!(s, 429, "request {i}: each gateway's own bucket is full");
        assert!(s < 500, "request {i} answered {s} during the outage");
        assert!(
            took < Duration::from_millis(700),
            "request {i} took {took:?}"
        );
    }
    sys.log_line("the outage logged", |l| l.contains("redis unavailable"))
        .await;
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
        assert!(
            Instant::now() < deadline,
            "the shared limit never came back: {passed} passed"
        );
    }
    sys.log_line("the recovery logged", |l| {
        l.contains("redis reachable again")
    })
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
    // (Through Redis, and the token service's feed too: a second at most either way.)
    while me(1, token.clone()).await != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "gateway 1 still accepts it"
        );
    }
    // (The gateway tells Redis beside its answer: gateway 1 may have heard it first from the
    // token service's feed.)
    let revoked = loop {
        let revoked: Vec<String> = redis::cmd("KEYS")
            .arg("*:revoked")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !revoked.is_empty() || start.elapsed() > Duration::from_secs(3) {
            break revoked;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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
    // (Connected first: the clock starts once the revocation is on Redis.)
    let warm_up = tessera_shared::Revocation {
        sid: "warm-up".into(),
        until: tessera::unix_now() + 60,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shared.revoke(&warm_up).await {
        assert!(Instant::now() < deadline, "redis answers");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let revocation = tessera_shared::Revocation {
        sid: session_of(&token),
        until: tessera::unix_now() + 600,
    };
    assert!(shared.revoke(&revocation).await);
    let start = Instant::now();
    for gateway in [0, 1] {
        while me(gateway, token.clone()).await != 401 {
            assert!(
                start.elapsed() < Duration::from_millis(100),
                "gateway {gateway} still accepts it"
            );
        }
    }
}

/// Lists and lookups served through the catalog's cache: on Redis when the system has one
/// (shared by both replicas), else each replica's memory. Either way a changed price is served
/// from every replica, through every gateway, once its event is handled, and never the old one
/// again.
async fn a_changed_price_is_never_served_stale(sys: &System, on_redis: Option<&str>) {
    let admin = sys.admin().await;
    let (status, page) = sys.get("/api/catalog/products?limit=5", None).await;
    assert_eq!(status, 200, "{page}");
    let product = page["data"]["items"][0].clone();
    let id = product["id"].as_str().unwrap().to_string();
    let old = product["price"].as_i64().unwrap();
    // Warm both replicas' way to the list and the lookup.
    let lookup = format!("/api/catalog/products/lookup?ids={id}");
    for _ in 0..6 {
        assert_eq!(sys.get("/api/catalog/products?limit=5", None).await.0, 200);
        assert_eq!(sys.get(&lookup, None).await.0, 200);
    }
    // Served from the cache: its hits, on the replicas' own metrics.
    let registry = sys.registry().await;
    let mut hits = 0.0;
    for replica in ["catalog-1", "catalog-2"] {
        let admin = tessera_testkit::admin_of(&registry, replica).unwrap();
        let metrics = sys.metrics_of(&admin).await;
        hits += metrics
            .lines()
            .filter(|l| l.starts_with("tessera_cache_hits_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(hits >= 6.0, "{hits} hits");
    if let Some(url) = on_redis {
        let mut conn = redis_client(url).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*:cache:catalog.products:v:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(keys.iter().any(|k| k.contains(":v:lists:")), "{keys:?}");
        assert!(
            keys.iter()
                .any(|k| k.contains(&format!(":v:product:{id}:"))),
            "{keys:?}"
        );
    }

    let changed = json!({"name": product["name"], "description": product["description"],
        "category": product["category"], "price": old + 1, "currency": product["currency"]});
    let (status, body) = sys
        .call(
            reqwest::Method::PUT,
            &format!("/api/catalog/products/{id}"),
            Some(&admin),
            Some(changed),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let price_in = |page: &serde_json::Value| {
        page["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id.as_str())
            .map(|p| p["price"].as_i64().unwrap())
    };
    // Handled within moments; from then on, never the old price, wherever it is read.
    let start = Instant::now();
    loop {
        let (_, list) = sys.get("/api/catalog/products?limit=5", None).await;
        let (_, looked) = sys.get(&lookup, None).await;
        if price_in(&list) == Some(old + 1) && price_in(&looked) == Some(old + 1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the change never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both replicas have handled it once one read shows it, when the cache is shared; each
    // replica handles it itself otherwise: wait for that to settle, then read many times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..30 {
        let (_, list) = sys.get("/api/catalog/products?limit=5", None).await;
        let (_, looked) = sys.get(&lookup, None).await;
        assert_eq!(price_in(&list), Some(old + 1), "read {i}: {list}");
        assert_eq!(price_in(&looked), Some(old + 1), "read {i}: {looked}");
    }
}

#[tokio::test]
async fn the_catalogs_cache_on_redis_is_shared_and_never_stale() {
    let redis = tessera_testkit::redis::Server::start();
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        gateways: Some(2),
        shared: Some(redis.url.clone()),
        ..Options::default()
    })
    .await;
    a_changed_price_is_never_served_stale(&sys, Some(&redis.url)).await;
}

#[tokio::test]
async fn the_catalogs_cache_in_each_replicas_memory_is_never_stale() {
    let sys = System::start_with(Options {
        catalog_replicas: 2,
        ..Options::default()
    })
    .await;
    a_changed_price_is_never_served_stale(&sys, None).await;
}

/// Each process reaches only its own keys on Redis, as the user the control plane made for it
/// (`docs/scale-out.md`): the catalog its caches, the gateways the limits and revocations;
/// neither runs an administrative command, and a wrong password is refused.
#[tokio::test]
async fn each_process_reaches_only_its_own_keys_on_redis() {
    let redis = tessera_testkit::redis::Server::start();
    let sys = two_gateways(&redis.url).await;
    // `tessera env <principal>`'s Redis URL: (a connection as that user, the key prefix).
    let connect = async |principal: &str| {
        let out = std::process::Command::new(tessera_testkit::bin_dir().join("tessera"))
            .arg("--manifest")
            .arg(sys.dir.join("tessera.toml"))
            .args(["env", principal])
            .output()
            .unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("TESSERA_SHARED_URL="))
            .unwrap_or_else(|| panic!("no shared URL for {principal}: {env}"))
            .trim_matches('\'');
        let (url, prefix) = url.split_once("?prefix=").unwrap();
        assert!(!url.starts_with("redis://:"), "{principal} has a user");
        // (The control plane makes the users as soon as it is up: wait for it.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            let client = redis::Client::open(url).unwrap();
            match client.get_multiplexed_async_connection().await {
                Ok(conn) => break conn,
                Err(e) => assert!(Instant::now() < deadline, "{principal}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let wrong = redis::Client::open(format!(
            "{}x@{}",
            &url[..url.rfind('@').unwrap()],
            &url[url.rfind('@').unwrap() + 1..]
        ))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
        assert!(wrong.is_err(), "{principal}: a wrong password is refused");
        (conn, prefix.to_string())
    };
    let allowed =
        async |conn: &mut redis::aio::MultiplexedConnection, cmd: &mut redis::Cmd| match cmd
            .query_async::<redis::Value>(conn)
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some("NOPERM") => false,
            Err(e) => panic!("{e}"),
        };
    let set = |key: String| redis::cmd("SET").arg(key).arg("1").clone();

    let (mut catalog, prefix) = connect("service:catalog").await;
    let mine = format!("{prefix}:cache:catalog.products:gen:x");
    assert!(
        allowed(&mut catalog, &mut set(mine)).await,
        "its own caches"
    );
    for (what, mut cmd) in [
        ("the gateways' limits", set(format!("{prefix}:rl:1.2.3.4"))),
        ("the revocations", set(format!("{prefix}:revoked"))),
        (
            "another service's cache",
            set(format!("{prefix}:cache:order.x:gen:1")),
        ),
        (
            "another system's keys",
            set("other:cache:catalog.products:gen:1".into()),
        ),
        (
            "the revocations' channel",
            redis::cmd("PUBLISH")
                .arg(format!("{prefix}:revocations"))
                .arg("0 forged")
                .clone(),
        ),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
        ("SCAN", redis::cmd("SCAN").arg(0).clone()),
        ("DBSIZE", redis::cmd("DBSIZE").clone()),
        ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
        ("ACL", redis::cmd("ACL").arg("LIST").clone()),
        ("CONFIG", redis::cmd("CONFIG").arg("GET").arg("*").clone()),
    ] {
        assert!(
            !allowed(&mut catalog, &mut cmd).await,
            "the catalog reached {what}"
        );
    }

    let (mut gateway, _) = connect("gateway").await;
    assert!(allowed(&mut gateway, &mut set(format!("{prefix}:rl:1.2.3.4"))).await);
    assert!(
        allowed(
            &mut gateway,
            redis::cmd("PUBLISH")
                .arg(format!("{prefix}:revocations"))
                .arg("0 x")
        )
        .await
    );
    assert!(
        !allowed(
            &mut gateway,
            &mut set(format!("{prefix}:cache:catalog.products:gen:x"))
        )
        .await,
        "a gateway poisons no cache"
    );
}
