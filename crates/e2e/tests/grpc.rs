//! gRPC through the gateway, with gRPC's own client and server (Python's grpcio, from PyPI):
//! over HTTPS with HTTP/2, authenticated like any request (the access token in the
//! `authorization` metadata becomes a passport for the instance), answers and trailers passed
//! as they come (a status in the trailers, a server stream), refusals as gRPC statuses.

use std::process::Stdio;

use serde_json::{Value, json};
use tessera_testkit::{Options, System};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

async fn call(sys: &System, token: &str, method: &str, body: &str) -> Value {
    let target = sys
        .gateway_tls
        .as_ref()
        .unwrap()
        .trim_start_matches("https://")
        .replace("127.0.0.1", "localhost");
    let ca = sys.development_ca();
    let out = tokio::process::Command::new("python3")
        .arg(format!("{FIXTURES}/grpc_service.py"))
        .args(["call", &target, ca.to_str().unwrap(), token, method, body])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "grpc client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_with_their_streams_and_trailers() {
    let sys = System::start_with(Options {
        tls: Some("plain = \"serve\"".into()),
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/test.Echo"
service = "echo-grpc"
auth = "required"
grpc = true

[services.echo-grpc]
command = ["python3", "{FIXTURES}/grpc_service.py"]
"#
        ),
        ..Options::default()
    })
    .await;
    let (token, _) = sys.new_user().await;

    // A unary call: the instance heard a passport, and no access token.
    let said = call(&sys, &token, "/test.Echo/Say", "hi").await;
    assert_eq!(said, json!({"ok": "echo:hi|passport=yes|authorization=no"}));

    // The instance's status and message, sent in the trailers, reach the client.
    let failed = call(&sys, &token, "/test.Echo/Fail", "x").await;
    assert_eq!(
        failed,
        json!({"code": "NOT_FOUND", "message": "no such thing"})
    );

    // A server stream, message by message.
    let counted = call(&sys, &token, "/test.Echo/Count", "").await;
    assert_eq!(counted, json!({"ok": ["1", "2", "3"]}));

    // No token on a route that needs one: gRPC's UNAUTHENTICATED, not an HTTP error page.
    let refused = call(&sys, "-", "/test.Echo/Say", "hi").await;
    assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
    let forged = call(&sys, "not-a-token", "/test.Echo/Say", "hi").await;
    assert_eq!(forged["code"], "UNAUTHENTICATED", "{forged}");
    assert!(
        sys.log().contains("\"path\":\"/test.Echo/Say\""),
        "calls are in the access log"
    );

    // Each call is traced: the gateway's server span named after the method, and the
    // attempt's client span under it, both with the RPC's attributes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let spans = loop {
        let found = sys
            .control_json("/v1/telemetry/traces?service=gateway&limit=50")
            .await;
        let id = found["traces"].as_array().unwrap().iter().find_map(|t| {
            (t["root"]["name"] == "test.Echo/Say" && t["spans"] == 2).then(|| t["trace_id"].clone())
        });
        if let Some(id) = id {
            let trace = sys
                .control_json(&format!("/v1/telemetry/traces/{}", id.as_str().unwrap()))
                .await;
            break trace["spans"].as_array().unwrap().clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no gRPC trace: {found}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let server = spans.iter().find(|s| s["kind"] == "server").unwrap();
    let client = spans.iter().find(|s| s["kind"] == "client").unwrap();
    assert_eq!(client["parent_id"], server["span_id"], "{spans:?}");
    for span in [server, client] {
        assert_eq!(span["name"], "test.Echo/Say", "{span}");
        assert_eq!(span["attributes"]["rpc.system"], "grpc", "{span}");
        assert_eq!(span["attributes"]["rpc.service"], "test.Echo", "{span}");
        assert_eq!(span["attributes"]["rpc.method"], "Say", "{span}");
    }
    assert!(
        client["attributes"]["tessera.instance"]
            .as_str()
            .unwrap()
            .starts_with("echo-grpc")
    );
}
