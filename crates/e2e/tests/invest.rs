//! Tessera Invest, the second system (`examples/invest/`), black-box on its real processes:
//! a member's trades keep cash and holdings exact under 100 concurrent orders; a news item
//! reaches every holder of its sector exactly once and nobody else, across a `kill -9` of
//! the alerts service and of the signals service in the middle of the fan-out; the signals service, in Python, refuses
//! every request without a valid passport, and each signal change it publishes reaches the
//! members following the ticker once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tessera_testkit::{Options, System, pid_of, signal};

async fn invest(env: Vec<(&'static str, &'static str, String)>) -> System {
    System::start_with(Options {
        invest: true,
        checkout_env: env,
        ..Options::default()
    })
    .await
}

/// `n` trades of `side` and `quantity` of `ticker` at once, as `token`'s member through the
/// gateway: how many were made, and the codes of the refused ones.
async fn trades_at_once(
    sys: &System,
    token: &str,
    side: &str,
    ticker: &str,
    quantity: i64,
    n: usize,
) -> (usize, Vec<String>) {
    let body = json!({ "ticker": ticker, "side": side, "quantity": quantity });
    let answers: Vec<(u16, Value)> = futures_util::future::join_all(
        (0..n).map(|_| sys.post("/api/portfolio/trades", Some(token), body.clone())),
    )
    .await;
    let mut made = 0;
    let mut refused = Vec::new();
    for (status, body) in answers {
        match status {
            201 => made += 1,
            409 => refused.push(body["error"]["code"].as_str().unwrap_or("?").to_string()),
            other => panic!("a trade answered {other}: {body}"),
        }
    }
    (made, refused)
}

/// How many shares of `ticker` a portfolio holds.
fn quantity_of(portfolio: &Value, ticker: &str) -> i64 {
    portfolio["holdings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["ticker"] == ticker)
        .map_or(0, |h| h["quantity"].as_i64().unwrap())
}

#[tokio::test]
async fn a_members_cash_and_holdings_stay_exact_under_100_concurrent_orders() {
    let opening = 1_000_000i64; // 10,000.00
    let sys = invest(vec![(
        "portfolio",
        "PORTFOLIO_OPENING_CASH",
        opening.to_string(),
    )])
    .await;
    let (token, _) = sys.new_user().await;
    let (status, quote) = sys.get("/api/market/tickers/TEC01", None).await;
    assert_eq!(status, 200, "{quote}");
    let price = quote["data"]["price"].as_i64().unwrap();
    assert_eq!(quote["data"]["sector"], "Technology");

    // Buys of a size that cash affords about 40 of: exactly that many are made, at once.
    let per_buy = (opening / (40 * price)).max(1);
    let affordable = (opening / (per_buy * price)) as usize;
    assert!(affordable < 100, "the test needs cash to run out");
    let (bought, refused) = trades_at_once(&sys, &token, "buy", "TEC01", per_buy, 100).await;
    assert_eq!(bought, affordable);
    assert!(
        refused.iter().all(|c| c == "insufficient_cash"),
        "{refused:?}"
    );
    let held = bought as i64 * per_buy;
    let cash = opening - held * price;
    let (_, report) = sys.get("/api/portfolio/report", Some(&token)).await;
    let allocation = report["data"]["allocation"].as_array().unwrap().clone();
    let tech = allocation.iter().find(|s| s["sector"] == "Technology");
    assert_eq!(
        tech.map(|s| &s["value"]),
        Some(&json!(held * price)),
        "{report}"
    );

    // Sells of a size the holding affords fewer than 100 of.
    // (Leaving some: one more sell comes below.)
    let per_sell = (held / 60..).find(|n| *n > 0 && held % n != 0).unwrap();
    let sellable = (held / per_sell) as usize;
    assert!(sellable < 100);
    let (sold, refused) = trades_at_once(&sys, &token, "sell", "TEC01", per_sell, 100).await;
    assert_eq!(sold, sellable);
    assert!(
        refused.iter().all(|c| c == "insufficient_holding"),
        "{refused:?}"
    );
    let held = held - sold as i64 * per_sell;
    let cash = cash + sold as i64 * per_sell * price;

    let (status, portfolio) = sys.get("/api/portfolio", Some(&token)).await;
    assert_eq!(status, 200, "{portfolio}");
    let p = &portfolio["data"];
    assert_eq!(p["cash"], cash, "{p}");
    assert_eq!(quantity_of(p, "TEC01"), held, "{p}");
    assert!(p["cash"].as_i64().unwrap() >= 0);
    let (_, trades) = sys
        .get("/api/portfolio/trades?limit=1000", Some(&token))
        .await;
    assert_eq!(trades["data"].as_array().unwrap().len(), bought + sold);

    // The market did not move (paused): nothing gained or lost; the report says where it is.
    let (status, report) = sys.get("/api/portfolio/report", Some(&token)).await;
    assert_eq!(status, 200, "{report}");
    let r = &report["data"];
    assert_eq!(
        (r["realized"].as_i64(), r["unrealized"].as_i64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["total"], opening);

    // One Idempotency-Key, one trade, however often it is sent.
    let key = uuid::Uuid::new_v4().to_string();
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let resp = sys
            .http
            .post(sys.url("/api/portfolio/trades"))
            .bearer_auth(&token)
            .header("idempotency-key", &key)
            .json(&json!({ "ticker": "TEC01", "side": "sell", "quantity": 1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        ids.insert(body["data"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    let (_, portfolio) = sys.get("/api/portfolio", Some(&token)).await;
    assert_eq!(quantity_of(&portfolio["data"], "TEC01"), held - 1);

    // Bad input is a clear 400, never a 500.
    for (body, code) in [
        (
            json!({ "ticker": "NOPE1", "side": "buy", "quantity": 1 }),
            "unknown_ticker",
        ),
        (
            json!({ "ticker": "TEC01", "side": "buy", "quantity": 0 }),
            "invalid_quantity",
        ),
        (
            json!({ "ticker": "TEC01/../x", "side": "buy", "quantity": 1 }),
            "invalid_ticker",
        ),
    ] {
        let (status, answer) = sys.post("/api/portfolio/trades", Some(&token), body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{answer}"
        );
    }
    let (status, _) = sys
        .post(
            "/api/portfolio/trades",
            Some(&token),
            json!({ "side": "hold" }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = sys.get("/api/portfolio", None).await;
    assert_eq!(status, 401);
}

/// The members a cause reached, as the alerts service's operators' view tells.
async fn reached(sys: &System, admin: &str, id: &str) -> (u16, Value) {
    let (status, body) = sys
        .get(&format!("/api/alerts/sources/news/{id}"), Some(admin))
        .await;
    (status, body["data"].clone())
}

/// How many members the fan-out test has, and how many of them hold the sector.
const MEMBERS: usize = 10_000;
const HOLDERS: usize = 3_000;
/// Members who held the sector and sold it all: not holders any more.
const FORMER: usize = 100;

#[tokio::test]
async fn a_news_item_reaches_every_holder_of_its_sector_once_across_a_kill_of_alerts() {
    let sys = Arc::new(invest(Vec::new()).await);
    let portfolio = sys.instance_url("portfolio").await;
    // The members trade directly with the portfolio service, each with a passport of their
    // own (signing 10,000 users up would test password hashing, not this).
    let member = |i: usize| format!("member-{i:05}");
    let trade = |i: usize, ticker: &'static str, side: &'static str| {
        let sys = sys.clone();
        let url = format!("{portfolio}/api/portfolio/trades");
        async move {
            let resp = sys
                .http
                .post(&url)
                .header("x-passport", sys.user_passport(&member(i), &["user"]))
                .json(&json!({ "ticker": ticker, "side": side, "quantity": 1 }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        }
    };
    // Holders of Technology; the others hold Energy, and some of them held Technology once.
    let others = ["ENE01", "ENE02", "FIN01"];
    futures_util::stream::iter(0..MEMBERS)
        .map(|i| {
            let ticker = if i < HOLDERS {
                ["TEC01", "TEC02"][i % 2]
            } else {
                others[i % 3]
            };
            trade(i, ticker, "buy")
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    futures_util::stream::iter(HOLDERS..HOLDERS + FORMER)
        .map(|i| async move {
            trade(i, "TEC03", "buy").await;
            trade(i, "TEC03", "sell").await;
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let holders: BTreeSet<String> = (0..HOLDERS).map(member).collect();

    // alerts learns who holds what from portfolio.events.
    let admin = sys.admin().await;
    let alerts = sys.instance_url("alerts").await;
    let held = |sector: &str| {
        let sys = sys.clone();
        let url = format!("{alerts}/api/alerts/audience?sector={sector}");
        let passport = sys.user_passport("root", &["admin"]);
        async move {
            let resp = sys
                .http
                .get(&url)
                .header("x-passport", passport)
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            body["members"].as_u64().unwrap_or(0) as usize
        }
    };
    let energy: BTreeSet<String> = (HOLDERS..MEMBERS)
        .filter(|i| i % 3 != 2)
        .map(member)
        .collect();
    sys.wait_until(
        Duration::from_secs(120),
        "alerts to know every holder",
        || async { held("Technology").await == HOLDERS && held("Energy").await == energy.len() },
    )
    .await;

    // News: three for Technology, one for Energy; alerts is killed as they fan out.
    let mut news = Vec::new();
    for (sector, headline) in [
        ("Technology", "Chips rally"),
        ("Energy", "Oil slides"),
        ("Technology", "A new phone"),
        ("Technology", "A recall"),
    ] {
        let item = sys
            .publish_news(
                &admin,
                json!({ "sector": sector, "headline": headline, "sentiment": 0.5 }),
            )
            .await;
        news.push((sector, item["id"].as_str().unwrap().to_string()));
        // alerts is killed after the second, signals (Python) after the third.
        let victim = match news.len() {
            2 => "alerts-1",
            3 => "signals-1",
            _ => continue,
        };
        let catalog = sys.registry().await;
        let pid = pid_of(&catalog, victim).expect("the victim's pid");
        signal(pid, libc::SIGKILL);
    }

    // Every news item reached exactly its sector's holders, each once.
    for (sector, id) in &news {
        let expected = if *sector == "Technology" {
            &holders
        } else {
            &energy
        };
        sys.wait_until(
            Duration::from_secs(120),
            "the news to reach every holder",
            || async {
                let (status, body) = reached(&sys, &admin, id).await;
                status == 200 && body["alerts"].as_u64() == Some(expected.len() as u64)
            },
        )
        .await;
        let (_, body) = reached(&sys, &admin, id).await;
        let members: BTreeSet<String> = body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            body["alerts"].as_u64(),
            Some(members.len() as u64),
            "one alert per member"
        );
        assert_eq!(&members, expected, "{sector}: exactly its holders");
    }
    // signals took every news item once too (each moves its sector's signals), across its kill.
    sys.wait_until(
        Duration::from_secs(60),
        "signals to take the news",
        || async {
            let (status, body) = sys.get("/api/signals/news", None).await;
            let items = |sector: &str| {
                body["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["sector"] == sector)
                    .map(|s| s["items"].clone())
            };
            status == 200
                && items("Technology") == Some(json!(3))
                && items("Energy") == Some(json!(1))
        },
    )
    .await;
    let restarted = sys.registry().await;
    assert!(
        restarted.services["signals"]
            .iter()
            .any(|i| i.metadata.get("restarts").is_some_and(|r| r != "0"))
    );
    assert!(
        restarted.services["alerts"]
            .iter()
            .any(|i| i.metadata.get("restarts").is_some_and(|r| r != "0"))
    );

    // A member sees their own alerts, once each: a holder of Technology, three; a former
    // holder, none of Technology.
    let alerts = sys.instance_url("alerts").await; // where it listens since its restart
    let mine = |who: String| {
        let sys = sys.clone();
        let url = format!("{alerts}/api/alerts?limit=100");
        async move {
            let resp = sys
                .http
                .get(&url)
                .header("x-passport", sys.user_passport(&who, &["user"]))
                .send()
                .await
                .unwrap();
            let list: Vec<Value> = resp.json().await.unwrap();
            list.iter()
                .map(|a| a["source"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let tech: BTreeSet<String> = news
        .iter()
        .filter(|(s, _)| *s == "Technology")
        .map(|(_, id)| id.clone())
        .collect();
    // (On PostgreSQL the list reads the replica, which may be a moment behind.)
    sys.wait_until(
        Duration::from_secs(10),
        "the replica to show the member's alerts",
        || async { mine(member(7)).await.len() == 3 },
    )
    .await;
    let got = mine(member(7)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), tech);
    let got = mine(member(HOLDERS + 2)).await; // held Technology once, and FIN01
    assert!(got.iter().all(|s| !tech.contains(s)), "{got:?}");
}

#[test]
fn the_examples_manifest_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/invest/tessera.toml");
    let manifest = tessera_manifest::Manifest::load(&path).unwrap();
    for service in ["auth", "market", "portfolio", "alerts", "signals"] {
        assert!(manifest.services.contains_key(service), "{service}");
    }
}

/// A passport signed with `secret` under `kid`, with these claims: for the refusals a forger
/// would try.
fn forged(kid: &str, secret: &[u8], claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn the_python_service_answers_only_a_valid_passport() {
    use base64::Engine as _;
    let sys = invest(Vec::new()).await;
    let signals = sys.instance_url("signals").await;
    let catalog = sys.registry().await;
    assert_eq!(
        catalog.services["signals"][0]
            .metadata
            .get("language")
            .map(String::as_str),
        Some("python")
    );
    let get = |passport: Option<String>| {
        let mut req = sys.http.get(format!("{signals}/api/signals"));
        if let Some(p) = passport {
            req = req.header("x-passport", p);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for path in ["/health/live", "/health/ready"] {
        let resp = sys
            .http
            .get(format!("{signals}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let keys = sys.passport_keys();
    let (kid, secret) = keys.split(',').next().unwrap().split_once(':').unwrap();
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .unwrap();
    let now = tessera::unix_now() as i64;
    let claims = |aud: &str, exp: i64| {
        json!({ "iss": "tessera-gateway", "aud": aud, "sub": "ann", "roles": ["user"],
                "tid": "0af7651916cd43dd8448eb211c80319c", "jti": "x", "iat": now, "exp": exp })
    };
    let valid = forged(kid, &secret, claims("shop-test", now + 30));
    // A character in the middle of the signature changed (any there is a canonical spelling, so
    // the signature check, not the decoding, refuses it).
    let at = valid.len() - 10;
    let flipped = if &valid[at..at + 1] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &valid[..at], &valid[at + 1..]);
    for (passport, why) in [
        (None, "missing passport"),
        (Some("not.a.passport".to_string()), "malformed"),
        (
            Some(forged(kid, &[7u8; 32], claims("shop-test", now + 30))),
            "bad passport signature",
        ),
        (
            Some(forged("k-unknown", &secret, claims("shop-test", now + 30))),
            "unknown passport key",
        ),
        (
            Some(forged(kid, &secret, claims("shop-test", now - 60))),
            "passport expired",
        ),
        (
            Some(forged(kid, &secret, claims("another-system", now + 30))),
            "passport for another system",
        ),
        (Some(tampered), "bad passport signature"),
    ] {
        let (status, body) = get(passport).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthenticated")),
            "{why}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
    }
    let (status, body) = get(Some(valid)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(Some(sys.user_passport("ann", &["user"]))).await;
    assert_eq!(status, 200, "{body}");
    // Through the gateway (a public route: the gateway's anonymous passport), and bad input.
    let (status, body) = sys.get("/api/signals", None).await;
    assert_eq!(status, 200, "{body}");
    for (path, code) in [
        ("/api/signals/TEC01/similar?window=2", "invalid_window"),
        ("/api/signals/TEC01/similar?top=x", "invalid_top"),
        ("/api/signals/TEC-01", "invalid_ticker"),
        ("/api/signals?signal=maybe", "invalid_signal"),
    ] {
        let (status, body) = sys.get(path, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{path}: {body}"
        );
    }
    let (status, _) = sys.get("/api/signals/TEC01", None).await;
    assert_eq!(status, 404, "no ticks yet");
    // Its metrics, on its admin listener, as a Rust service's.
    let admin = catalog.services["signals"][0].metadata["admin"].clone();
    let metrics = sys.metrics_of(&admin).await;
    assert!(
        metrics.contains(
            "http_server_requests_total{route=\"/api/signals\",method=\"GET\",status=\"200\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_signal_change_reaches_the_members_following_its_ticker_once() {
    let sys = invest(vec![("market", "MARKET_VOLATILITY", "0.01".into())]).await;
    let (token, _) = sys.new_user().await;
    let me = sys.get("/api/auth/me", Some(&token)).await.1["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let followed = ["TEC01", "TEC02", "ENE01", "FIN01", "UTI01"];
    for ticker in followed {
        let resp = sys
            .http
            .put(sys.url(&format!("/api/portfolio/follows/{ticker}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let admin = sys.admin().await;
    sys.wait_for_audience(&admin, "ticker=UTI01", 1).await;
    let (_, follows) = sys.get("/api/portfolio/follows", Some(&token)).await;
    assert_eq!(follows["data"].as_array().unwrap().len(), followed.len());

    // The market runs (10 ticks a second) until the member has been told of a few changes.
    let (ok, out, err) = sys
        .cli_async(&["config", "set", "market", "MARKET_TICK_MS", "100"])
        .await;
    assert!(ok, "{out}{err}");
    let signal_alerts = || async {
        let (status, body) = sys.get("/api/alerts?limit=500", Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "signal")
            .map(|a| {
                (
                    a["source"].as_str().unwrap().to_string(),
                    a["ticker"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    sys.wait_until(Duration::from_secs(90), "signal alerts", || async {
        signal_alerts().await.len() >= 5
    })
    .await;
    let (ok, out, err) = sys
        .cli_async(&["config", "set", "market", "MARKET_TICK_MS", "0"])
        .await;
    assert!(ok, "{out}{err}");
    let (status, signals) = sys.get("/api/signals?signal=buy", None).await;
    assert_eq!(status, 200, "{signals}");

    // Every change of a followed ticker in the log, and nothing else, is one alert of the member.

    let settled = || async {
        let mut ids = BTreeSet::new();
        for e in &logged(&sys, "signals.changed").await {
            assert_eq!(e["producer"], "service:signals");
            if followed.contains(&e["event"]["data"]["ticker"].as_str().unwrap()) {
                ids.insert(e["event"]["id"].as_str().unwrap().to_string());
            }
        }
        ids
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let published = loop {
        let published = settled().await;
        let got: BTreeSet<String> = signal_alerts().await.into_iter().map(|(s, _)| s).collect();
        if got == published {
            break published;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "changes {published:?}, alerts {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = signal_alerts().await;
    assert_eq!(got.len(), published.len(), "one alert per change");
    assert!(got.iter().all(|(_, t)| followed.contains(&t.as_str())));
    assert!(!me.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_holdings_a_chart_news_and_alerts_in_a_real_browser() {
    let sys = invest(vec![("market", "MARKET_TICK_MS", "200".into())]).await;
    let (token, _) = sys.new_user().await;
    for (ticker, quantity) in [("TEC01", 5), ("ENE01", 3)] {
        sys.buy(&token, ticker, quantity).await;
    }
    let admin = sys.admin().await;
    sys.publish_news(&admin, json!({ "sector": "Technology", "headline": "Chips rally on a new design", "sentiment": 0.7 }))
        .await;
    sys.wait_until(
        Duration::from_secs(30),
        "the member's alert, and TEC01's signal",
        || async {
            let (_, alerts) = sys.get("/api/alerts", Some(&token)).await;
            let (status, _) = sys.get("/api/signals/TEC01", None).await;
            alerts["data"].as_array().is_some_and(|a| !a.is_empty()) && status == 200
        },
    )
    .await;
    // As a browser reads it (no read-after token: on PostgreSQL the replica may be behind).
    sys.wait_until(
        Duration::from_secs(10),
        "the alert to be readable by anyone",
        || async {
            let resp = sys
                .http
                .get(sys.url("/api/alerts"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            body["data"].as_array().is_some_and(|a| !a.is_empty())
        },
    )
    .await;
    let shots = tessera_testkit::browser::artifacts("invest-screenshots");

    // Signed out: the sign-in form, and nothing of anyone's portfolio.
    let page =
        tessera_testkit::browser::browse(&format!("{}/", sys.gateway), &shots.join("sign-in.png"));
    assert!(page.contains("<h2>Sign in</h2>"), "{page}");
    assert!(!page.contains("data-ticker="), "{page}");

    // Signed in: holdings, the chart drawn, the signal, the news and the alert.
    let url = format!("{}/#token={token}&ticker=TEC01", sys.gateway);
    let page = tessera_testkit::browser::browse(&url, &shots.join("dashboard.png"));
    let failed = page.split("id=\"failed\"").nth(1).unwrap_or("");
    assert!(
        failed.trim_start().starts_with("class=\"error\" hidden"),
        "the page failed: {page}"
    );
    assert!(
        page.contains("<tr data-ticker=\"TEC01\"><td>TEC01</td><td>5</td>"),
        "{page}"
    );
    assert!(
        page.contains("<tr data-ticker=\"ENE01\"><td>ENE01</td><td>3</td>"),
        "{page}"
    );
    assert!(
        page.contains("class=\"uplot") && page.contains("<canvas"),
        "the chart is drawn: {page}"
    );
    assert!(
        page.contains("Chips rally on a new design"),
        "the news: {page}"
    );
    assert!(
        page.contains("News for Technology, which you hold"),
        "the alert: {page}"
    );
    assert!(page.contains("id=\"signal\" class=\"signal "), "{page}");
    assert!(
        !page.contains(">no signal yet<"),
        "TEC01 has a signal: {page}"
    );
    assert!(
        page.contains("<span id=\"alerts-live\" class=\"muted\">live</span>"),
        "the alerts' feed is open: {page}"
    );
}

/// Every event of `topic` in the log, partition by partition (as the control plane browses it).
async fn logged(sys: &System, topic: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for partition in 0..4 {
        let page: Value = sys
            .control(
                reqwest::Method::GET,
                &format!("/v1/topics/{topic}/events?partition={partition}&limit=100000"),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.extend(page["events"].as_array().into_iter().flatten().cloned());
    }
    all
}

/// Every `invest.signal.changed` in the log, by ticker, in the order published (duplicates of
/// one event, by its id, counted once): (signal, previous) each.
async fn signal_chains(
    sys: &System,
) -> std::collections::BTreeMap<String, Vec<(String, Option<String>)>> {
    let mut chains: std::collections::BTreeMap<String, Vec<(String, Option<String>)>> =
        Default::default();
    let mut seen = BTreeSet::new();
    for e in &logged(sys, "signals.changed").await {
        let event = &e["event"];
        if !seen.insert(event["id"].as_str().unwrap().to_string()) {
            continue;
        }
        let data = &event["data"];
        chains
            .entry(data["ticker"].as_str().unwrap().to_string())
            .or_default()
            .push((
                data["signal"].as_str().unwrap().to_string(),
                data["previous"].as_str().map(str::to_string),
            ));
    }
    chains
}

#[tokio::test]
async fn a_blue_green_switch_of_signals_under_the_running_market_loses_no_signal_event() {
    let sys = invest(vec![
        ("market", "MARKET_TICK_MS", "200".into()),
        ("market", "MARKET_VOLATILITY", "0.01".into()),
    ])
    .await;
    let tick_of = |ticker: &'static str| {
        let sys = &sys;
        async move {
            let (status, body) = sys.get(&format!("/api/signals/{ticker}"), None).await;
            if status == 200 {
                body["data"]["tick"].as_i64().unwrap_or(0)
            } else {
                0
            }
        }
    };
    sys.wait_until(
        Duration::from_secs(30),
        "signals to follow the market",
        || async { tick_of("UTI20").await >= 25 },
    )
    .await;
    let (_, status) = sys.get("/api/market/status", None).await;
    let switch_from = status["data"]["tick"].as_i64().unwrap();

    let (ok, out, err) = sys
        .cli_async(&[
            "rollout",
            "signals",
            "--blue-green",
            "--version",
            "green",
            "--step",
            "1500ms",
        ])
        .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("completed"), "{out}");
    sys.wait_until(
        Duration::from_secs(20),
        "only green signals left",
        || async {
            let list = sys
                .registry()
                .await
                .services
                .get("signals")
                .cloned()
                .unwrap_or_default();
            !list.is_empty() && list.iter().all(|i| i.version == "green")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, out, err) = sys
        .cli_async(&["config", "set", "market", "MARKET_TICK_MS", "0"])
        .await;
    assert!(ok, "{out}{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, status) = sys.get("/api/market/status", None).await;
    let last = status["data"]["tick"].as_i64().unwrap();
    assert!(
        last - switch_from < 120,
        "the switch took {} ticks: longer than the closes shown",
        last - switch_from
    );
    sys.wait_until(
        Duration::from_secs(30),
        "green to take every tick",
        || async {
            for t in ["TEC01", "ENE05", "UTI20"] {
                if tick_of(t).await != last {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Every tick of the switch taken: each ticker's closes run without a gap. (None is taken
    // twice: the shared inbox refuses a tick's second delivery, and a second taking would show
    // below as a change published again.)
    for ticker in ["TEC01", "ENE05", "UTI20", "REA10"] {
        let (_, body) = sys.get(&format!("/api/signals/{ticker}"), None).await;
        let ticks: Vec<i64> = body["data"]["closes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["tick"].as_i64().unwrap())
            .collect();
        assert_eq!(*ticks.last().unwrap(), last, "{ticker}");
        assert!(ticks[0] <= switch_from, "{ticker}: {ticks:?}");
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "{ticker}: a gap in {ticks:?}"
        );
    }
    // Every signal change published once, in order: each one's `previous` is the one before it,
    // and the last is the signal the service shows.
    let chains = signal_chains(&sys).await;
    assert!(
        chains.values().map(Vec::len).sum::<usize>() > 20,
        "{chains:?}"
    );
    for (ticker, chain) in &chains {
        // (A ticker starts at hold, which is not published.)
        assert!(
            matches!(chain[0].1.as_deref(), None | Some("hold")),
            "{ticker}: {chain:?}"
        );
        for pair in chain.windows(2) {
            assert_eq!(
                pair[1].1.as_deref(),
                Some(pair[0].0.as_str()),
                "{ticker}: a change lost or doubled in {chain:?}"
            );
        }
        let (_, body) = sys.get(&format!("/api/signals/{ticker}"), None).await;
        assert_eq!(
            body["data"]["signal"].as_str(),
            Some(chain.last().unwrap().0.as_str()),
            "{ticker}"
        );
    }
}

/// The next JSON line of a client fixture.
async fn next_line(
    out: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
        .await
        .expect("the feed speaks");
    serde_json::from_str(&line.unwrap().expect("a line")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_alerts_arrive_live_on_a_websocket_opened_as_a_browser_opens_one() {
    use tokio::io::AsyncBufReadExt;
    let sys = invest(Vec::new()).await;
    let (token, _) = sys.new_user().await;
    sys.buy(&token, "MAT01", 2).await;
    let admin = sys.admin().await;
    sys.wait_for_audience(&admin, "sector=Materials", 1).await;

    // The token goes as a subprotocol (a browser cannot set Authorization on a WebSocket).
    let live = format!(
        "ws://{}/api/alerts/live",
        sys.gateway.trim_start_matches("http://")
    );
    let mut feed = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ws_client.py"
        ))
        .args(["browser", &live, &token, "alert", "25"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut out = tokio::io::BufReader::new(feed.stdout.take().unwrap()).lines();

    assert_eq!(
        next_line(&mut out).await,
        json!({ "event": "open", "subprotocol": "tessera" })
    );
    assert_eq!(next_line(&mut out).await["frame"]["type"], "ready");
    assert_eq!(next_line(&mut out).await["frame"]["type"], "pong");
    let news = sys
        .publish_news(
            &admin,
            json!({ "sector": "Materials", "headline": "Copper climbs", "sentiment": 0.4 }),
        )
        .await;
    let alert = next_line(&mut out).await;
    assert_eq!(alert["frame"]["type"], "alert", "{alert}");
    assert_eq!(alert["frame"]["data"]["source"], news["id"], "{alert}");
    assert_eq!(
        alert["frame"]["data"]["title"],
        "News for Materials, which you hold"
    );
    // A bad token offered so is refused at the handshake, as a bad header is.
    let refused = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ws_client.py"
        ))
        .args(["browser", &live, "not-a-token", "alert", "5"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Invest on `tessera up --profile distributed`: every event on a NATS JetStream of its own,
/// each service (the Python one too, through the control plane's event API) a NATS user
/// allowed only what the manifest grants it, the registry on etcd. Ticks reach the Python
/// service, its signal changes reach the followers, a news item reaches the holders.
#[tokio::test]
async fn invest_runs_on_the_distributed_profile_with_a_nats_user_per_service() {
    let [nats, etcd, redis] = tessera_testkit::free_ports_apart();
    let sys = System::start_with(Options {
        invest: true,
        checkout_env: vec![("market", "MARKET_VOLATILITY", "0.01".into())],
        up_args: tessera_testkit::distributed_up_args([nats, etcd, redis]),
        ..Options::default()
    })
    .await;
    sys.log_line("the NATS line", |l| {
        l.contains(&format!("NATS JetStream: nats://127.0.0.1:{nats}"))
    })
    .await;
    let conf = sys.dir.join("state/nats/nats.conf");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    let users: BTreeSet<&str> = config["authorization"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["user"].as_str())
        .collect();
    for service in ["market", "portfolio", "alerts", "signals"] {
        assert!(users.contains(service), "{service} in {users:?}");
    }

    let (token, _) = sys.new_user().await;
    for ticker in ["TEC01", "TEC02", "ENE01", "FIN01", "UTI01"] {
        let resp = sys
            .http
            .put(sys.url(&format!("/api/portfolio/follows/{ticker}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    sys.buy(&token, "UTI03", 1).await;
    let admin = sys.admin().await;
    sys.wait_for_audience(&admin, "sector=Utilities", 1).await;
    sys.publish_news(
        &admin,
        json!({ "sector": "Utilities", "headline": "Grid upgrade", "sentiment": 0.2 }),
    )
    .await;
    let (ok, out, err) = sys
        .cli_async(&["config", "set", "market", "MARKET_TICK_MS", "100"])
        .await;
    assert!(ok, "{out}{err}");
    let kinds = || async {
        let (status, body) = sys.get("/api/alerts?limit=500", Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    sys.wait_until(
        Duration::from_secs(90),
        "the news alert and a signal alert",
        || async {
            let kinds = kinds().await;
            kinds.iter().any(|k| k == "news") && kinds.iter().any(|k| k == "signal")
        },
    )
    .await;
    let news = kinds().await.iter().filter(|k| *k == "news").count();
    assert_eq!(news, 1, "one news alert");
    assert!(
        !sys.dir.join("state/control/log.db").exists(),
        "the embedded log was not used"
    );
}
