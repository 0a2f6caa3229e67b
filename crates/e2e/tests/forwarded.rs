//! What an instance is told about the client: `X-Forwarded-For`, `Forwarded` and
//! `X-Forwarded-Proto` come from the gateway's own view of the connection, and a client's
//! values are dropped unless it is a proxy the manifest trusts, in which case its chain is kept
//! and the proxy appended; the per-address rate limits count the same client address.

use serde_json::Value;
use tessera_testkit::{Options, System};

fn with_echo(trusted_proxies: &[&str]) -> Options {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/echo_service.py"
    );
    Options {
        trusted_proxies: trusted_proxies.iter().map(|p| p.to_string()).collect(),
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/api/echo"
service = "echo"
auth = "public"

[[route]]
prefix = "/api/echo/limited"
service = "echo"
auth = "public"
rate_limit = {{ per_ip = "2/m" }}

[services.echo]
command = ["python3", "{script}"]
"#
        ),
        ..Options::default()
    }
}

/// The headers the echo instance received for a request with `headers`, and the status.
async fn seen(sys: &System, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = sys.http.get(sys.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (status, body["data"].clone())
}

const SPOOFED: [(&str, &str); 5] = [
    ("x-forwarded-for", "6.6.6.6"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
    ("x-real-ip", "6.6.6.6"),
];

#[tokio::test]
async fn a_client_cannot_say_where_it_comes_from() {
    let sys = System::start_with(with_echo(&[])).await;
    let (status, headers) = seen(&sys, "/api/echo/headers", &SPOOFED).await;
    assert_eq!(status, 200, "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert_eq!(
        headers["forwarded"], "for=127.0.0.1;proto=http",
        "{headers}"
    );
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");
    assert!(headers.get("x-forwarded-host").is_none(), "{headers}");
    assert!(headers.get("x-real-ip").is_none(), "{headers}");

    // Without them too.
    let (_, headers) = seen(&sys, "/api/echo/headers", &[]).await;
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");

    // The address limit counts the connection's address, whatever the client claims.
    for (i, claimed) in ["1.1.1.1", "2.2.2.2", "3.3.3.3"].iter().enumerate() {
        let (status, _) = seen(
            &sys,
            "/api/echo/limited/headers",
            &[("x-forwarded-for", claimed)],
        )
        .await;
        assert_eq!(status, if i < 2 { 200 } else { 429 }, "{claimed}");
    }
}

#[tokio::test]
async fn a_trusted_proxy_passes_its_chain_on_and_its_client_is_the_one_limited() {
    let sys = System::start_with(with_echo(&["10.0.0.0/8", "127.0.0.1/32"])).await;
    let (status, headers) = seen(
        &sys,
        "/api/echo/headers",
        &[
            ("x-forwarded-for", "203.0.113.7, 10.1.2.3"),
            ("forwarded", "for=203.0.113.7;proto=https"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{headers}");
    assert_eq!(
        headers["x-forwarded-for"], "203.0.113.7, 10.1.2.3, 127.0.0.1",
        "{headers}"
    );
    assert_eq!(
        headers["forwarded"], "for=203.0.113.7;proto=https, for=127.0.0.1;proto=http",
        "{headers}"
    );
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
    // A proxy that says nothing: the gateway's own view.
    let (_, headers) = seen(&sys, "/api/echo/headers", &[]).await;
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");

    // The client behind the proxies is the one limited: the first address from the right that
    // is not a trusted proxy.
    let a = [("x-forwarded-for", "203.0.113.7, 10.9.9.9")];
    let b = [("x-forwarded-for", "6.6.6.6, 203.0.113.8")];
    assert_eq!(seen(&sys, "/api/echo/limited/headers", &a).await.0, 200);
    assert_eq!(seen(&sys, "/api/echo/limited/headers", &a).await.0, 200);
    assert_eq!(seen(&sys, "/api/echo/limited/headers", &a).await.0, 429);
    assert_eq!(
        seen(&sys, "/api/echo/limited/headers", &b).await.0,
        200,
        "another client"
    );
    assert_eq!(seen(&sys, "/api/echo/limited/headers", &b).await.0, 200);
    let spoofing_b = [("x-forwarded-for", "7.7.7.7, 203.0.113.8")];
    assert_eq!(
        seen(&sys, "/api/echo/limited/headers", &spoofing_b).await.0,
        429,
        "what is left of the client is not trusted"
    );
}
