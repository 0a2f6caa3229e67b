//! Traces end to end: spans from every hop of a checkout reach the control plane's collector
//! and come back through its query API linked parent to child, across the bus too; a service
//! in Python exporting with the OpenTelemetry SDK joins the same trace; what the collector
//! stores outlives its restart, and retention removes what is too old.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tessera_testkit::{Options, System};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

/// A `traceparent` of our own: the trace id the system must keep, our span its parent.
fn traceparent() -> (String, String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// The spans of `trace_id` once `done` holds for them (20 s at most).
async fn spans_of(sys: &System, trace_id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let resp = sys
            .control(Method::GET, &format!("/v1/telemetry/traces/{trace_id}"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            let body: Value = resp.json().await.unwrap();
            last = body["spans"].as_array().cloned().unwrap_or_default();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "trace {trace_id} never complete; it has:\n{}",
        serde_json::to_string_pretty(&last).unwrap()
    );
}

fn services(spans: &[Value]) -> BTreeSet<String> {
    spans
        .iter()
        .map(|s| s["service"].as_str().unwrap().to_string())
        .collect()
}

fn named(spans: &[Value], f: impl Fn(&Value) -> bool) -> Vec<&Value> {
    spans.iter().filter(|s| f(s)).collect()
}

#[tokio::test]
async fn a_checkout_is_one_trace_from_the_gateway_through_every_service_and_across_the_bus() {
    let sys = System::start_with(Options {
        checkout: true,
        ..Options::default()
    })
    .await;
    let (token, _) = sys.new_user().await;
    // The client's own trace context is honoured: the system's spans join its trace.
    let (header, trace_id, client_span) = traceparent();
    let resp = sys
        .http
        .post(sys.url("/api/orders"))
        .bearer_auth(&token)
        .header("traceparent", &header)
        .json(&json!({ "items": [{ "productId": MOUSE, "quantity": 1 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let order_id = body["data"]["orderId"].as_str().unwrap().to_string();
    let order = sys.settled_order(&token, &order_id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    let want: BTreeSet<String> = [
        "gateway",
        "order",
        "catalog",
        "inventory",
        "payment",
        "payment-provider",
        "notification",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Complete once every service has spoken and every span's parent has arrived too (each
    // process exports on its own tick: a consumer's span can come before its producer's).
    let spans = spans_of(&sys, &trace_id, |spans| {
        let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
        let parents_in = spans.iter().all(|s| match s["parent_id"].as_str() {
            Some(p) => p == client_span || ids.contains(p),
            None => true,
        });
        services(spans).is_superset(&want)
            && spans
                .iter()
                .any(|s| s["service"] == "notification" && s["kind"] == "consumer")
            && parents_in
    })
    .await;
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s))
        .collect();
    let parent_of = |s: &Value| -> Option<&Value> {
        s["parent_id"].as_str().and_then(|p| by_id.get(p).copied())
    };

    // The gateway's server span is the root, child of the client's span.
    let roots = named(&spans, |s| {
        s["parent_id"].as_str() == Some(client_span.as_str())
    });
    assert_eq!(roots.len(), 1, "one span under the client's: {roots:?}");
    let root = roots[0];
    assert_eq!(
        (root["service"].as_str(), root["kind"].as_str()),
        (Some("gateway"), Some("server"))
    );
    assert_eq!(root["attributes"]["http.response.status_code"], 202);
    assert_eq!(root["attributes"]["http.route"], "/api/orders");
    // Every other span's parent is in the trace: nothing hangs loose.
    for s in &spans {
        if s["span_id"] != root["span_id"] {
            assert!(parent_of(s).is_some(), "a span without its parent: {s}");
        }
        assert!(s["duration_us"].as_i64().unwrap() >= 0);
    }
    // The gateway's attempt is a client span between its server span and the order's.
    let order_server = named(&spans, |s| {
        s["service"] == "order" && s["kind"] == "server" && s["name"] == "POST /api/orders"
    });
    assert_eq!(order_server.len(), 1, "{order_server:?}");
    let attempt = parent_of(order_server[0]).unwrap();
    assert_eq!(
        (attempt["service"].as_str(), attempt["kind"].as_str()),
        (Some("gateway"), Some("client"))
    );
    assert_eq!(attempt["parent_id"], root["span_id"]);
    // The order service's call to the catalog: a client span, parent of the catalog's.
    let catalog = named(&spans, |s| {
        s["service"] == "catalog" && s["kind"] == "server"
    });
    assert!(!catalog.is_empty());
    let call = parent_of(catalog[0]).unwrap();
    assert_eq!(
        (call["service"].as_str(), call["kind"].as_str()),
        (Some("order"), Some("client"))
    );
    // The request's database transactions: kinds of statement, never values.
    let transactions = named(&spans, |s| {
        s["name"] == "db transaction" && s["service"] == "order"
    });
    assert!(!transactions.is_empty());
    for t in &transactions {
        let summary = t["attributes"]["db.operation.summary"].as_str().unwrap();
        assert!(
            summary
                .split(' ')
                .all(
                    |w| ["SELECT", "INSERT", "UPDATE", "DELETE", "OTHER"].contains(&w)
                        || w.starts_with('x')
                ),
            "{summary}"
        );
        assert!(
            !t.to_string().contains(&order_id),
            "no values in a transaction's span: {t}"
        );
    }
    // Across the bus: every consumer span's parent is a producer span, in another service or
    // in the same one.
    let consumers = named(&spans, |s| s["kind"] == "consumer");
    assert!(consumers.len() >= 4, "{consumers:?}");
    for c in &consumers {
        let producer = parent_of(c).unwrap();
        assert_eq!(producer["kind"], "producer", "{c} under {producer}");
        assert_eq!(
            producer["attributes"]["messaging.destination.name"],
            c["attributes"]["messaging.destination.name"]
        );
    }
    for service in ["inventory", "payment", "notification", "order"] {
        assert!(
            consumers.iter().any(|c| c["service"] == service),
            "{service} handled an event of the trace"
        );
    }
    // The saga's steps, each the parent of its command's producer span.
    for step in ["reserve-stock", "authorize-payment"] {
        let steps = named(&spans, |s| {
            s["name"] == format!("saga checkout step {step}")
        });
        assert_eq!(steps.len(), 1, "{step}");
        assert_eq!(steps[0]["attributes"]["tessera.saga.id"], order_id);
        assert!(
            spans
                .iter()
                .any(|s| s["parent_id"] == steps[0]["span_id"] && s["kind"] == "producer"),
            "{step}'s command is sent under it"
        );
    }
    // The payment provider was called by the payment service (its worker, in the trace).
    let provider = named(&spans, |s| {
        s["service"] == "payment-provider" && s["kind"] == "server"
    });
    assert!(!provider.is_empty());
    assert_eq!(parent_of(provider[0]).unwrap()["service"], "payment");

    // The trace's log lines come with it, each under its span; lines that repeat a span (a
    // request's, an event's) are not exported.
    let detail: Value = sys
        .control_json(&format!("/v1/telemetry/traces/{trace_id}"))
        .await;
    let logs = detail["logs"].as_array().unwrap();
    let placed = logs
        .iter()
        .find(|l| l["body"] == "order placed")
        .unwrap_or_else(|| panic!("the order's line is in its trace: {logs:?}"));
    assert_eq!(placed["service"], "order");
    assert_eq!(placed["level"], "INFO");
    assert_eq!(placed["attributes"]["order"], order_id.as_str());
    assert!(
        by_id.contains_key(placed["span_id"].as_str().unwrap()),
        "{placed}"
    );
    assert!(
        logs.iter()
            .all(|l| l["body"] != "request" && l["body"] != "event handled"),
        "{logs:?}"
    );
    // Log search: by service and text; a live tail gets only what came after the last line
    // it saw, oldest first; a level keeps the lines at least that severe.
    let found: Value = sys
        .control_json("/v1/telemetry/logs?service=order&text=order%20placed")
        .await;
    assert!(
        found["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["trace_id"] == trace_id.as_str()),
        "{found}"
    );
    let last = found["last"].as_i64().unwrap();
    let second = sys
        .place_order(&token, json!([{ "productId": MOUSE, "quantity": 1 }]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tail: Value = sys
            .control_json(&format!("/v1/telemetry/logs?service=order&after={last}"))
            .await;
        let lines = tail["logs"].as_array().unwrap();
        assert!(
            lines.iter().all(|l| l["id"].as_i64().unwrap() > last),
            "{tail}"
        );
        let ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
        if lines
            .iter()
            .any(|l| l["attributes"]["order"] == second.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second order's line never came: {tail}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warnings: Value = sys
        .control_json("/v1/telemetry/logs?service=order&level=warn")
        .await;
    assert!(
        warnings["logs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["level"] == "WARN" || l["level"] == "ERROR"),
        "{warnings}"
    );

    // The CLI draws the same trace as a waterfall with its log lines, and finds the line.
    let tessera = |args: &[&str]| {
        let (ok, out, err) = sys.cli(args);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let drawn = tessera(&["trace", &trace_id]);
    for shown in [
        "POST /api/orders",
        "saga checkout step reserve-stock",
        "payment-provider",
        "order placed",
        "█",
    ] {
        assert!(drawn.contains(shown), "{shown}:\n{drawn}");
    }
    assert!(
        drawn.lines().count() > spans.len(),
        "a line per span, then the logs:\n{drawn}"
    );
    let listed = tessera(&["logs", "order", "--grep", "order placed", "-n", "50"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("order placed") && l.contains(&trace_id[..8])),
        "{listed}"
    );

    // Search: by service, route and status, and each trace summed up.
    let resp = sys
        .control(
            Method::GET,
            "/v1/telemetry/traces?service=order&route=/api/orders&status=202&limit=10",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let found: Value = resp.json().await.unwrap();
    let hit = found["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("the checkout's trace is found: {found}"));
    assert_eq!(hit["root"]["service"], "gateway");
    assert!(hit["spans"].as_u64().unwrap() as usize >= spans.len());
    assert_eq!(hit["errors"], 0);
    // A filter it does not match leaves it out.
    let resp = sys
        .control(
            Method::GET,
            "/v1/telemetry/traces?service=order&status=error",
        )
        .send()
        .await
        .unwrap();
    let found: Value = resp.json().await.unwrap();
    assert!(
        found["traces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["trace_id"] != trace_id.as_str()),
        "{found}"
    );

    // Bad input is a 400 that says why; nobody without a credential, and no service, reads.
    let now = tessera::unix_now_ms();
    for (query, says) in [
        ("/v1/telemetry/traces/not-a-trace", "32 hex"),
        ("/v1/telemetry/traces?limit=0", "limit"),
        ("/v1/telemetry/traces?limit=100000", "limit"),
        (
            &format!("/v1/telemetry/traces?since=0&until={now}") as &str,
            "too wide",
        ),
        ("/v1/telemetry/traces?since=20&until=10", "since"),
        ("/v1/telemetry/traces?min_ms=-1", "min_ms"),
        ("/v1/telemetry/traces?status=teapot", "status"),
        ("/v1/telemetry/traces?colour=red", "colour"),
        ("/v1/telemetry/logs?level=loud", "level"),
        ("/v1/telemetry/logs?trace_id=xyz", "32 hex"),
        ("/v1/telemetry/logs?after=-4", "after"),
    ] {
        let resp = sys.control(Method::GET, query).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
    let resp = sys
        .control(
            Method::GET,
            &format!("/v1/telemetry/traces/{}", "ab".repeat(16)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let anonymous = sys
        .http
        .get(format!("{}/v1/telemetry/traces", sys.control))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let as_service = sys
        .http
        .get(format!("{}/v1/telemetry/traces", sys.control))
        .header(
            "authorization",
            sys.credential("service:order").authorization(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(as_service.status(), 403);
}

/// One span in OTLP/JSON, `age` old, as any SDK could send it.
fn otlp_json(trace_id: &str, service: &str, name: &str, age: Duration) -> Value {
    let start = (std::time::SystemTime::now() - age)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": service } }
            ]},
            "scopeSpans": [{
                "scope": { "name": "test" },
                "spans": [{
                    "traceId": trace_id,
                    "spanId": "00f067aa0ba902b7",
                    "name": name,
                    "kind": 2,
                    "startTimeUnixNano": start.to_string(),
                    "endTimeUnixNano": (start + 1_500_000).to_string(),
                    "attributes": [
                        { "key": "http.route", "value": { "stringValue": "/api/x" } },
                        { "key": "http.response.status_code", "value": { "intValue": "200" } }
                    ],
                    "status": {}
                }]
            }]
        }]
    })
}

#[tokio::test]
async fn spans_outlive_a_restart_of_the_control_plane_and_retention_removes_the_old_ones() {
    let sys = System::start_with(Options {
        extra_manifest: "[telemetry]\nretention_hours = 48\n".into(),
        ..Options::default()
    })
    .await;
    let yesterday = "4bf92f3577b34da6a3ce929d0e0e4736";
    let three_days_ago = "5bf92f3577b34da6a3ce929d0e0e4736";
    for (trace_id, age) in [(yesterday, 24), (three_days_ago, 72)] {
        let resp = sys
            .control(Method::POST, "/v1/traces")
            .json(&otlp_json(
                trace_id,
                "legacy",
                "GET /api/x",
                Duration::from_secs(age * 3600),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    // A service's spans are its own, whatever its resource says: posted by the order
    // service in the catalog's name, they are stored as the order service's.
    let forged = "6bf92f3577b34da6a3ce929d0e0e4736";
    let resp = sys
        .http
        .post(format!("{}/v1/traces", sys.control))
        .header(
            "authorization",
            sys.credential("service:order").authorization(),
        )
        .json(&otlp_json(forged, "catalog", "GET /api/x", Duration::ZERO))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stored: Value = sys
        .control_json(&format!("/v1/telemetry/traces/{forged}"))
        .await;
    assert_eq!(stored["spans"][0]["service"], "order", "{stored}");
    // OTLP's own errors: a body that is not a request, a span with a short id (rejected in
    // the answer's partial success), an unknown media type.
    let resp = sys
        .control(Method::POST, "/v1/traces")
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff; 16])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let mut short = otlp_json(yesterday, "legacy", "x", Duration::ZERO);
    short["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = json!("00f067");
    let resp = sys
        .control(Method::POST, "/v1/traces")
        .json(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedSpans"]
            .to_string()
            .trim_matches('"'),
        "1",
        "{answer}"
    );
    let resp = sys
        .control(Method::POST, "/v1/traces")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    // The control plane dies (kill -9) and its supervisor starts it again.
    let control_pid = sys
        .tree_pids()
        .into_iter()
        .find(|pid| {
            tessera_testkit::cmdline(*pid)
                .iter()
                .any(|a| a == "control")
        })
        .expect("the control plane's process");
    tessera_testkit::signal(control_pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let restarted = sys.tree_pids().into_iter().any(|pid| {
            pid != control_pid && tessera_testkit::cmdline(pid).iter().any(|a| a == "control")
        });
        if restarted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane was not started again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let resp = sys
            .control(Method::GET, &format!("/v1/telemetry/traces/{yesterday}"))
            .send()
            .await;
        if let Ok(resp) = resp
            && resp.status() == 200
        {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["spans"][0]["service"], "legacy");
            assert_eq!(body["spans"][0]["duration_us"], 1500);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "yesterday's trace is gone after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Older than the 48 hours kept: pruned when the store opened again.
    let resp = sys
        .control(
            Method::GET,
            &format!("/v1/telemetry/traces/{three_days_ago}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "{}", resp.text().await.unwrap());
    // And a search over the last two days finds yesterday's by its route.
    let since = tessera::unix_now_ms() - 47 * 3600 * 1000;
    let resp = sys
        .control(
            Method::GET,
            &format!("/v1/telemetry/traces?since={since}&route=/api/x&service=legacy"),
        )
        .send()
        .await
        .unwrap();
    let found: Value = resp.json().await.unwrap();
    let ids: Vec<&str> = found["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [yesterday], "{found}");
}

#[tokio::test]
async fn a_python_service_exporting_with_the_opentelemetry_sdk_joins_the_gateways_trace() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/otel_service.py"
    );
    let sys = System::start_with(Options {
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/api/otel"
service = "otel"
auth = "public"

[services.otel]
command = ["python3", "{script}"]
"#
        ),
        ..Options::default()
    })
    .await;
    let (header, trace_id, _) = traceparent();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = sys
            .http
            .get(sys.url("/api/otel/hello"))
            .header("traceparent", &header)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Python service never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Python span, and its parent (the gateway exports in batches, maybe later).
    let spans = spans_of(&sys, &trace_id, |spans| {
        spans
            .iter()
            .any(|s| s["service"] == "otel" && spans.iter().any(|p| p["span_id"] == s["parent_id"]))
    })
    .await;
    let python = spans.iter().find(|s| s["service"] == "otel").unwrap();
    assert_eq!(python["name"], "GET /api/otel/hello");
    assert_eq!(python["attributes"]["written.in"], "python");
    // Its parent is the gateway's attempt: the SDK read the traceparent the gateway sent.
    let parent = spans
        .iter()
        .find(|s| s["span_id"] == python["parent_id"])
        .unwrap_or_else(|| panic!("the Python span's parent is in the trace: {spans:?}"));
    assert_eq!(
        (parent["service"].as_str(), parent["kind"].as_str()),
        (Some("gateway"), Some("client"))
    );
}
