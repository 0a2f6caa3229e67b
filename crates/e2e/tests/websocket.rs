//! WebSocket through the gateway, with a client library nobody on the project wrote (Python's
//! `websockets`, over TLS): the notification service's live feed, authenticated at the
//! upgrade like any request, exchanging messages, delivering an order's notification as it is
//! recorded; refused without a token; closed when idle; and an upgrade on a route that does
//! not allow it is a plain request.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_testkit::{Options, System};
use tokio::io::{AsyncBufReadExt, BufReader};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

fn ws(sys: &System, path: &str) -> String {
    let https = sys.gateway_tls.as_ref().expect("HTTPS is on");
    format!("wss://{}{path}", https.trim_start_matches("https://"))
}

fn client(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("python3")
        .arg(format!("{FIXTURES}/ws_client.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs")
}

/// The client's JSON lines, once it has exited.
async fn lines_of(child: tokio::process::Child) -> Vec<Value> {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the client ends")
        .unwrap();
    assert!(
        out.status.success(),
        "ws_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_delivers_a_notification_over_a_websocket() {
    let sys = System::start_with(Options {
        checkout: true,
        tls: Some("plain = \"serve\"".into()),
        gateway: "websocket_idle_timeout_ms = 1500".into(),
        ..Options::default()
    })
    .await;
    let ca = sys.development_ca();
    let ca = ca.to_str().unwrap();
    let (token, _) = sys.new_user().await;
    let live = ws(&sys, "/api/notifications/live");

    // Open the feed; once it has answered the ping, place an order.
    let mut feed = client(&["feed", &live, ca, &token, "25"]);
    let mut out = BufReader::new(feed.stdout.take().unwrap()).lines();
    let mut frames = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .expect("the feed answers")
        .unwrap()
    {
        let event: Value = serde_json::from_str(&line).unwrap();
        frames.push(event["frame"]["type"].clone());
        if event["frame"]["type"] == "pong" {
            break;
        }
    }
    assert_eq!(frames, [json!("ready"), json!("pong")]);
    let order_id = sys
        .place_order(&token, json!([{"productId": MOUSE, "quantity": 1}]))
        .await;

    // The order's outcome arrives on the socket, the list API's fields in it.
    let mut notified = None;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), out.next_line())
        .await
        .expect("a notification within 30 s")
        .unwrap()
    {
        let event: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(event["event"], "timeout", "no notification came");
        if event["frame"]["type"] == "notification" {
            notified = Some(event["frame"]["data"].clone());
            break;
        }
    }
    let notified = notified.expect("a notification");
    assert_eq!(notified["orderId"], order_id.as_str(), "{notified}");
    assert_eq!(notified["kind"], "order_confirmed", "{notified}");
    let _ = feed.wait().await;
    let log = sys.log();
    assert!(
        log.lines()
            .any(|l| l.contains("/api/notifications/live") && l.contains("\"status\":101")),
        "the upgrade is in the gateway's access log"
    );

    // Without a token the handshake is refused as any request would be; another customer's
    // token opens a feed of their own (nothing of this customer's in it: the list shows it).
    let refused = lines_of(client(&["refused", &live, ca])).await;
    assert_eq!(refused, [json!({"event": "refused", "status": 401})]);
    let refused = lines_of(client(&["refused", &live, ca, "not-a-token"])).await;
    assert_eq!(refused, [json!({"event": "refused", "status": 401})]);

    // A socket nothing crosses is closed after the idle limit (1.5 s here).
    let idle = lines_of(client(&["idle", &live, ca, &token])).await;
    let after = idle[0]["after"].as_f64().unwrap();
    assert!((1.2..6.0).contains(&after), "closed after {after} s");

    // An upgrade on a route that does not allow WebSockets is a plain request: the catalog
    // answers it with its list, not a 101.
    let plain = lines_of(client(&["refused", &ws(&sys, "/api/catalog/products"), ca])).await;
    assert_eq!(plain, [json!({"event": "refused", "status": 200})]);
}
