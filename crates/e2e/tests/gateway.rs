//! The gateway's own behaviour: routing, envelope, trace propagation, timeouts; with a service
//! written in Python joining the system through the registry's HTTP API.

use serde_json::Value;
use tessera_testkit::{Options, System};

fn with_echo() -> Options {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/echo_service.py"
    );
    Options {
        upstream_timeout_ms: 1000,
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/api/echo"
service = "echo"
auth = "public"

[[route]]
prefix = "/api/ghost"
service = "ghost"
auth = "public"

[[route]]
prefix = "/api/private"
service = "echo"
auth = "required"

[services.echo]
command = ["python3", "{script}"]
"#
        ),
        ..Options::default()
    }
}

#[tokio::test]
async fn routes_wraps_and_propagates_the_trace() {
    let sys = System::start_with(with_echo()).await;
    let (user, _) = sys.new_user().await;

    // Unknown route, no live instance, missing token on a required route.
    let (status, body) = sys.get("/nowhere", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("route_not_found")),
        "{body}"
    );
    let (status, body) = sys.get("/api/ghost/x", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("no_instance")),
        "{body}"
    );
    let (status, body) = sys.get("/api/private/headers", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(sys.get("/api/private/headers", Some(&user)).await.0, 200);

    // What the upstream receives.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = sys
        .http
        .get(sys.url("/api/echo/headers"))
        .bearer_auth(&user)
        .header("traceparent", parent)
        .header("x-passport", "client-made")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["x-trace-id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    let returned = resp.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        returned.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{returned}"
    );
    let env: Value = resp.json().await.unwrap();
    assert_eq!(env["success"], true);
    assert_eq!(env["traceId"], "0af7651916cd43dd8448eb211c80319c");
    let seen = &env["data"];
    assert!(
        seen["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{seen}"
    );
    assert_ne!(
        seen["traceparent"], parent,
        "the gateway is a span of its own"
    );
    assert!(
        seen.get("authorization").is_none(),
        "the access token stays at the edge: {seen}"
    );
    let passport = seen["x-passport"].as_str().unwrap();
    assert_ne!(passport, "client-made");
    let keys = tessera::PassportKeys::from_spec(&sys.passport_keys(), "shop-test").unwrap();
    let p = keys.verify(passport).unwrap();
    assert_eq!(p.tid, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(p.iss, "tessera-gateway");
    assert!(p.exp - p.iat <= 60, "short-lived");
    assert!(p.sid.is_some());

    // Without a token: an anonymous passport, and a new trace.
    let (_, env) = sys.get("/api/echo/headers", None).await;
    let p = keys
        .verify(env["data"]["x-passport"].as_str().unwrap())
        .unwrap();
    assert!(p.is_anonymous() && p.roles.is_empty());
    assert_eq!(p.tid, env["traceId"].as_str().unwrap());

    // Upstream too slow: 504 within the configured timeout.
    let start = std::time::Instant::now();
    let (status, body) = sys.get("/api/echo/sleep?ms=3000", None).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert!(start.elapsed() < std::time::Duration::from_millis(2500));
    assert_eq!(sys.get("/api/echo/sleep?ms=10", None).await.0, 200);

    // Upstream errors keep their status and code, inside the envelope.
    let (status, body) = sys.get("/api/echo/missing", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    // One access-log line per request, with the trace id and the upstream instance.
    let line = sys
        .log_line("the access log line of the traced request", |l| {
            l.contains("\"target\":\"access\"") && l.contains("0af7651916cd43dd8448eb211c80319c")
        })
        .await;
    for field in [
        "\"method\":\"GET\"",
        "\"path\":\"/api/echo/headers\"",
        "\"status\":200",
        "\"upstream\":\"echo-1\"",
        "latency_ms",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    // Services' log lines carry the trace too.
    let (_, env) = sys.get("/api/catalog/products?limit=1", None).await;
    let trace = env["traceId"].as_str().unwrap();
    sys.wait_until(
        std::time::Duration::from_secs(5),
        "a catalog log line with the trace id",
        || async {
            sys.log().lines().any(|l| {
                l.contains("\"service\":\"catalog\"") && l.contains(trace) && l.contains("span_id")
            })
        },
    )
    .await;
}

#[tokio::test]
async fn slow_client_headers_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sys = System::start_with(Options {
        header_timeout_ms: 1000,
        ..Options::default()
    })
    .await;
    let mut sock = tokio::net::TcpStream::connect(sys.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    sock.write_all(b"GET /api/catalog/products HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers; the gateway must not hold the connection forever.
    let mut buf = [0u8; 256];
    let start = std::time::Instant::now();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), sock.read(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway closed or answered a client that never finished its headers"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
