//! HTTPS and HTTP/2 at the gateway, with clients nobody on the project wrote: curl (HTTP/2
//! and HTTP/1.1 over TLS, h2c) and Python's `ssl` (certificate verification against the
//! development CA `tessera up` made, TLS versions, session resumption); a certificate
//! replaced on disk under load; plain HTTP redirected or refused.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tessera_testkit::{Options, System};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn with_echo(tls: &str) -> Options {
    Options {
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/api/echo"
service = "echo"
auth = "public"

[services.echo]
command = ["python3", "{FIXTURES}/echo_service.py"]
"#
        ),
        tls: Some(tls.to_string()),
        ..Options::default()
    }
}

/// What curl got: the status, the body, and the HTTP version it spoke.
struct Curl {
    status: u16,
    body: String,
    version: String,
    location: String,
}

async fn curl(args: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w"])
        .arg("\n%{http_code} %{http_version} %{redirect_url}")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split(' ');
    let status = tail.next().unwrap_or("0").parse().unwrap_or(0);
    let version = tail.next().unwrap_or("").to_string();
    let location = tail.next().unwrap_or("").to_string();
    assert!(
        out.status.success() || status != 0,
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Curl {
        status,
        body: body.to_string(),
        version,
        location,
    }
}

async fn python(args: &[&str]) -> Value {
    let out = tokio::process::Command::new("python3")
        .arg(format!("{FIXTURES}/tls_client.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "tls_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

fn https(sys: &System, path: &str) -> String {
    format!("{}{path}", sys.gateway_tls.as_ref().expect("HTTPS is on"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http1_through_real_clients() {
    let sys = System::start_with(with_echo("plain = \"redirect\"")).await;
    let ca = sys.development_ca();
    let ca = path_str(&ca);

    // curl over HTTP/2 and over HTTP/1.1, verifying the certificate.
    let products = https(&sys, "/api/catalog/products?limit=2");
    let h2 = curl(&["--http2", "--cacert", ca, &products]).await;
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "{}", h2.body);
    let body: Value = serde_json::from_str(&h2.body).unwrap();
    assert!(body["data"]["items"].is_array(), "{body}");
    let h1 = curl(&["--http1.1", "--cacert", ca, &products]).await;
    assert_eq!(
        (h1.status, h1.version.as_str()),
        (200, "1.1"),
        "{}",
        h1.body
    );

    // Without the CA, curl refuses the certificate: it is verified, not just accepted.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", &products])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "an unknown CA must not verify");

    // The whole request path over HTTP/2: sign up, log in, and a call that needs the token.
    let email = format!("h2-{}@shop.test", uuid::Uuid::new_v4().simple());
    let signup = serde_json::json!({"email": email, "password": "password123", "name": "H2"});
    let posted = curl(&[
        "--http2",
        "--cacert",
        ca,
        "-H",
        "content-type: application/json",
        "--data",
        &signup.to_string(),
        &https(&sys, "/api/auth/signup"),
    ])
    .await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    let login = serde_json::json!({"email": email, "password": "password123"});
    let logged = curl(&[
        "--http2",
        "--cacert",
        ca,
        "-H",
        "content-type: application/json",
        "--data",
        &login.to_string(),
        &https(&sys, "/api/auth/login"),
    ])
    .await;
    assert_eq!(logged.status, 200, "{}", logged.body);
    let token: Value = serde_json::from_str(&logged.body).unwrap();
    let token = token["data"]["accessToken"].as_str().unwrap().to_string();
    let me = curl(&[
        "--http2",
        "--cacert",
        ca,
        "-H",
        &format!("authorization: Bearer {token}"),
        &https(&sys, "/api/auth/me"),
    ])
    .await;
    assert_eq!((me.status, me.version.as_str()), (200, "2"), "{}", me.body);
    assert!(me.body.contains(&email), "{}", me.body);

    // What the instance hears of an HTTP/2 request: HTTPS as the scheme, cookies split
    // across fields joined again, no token of the client's.
    let echoed = curl(&[
        "--http2",
        "--cacert",
        ca,
        "-H",
        "cookie: a=1",
        "-H",
        "cookie: b=2",
        &https(&sys, "/api/echo/headers"),
    ])
    .await;
    assert_eq!(echoed.status, 200, "{}", echoed.body);
    let heard: Value = serde_json::from_str(&echoed.body).unwrap();
    let heard = &heard["data"];
    assert_eq!(heard["x-forwarded-proto"], "https", "{heard}");
    assert!(
        heard["forwarded"]
            .as_str()
            .unwrap()
            .ends_with("proto=https"),
        "{heard}"
    );
    assert_eq!(heard["cookie"], "a=1; b=2", "{heard}");
    assert!(heard.get("authorization").is_none(), "{heard}");

    // Python's ssl: verified against the CA, TLS 1.3 by default, 1.2 when capped, AEAD only.
    let got = python(&["get", &products, ca]).await;
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["tls"], "TLSv1.3", "{got}");
    let got = python(&["get", &products, ca, "1.2"]).await;
    assert_eq!(
        (got["status"].as_u64(), got["tls"].as_str()),
        (Some(200), Some("TLSv1.2")),
        "{got}"
    );
    let cipher = got["cipher"].as_str().unwrap();
    assert!(
        cipher.starts_with("ECDHE-") && (cipher.contains("GCM") || cipher.contains("CHACHA20")),
        "{cipher}"
    );

    // A returning client resumes its session (no key exchange, no signature), in both.
    let tls = sys
        .gateway_tls
        .as_ref()
        .unwrap()
        .trim_start_matches("https://");
    let (host, port) = tls.rsplit_once(':').unwrap();
    let resumed = python(&["resume", host, port, ca]).await;
    assert_eq!(
        resumed["1.3"],
        serde_json::json!([false, true]),
        "{resumed}"
    );
    assert_eq!(
        resumed["1.2"],
        serde_json::json!([false, true]),
        "{resumed}"
    );

    // Plain HTTP is redirected to the same target over HTTPS, method kept (308); health
    // probes are still answered.
    let plain = curl(&[&format!("{}/api/catalog/products?limit=2", sys.gateway)]).await;
    assert_eq!(plain.status, 308, "{}", plain.body);
    assert_eq!(plain.location, products);
    let followed = curl(&[
        "-L",
        "--cacert",
        ca,
        &format!("{}/api/catalog/products?limit=2", sys.gateway),
    ])
    .await;
    assert_eq!(
        (followed.status, followed.version.as_str()),
        (200, "2"),
        "{}",
        followed.body
    );
    assert_eq!(
        curl(&[&format!("{}/health/ready", sys.gateway)])
            .await
            .status,
        200
    );
    let odd_host = curl(&[
        "-H",
        "host: evil.example/x",
        &format!("{}/api/catalog/products", sys.gateway),
    ])
    .await;
    assert_eq!(odd_host.status, 400, "{}", odd_host.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_without_a_failed_request() {
    let sys = System::start_with(with_echo("plain = \"refuse\"")).await;
    let ca_file = sys.development_ca();
    let ca = path_str(&ca_file);
    let url = https(&sys, "/api/catalog/products?limit=1");

    // Plain HTTP is refused, with the envelope's error.
    let plain = curl(&[&format!("{}/api/catalog/products", sys.gateway)]).await;
    assert_eq!(plain.status, 403, "{}", plain.body);
    assert!(plain.body.contains("https_required"), "{}", plain.body);

    // New connections (a full handshake each) for four seconds; a second in, a new
    // certificate from the same CA is written over the old files, chain first and key after
    // (as a careless renewal script would: for a moment the two do not match).
    let load = tokio::spawn({
        let (url, ca) = (url.clone(), ca.to_string());
        async move { python(&["load", &url, &ca, "4"]).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (chain, key) = sys.gateway_certificate();
    let staging = sys.dir.join("renewed");
    let authority =
        tessera_tls::Authority::load_or_create(ca_file.parent().unwrap(), "unused").unwrap();
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let renewed = authority.issue_server(&staging, "gateway", &names).unwrap();
    std::fs::copy(&renewed.chain, &chain).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::copy(&renewed.key, &key).unwrap();

    let load = load.await.unwrap();
    assert_eq!(load["failures"], 0, "{load}");
    let certs = load["certs"].as_array().unwrap();
    assert_eq!(
        certs.len(),
        2,
        "the old certificate, then the new one: {load}"
    );
    let served_now = python(&["get", &url, ca]).await;
    assert_eq!(served_now["cert"], certs[1][0], "{served_now}");
    assert!(sys.log().contains("certificate reloaded"));
}

type TlsStream = tessera_tls::tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the gateway offering `alpn`, verified against the development CA.
async fn tls_connect(sys: &System, alpn: &[&[u8]]) -> TlsStream {
    tls_connect_reading(sys, alpn, None).await
}

/// The same, with a receive buffer of `rcvbuf` bytes: a client that reads little.
async fn tls_connect_reading(sys: &System, alpn: &[&[u8]], rcvbuf: Option<u32>) -> TlsStream {
    use tessera_tls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in tessera_tls::certificates::read_chain(&sys.development_ca()).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tessera_tls::provider())
        .with_protocol_versions(tessera_tls::VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let address = sys
        .gateway_tls
        .as_ref()
        .unwrap()
        .trim_start_matches("https://");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = socket.connect(address.parse().unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tessera_tls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// An HTTP/2 connection over TLS, and the task that drives it (its result: how it ended).
async fn h2_connect(
    sys: &System,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = tls_connect(sys, &[b"h2"]).await;
    let (send, conn) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
    (send, tokio::spawn(conn))
}

fn get(url: &str) -> http::Request<()> {
    http::Request::get(url).body(()).unwrap()
}

/// Opens HTTP/2 on `conn` and sends `frame` 5,000,000 times without reading: whether the
/// gateway `"stalled"` it (stopped reading), `"closed"` the connection, or `"accepted"` it all.
async fn flood(mut conn: TlsStream, frame: &[u8]) -> &'static str {
    use tokio::io::AsyncWriteExt as _;
    if conn
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .is_err()
    {
        return "closed";
    }
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 10_000)
        .collect();
    for _ in 0..500 {
        if tokio::time::timeout(Duration::from_secs(2), conn.write_all(&burst))
            .await
            .is_err()
        {
            return "stalled";
        }
        if conn.flush().await.is_err() {
            return "closed";
        }
    }
    "accepted"
}

/// How many requests the echo service received on `path`.
async fn echo_count(sys: &System, path: &str) -> u64 {
    let (status, body) = sys.get("/api/echo/count", None).await;
    assert_eq!(status, 200, "{body}");
    body["data"][path].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_is_cut_off_and_other_clients_keep_being_served() {
    let mut opts = with_echo("plain = \"serve\"");
    opts.http2 = "h2c = true\nmax_header_list_bytes = 8192".into();
    opts.body_timeout_ms = Some(1000);
    let sys = System::start_with(opts).await;
    let ca = sys.development_ca();
    let ca = path_str(&ca);
    let products = https(&sys, "/api/catalog/products?limit=1");
    let gateway_pid = sys.gateway_pid();
    let rss_before = tessera_testkit::rss_kb(gateway_pid).unwrap();

    // h2c: HTTP/2 with prior knowledge on the plain listener, as configured.
    let h2c = curl(&[
        "--http2-prior-knowledge",
        &format!("{}/api/catalog/products?limit=1", sys.gateway),
    ])
    .await;
    assert_eq!(
        (h2c.status, h2c.version.as_str()),
        (200, "2"),
        "{}",
        h2c.body
    );

    // A stream that never sends its body: 408 after the body timeout, not a stream held open.
    let (mut send, _conn) = h2_connect(&sys).await;
    let post = http::Request::post(https(&sys, "/api/echo/never"))
        .body(())
        .unwrap();
    let started = std::time::Instant::now();
    let (response, _body_stream) = send.send_request(post, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A header list over the limit: 431, nothing reaches the instance, and the connection
    // still serves the next request.
    let big = http::Request::get(https(&sys, "/api/echo/big"))
        .header("x-big", "a".repeat(12 * 1024))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(big, true).unwrap();
    match response.await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_reset() || e.is_remote(), "{e}"),
    }
    let (response, _) = send
        .ready()
        .await
        .unwrap()
        .send_request(get(&products), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(echo_count(&sys, "/api/echo/big").await, 0);

    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once, thousands of them.
    // The gateway closes the connection, long before it has forwarded them all.
    let (send, conn) = h2_connect(&sys).await;
    let mut sent = 0;
    let mut send = Some(send);
    while sent < 5000 {
        let Some(s) = send.take() else { break };
        let Ok(mut ready) = s.ready().await else {
            break;
        };
        match ready.send_request(get(&https(&sys, "/api/echo/reset")), true) {
            Ok((response, _)) => drop(response), // cancelled: RST_STREAM
            Err(_) => break,
        }
        sent += 1;
        send = Some(ready);
    }
    drop(send);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("connection ends")
        .unwrap();
    let forwarded = echo_count(&sys, "/api/echo/reset").await;
    eprintln!("rapid reset: {sent} sent, {forwarded} forwarded, the connection ended {ended:?}");
    assert!(
        ended.is_err() || sent < 5000,
        "the connection was not cut: {sent} sent, {ended:?}"
    );
    assert!(
        forwarded < 1000,
        "{forwarded} of {sent} reset streams forwarded"
    );

    // A SETTINGS flood from a client that never reads: each SETTINGS owes an acknowledgement,
    // and the gateway reads no further frame until it is written, so the client is stopped
    // once the socket's buffers are full; the gateway's memory stays put, and others are
    // served meanwhile.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0]; // an empty SETTINGS frame
    let flooding = tokio::spawn(flood(
        tls_connect_reading(&sys, &[b"h2"], Some(4096)).await,
        SETTINGS,
    ));
    for _ in 0..5 {
        let other = curl(&["--http2", "--cacert", ca, &products]).await;
        assert_eq!(other.status, 200, "{}", other.body);
    }
    let outcome = flooding.await.unwrap();
    eprintln!("SETTINGS flood: {outcome}");
    assert_ne!(
        outcome, "accepted",
        "5,000,000 SETTINGS frames taken without a pause"
    );

    // And a ping flood likewise (each PING owes a PONG).
    let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let outcome = flood(tls_connect_reading(&sys, &[b"h2"], Some(4096)).await, &ping).await;
    eprintln!("PING flood: {outcome}");
    assert_ne!(outcome, "accepted", "5,000,000 PINGs taken without a pause");
    let other = curl(&["--http2", "--cacert", ca, &products]).await;
    assert_eq!(other.status, 200, "{}", other.body);

    let rss_after = tessera_testkit::rss_kb(gateway_pid).unwrap();
    assert!(tessera_testkit::alive(gateway_pid));
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the gateway grew from {rss_before} kB to {rss_after} kB"
    );
}
