//! Live configuration (`docs/config.md`): `tessera config set` changes a running service's
//! behaviour within a second, without a restart; a value it cannot take is refused with the
//! key named and the running value kept; a rollback restores it; secrets are never shown.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_testkit::{Options, System};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005"; // 29.00 USD

/// The provider instance's address and PID.
async fn provider(sys: &System) -> (String, String) {
    let instance = sys.registry().await.services["payment-provider"][0].clone();
    (instance.address, instance.metadata["pid"].clone())
}

/// The configuration version the provider runs with (`/status/config`, as the platform).
async fn applied(sys: &System, address: &str) -> Value {
    sys.http
        .get(format!("http://{address}/status/config"))
        .header("x-passport", sys.system_passport())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the provider applies `version`: how long it took.
async fn applies(sys: &System, address: &str, version: u64) -> Duration {
    let start = Instant::now();
    loop {
        let now = applied(sys, address).await;
        if now["version"].as_u64() == Some(version) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "version {version} not applied: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A call to the control plane's configuration API as `principal`.
fn as_principal(
    sys: &System,
    principal: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    sys.http
        .request(method, format!("{}/v1/config/{path}", sys.control))
        .header("authorization", sys.credential(principal).authorization())
}

/// The payment provider's configuration, as it reads it itself.
async fn providers_own(sys: &System) -> Value {
    as_principal(
        sys,
        "service:payment-provider",
        reqwest::Method::GET,
        "payment-provider",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

async fn order_status(sys: &System, token: &str) -> String {
    let id = sys
        .place_order(token, json!([{ "productId": MOUSE, "quantity": 1 }]))
        .await;
    sys.settled_order(token, &id).await["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_setting_changes_live_is_checked_first_and_rolls_back() {
    let sys = System::start_with(Options {
        checkout: true,
        checkout_env: vec![(
            "payment-provider",
            "PROVIDER_DECLINE_OVER",
            "1000000".into(),
        )],
        ..Options::default()
    })
    .await;
    let (address, pid) = provider(&sys).await;
    let (token, _) = sys.new_user().await;
    assert_eq!(order_status(&sys, &token).await, "CONFIRMED");
    assert_eq!(applied(&sys, &address).await["version"], 0);

    // Declines everything over 0.01: taken, applied within a second, and the next checkout
    // is declined by the same process.
    let (ok, out, err) = sys.cli(&[
        "config",
        "set",
        "payment-provider",
        "PROVIDER_DECLINE_OVER",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("version 1") && out.contains("1000000 → 1"),
        "{out}"
    );
    let took = applies(&sys, &address, 1).await;
    assert!(took < Duration::from_secs(1), "applied after {took:?}");
    assert_eq!(order_status(&sys, &token).await, "REJECTED");
    assert_eq!(provider(&sys).await.1, pid, "no restart");

    // Values it cannot take: refused with the key and the reason, nothing changes.
    for (bad, why) in [("lots", "cannot parse"), ("-5", "must not be negative")] {
        let (ok, _, err) = sys.cli(&[
            "config",
            "set",
            "payment-provider",
            "PROVIDER_DECLINE_OVER",
            bad,
        ]);
        assert!(!ok, "{bad} taken");
        assert!(
            err.contains("PROVIDER_DECLINE_OVER") && err.contains(why),
            "{err}"
        );
    }
    for (key, why) in [("TESSERA_LISTEN", "platform"), ("lower", "upper-case")] {
        let (ok, _, err) = sys.cli(&["config", "set", "payment-provider", key, "1"]);
        assert!(!ok && err.contains(why), "{key}: {err}");
    }
    // A setting read only at start cannot change while the service runs.
    let (ok, _, err) = sys.cli(&["config", "set", "auth", "AUTH_ISSUER", "someone-else"]);
    assert!(
        !ok && err.contains("AUTH_ISSUER") && err.contains("only when the service starts"),
        "{err}"
    );
    let (ok, _, err) = sys.cli(&["config", "set", "nobody", "A", "1"]);
    assert!(!ok && err.contains("no service nobody"), "{err}");
    let (_, got, _) = sys.cli(&["config", "get", "payment-provider"]);
    assert!(got.contains("version 1"), "{got}");
    assert!(
        got.contains("PROVIDER_DECLINE_OVER") && got.contains("(changed)"),
        "{got}"
    );
    assert_eq!(applied(&sys, &address).await["version"], 1);
    assert_eq!(order_status(&sys, &token).await, "REJECTED");

    // A secret: taken, never shown, nor written in the log.
    let (ok, out, err) = sys.cli(&[
        "config",
        "set",
        "payment-provider",
        "PROVIDER_API_TOKEN",
        "s3cr3t-value",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("******") && !out.contains("s3cr3t-value"),
        "{out}"
    );
    applies(&sys, &address, 2).await;
    // The service itself reads it in clear (it needs it); an operator does not.
    let own = providers_own(&sys).await;
    assert_eq!(
        own["changes"]["PROVIDER_API_TOKEN"], "s3cr3t-value",
        "{own}"
    );
    let seen = sys.control_json("/v1/config/payment-provider").await;
    assert_eq!(seen["changes"]["PROVIDER_API_TOKEN"], "******", "{seen}");

    // Rolled back to before the first change: the manifest's value again.
    let (ok, out, err) = sys.cli(&["config", "rollback", "payment-provider", "0"]);
    assert!(ok, "{err}");
    assert!(out.contains("version 3 restores version 0"), "{out}");
    applies(&sys, &address, 3).await;
    assert_eq!(order_status(&sys, &token).await, "CONFIRMED");
    assert_eq!(provider(&sys).await.1, pid, "no restart");

    // Every version, who made it, and no secret.
    let (ok, history, err) = sys.cli(&["config", "history", "payment-provider"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 4, "{history}");
    assert!(
        lines[1].starts_with("3 ")
            && lines[1].contains("rollback")
            && lines[1].contains("to version 0"),
        "{history}"
    );
    assert!(
        lines[3].starts_with("1 ")
            && lines[3].contains("admin")
            && lines[3].contains("1000000 → 1"),
        "{history}"
    );
    assert!(
        !history.contains("s3cr3t-value") && history.contains("******"),
        "{history}"
    );
    let (_, got, _) = sys.cli(&["config", "get", "payment-provider"]);
    assert!(!got.contains("s3cr3t-value"), "{got}");
    // On the distributed profile the versions are kept on the registry's etcd, a key each.
    if let Some(keys) = sys.kept_on_etcd("config/payment-provider/").await {
        assert!(keys.len() >= 3, "{keys:?}");
    }

    // Audited: who changed what, in the control plane's log; the secret nowhere.
    let audit = sys
        .log_line("the audit line of the first change", |l| {
            l.contains("\"target\":\"audit\"")
                && l.contains("config change")
                && l.contains("\"version\":1")
        })
        .await;
    assert!(
        audit.contains("\"who\":\"admin\"") && audit.contains("\"new\":\"1\""),
        "{audit}"
    );
    assert!(!sys.log().contains("s3cr3t-value"), "a secret in the log");

    // Only the admin changes settings; a service reads only its own.
    let denied = as_principal(
        &sys,
        "service:order",
        reqwest::Method::PUT,
        "payment-provider/PROVIDER_HANG",
    )
    .json(&json!({ "value": "true" }))
    .send()
    .await
    .unwrap();
    assert_eq!(denied.status(), 403);
    let denied = as_principal(
        &sys,
        "service:order",
        reqwest::Method::GET,
        "payment-provider",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(denied.status(), 403);
    let own = providers_own(&sys).await;
    assert_eq!(own["version"], 3);
}
