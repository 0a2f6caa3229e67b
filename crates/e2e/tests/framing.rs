//! The gateway's client side against hostile framing, over raw sockets as an attacker would
//! send it: chunk sizes near 2^64 at both ends (a client's request, an instance's answer),
//! chunk extensions that would have the gateway keep a raw body a thousand times its size,
//! bodies sent too slowly, HTTP/1.0 with chunked, and the Host rules.

use std::time::{Duration, Instant};

use tessera_testkit::{Options, System, alive, rss_kb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_echo() -> Options {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/echo_service.py"
    );
    Options {
        extra_manifest: format!(
            r#"
[[route]]
prefix = "/api/echo"
service = "echo"
auth = "public"

[services.echo]
command = ["python3", "{script}"]
"#
        ),
        ..Options::default()
    }
}

async fn connect(sys: &System) -> TcpStream {
    TcpStream::connect(sys.gateway.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// What the gateway sends back on `sock` until it closes the connection, and whether it
/// closed it within `wait`.
async fn read_until_closed(sock: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(wait, async {
        loop {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Sends `request` on a new connection; the answer, and whether the connection was closed
/// after it (within 3 s).
async fn exchange(sys: &System, request: &[u8]) -> (String, bool) {
    let mut sock = connect(sys).await;
    sock.write_all(request).await.unwrap();
    read_until_closed(&mut sock, Duration::from_secs(3)).await
}

fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {answer:?}"))
}

#[tokio::test]
async fn chunk_sizes_near_2_pow_64_are_refused_at_both_ends() {
    let sys = System::start_with(with_echo()).await;
    let gateway = sys.gateway_pid();

    // A client's request: a few bytes, then a chunk that claims nearly 2^64 more.
    let (answer, closed) = exchange(
        &sys,
        b"POST /api/echo/headers HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\nfffffffffffffff0\r\nxx",
    )
    .await;
    assert!(
        matches!(status_of(&answer), 400 | 413),
        "a clean refusal: {answer}"
    );
    assert!(answer.contains("\"success\":false"), "{answer}");
    assert!(closed, "and the connection closed: {answer}");

    // An instance's answer: the gateway's client refuses it, and the client hears 502.
    let (status, body) = sys.get("/api/echo/overflow", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("bad_gateway")),
        "{body}"
    );

    assert!(alive(gateway), "the gateway is still running");
    assert_eq!(sys.get("/api/echo/headers", None).await.0, 200);
}

#[tokio::test]
async fn chunk_extensions_do_not_grow_the_gateway() {
    let sys = System::start_with(with_echo()).await;
    let gateway = sys.gateway_pid();
    let before = rss_kb(gateway).unwrap();

    // 150,000 one-byte chunks, each with 1,000 bytes of extension: a 150 KB body in 150 MB.
    let chunk = format!("1;{}\r\nx\r\n", "e".repeat(1000));
    let block = chunk.repeat(100);
    let sock = connect(&sys).await;
    let (mut reader, mut writer) = sock.into_split();
    let send = tokio::spawn(async move {
        writer
            .write_all(
                b"POST /api/echo/headers HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await?;
        for _ in 0..1500 {
            writer.write_all(block.as_bytes()).await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        std::io::Result::Ok(())
    });
    let read = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(120), async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&got).into_owned()
    });
    let mut peak = before;
    let started = Instant::now();
    while !read.is_finished() && started.elapsed() < Duration::from_secs(120) {
        peak = peak.max(rss_kb(gateway).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = read.await.unwrap();
    let _ = send.await;
    peak = peak.max(rss_kb(gateway).unwrap_or(0));
    let grown_mb = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mb < 20,
        "the gateway grew by {grown_mb} MB for a 150 KB body"
    );
    assert!(
        matches!(status_of(&answer), 400 | 413),
        "answered, and refused: {answer}"
    );
    assert!(alive(gateway));
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_like_a_slow_head() {
    let sys = System::start_with(Options {
        body_timeout_ms: Some(1000),
        ..with_echo()
    })
    .await;
    let mut sock = connect(&sys).await;
    sock.write_all(b"POST /api/echo/headers HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms: the connection stays busy, the body never comes.
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        if sock.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
        let (_, closed) = read_until_closed(&mut sock, Duration::from_millis(200)).await;
        if closed {
            cut = true;
            break;
        }
    }
    assert!(cut, "a body at 5 bytes/s was still being read after 8 s");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        started.elapsed()
    );
    // A body that arrives in time is read.
    let mut sock = connect(&sys).await;
    sock.write_all(b"GET /api/echo/headers HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sock.write_all(b"cd").await.unwrap();
    let (answer, _) = read_until_closed(&mut sock, Duration::from_secs(3)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}

#[tokio::test]
async fn http_1_0_chunked_closes_and_http_1_1_needs_exactly_one_host() {
    let sys = System::start_with(with_echo()).await;

    // HTTP/1.0 with Transfer-Encoding: its framing is faulty (RFC 9112 §6.1): answered, and
    // the connection closed even though keep-alive was asked for.
    let (answer, closed) = exchange(
        &sys,
        b"GET /api/echo/headers HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(closed, "the connection is closed after it: {answer}");

    // HTTP/1.1: exactly one Host (RFC 9112 §3.2).
    for (request, want) in [
        (&b"GET /api/echo/headers HTTP/1.1\r\n\r\n"[..], 400),
        (
            b"GET /api/echo/headers HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
        ),
        (
            b"GET /api/echo/headers HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            400,
        ),
        (
            b"GET /api/echo/headers HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            200,
        ),
        (b"GET /api/echo/headers HTTP/1.0\r\n\r\n", 200),
        (
            b"GET /api/echo/headers HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
        ),
    ] {
        let (answer, closed) = exchange(&sys, request).await;
        assert_eq!(
            status_of(&answer),
            want,
            "{}: {answer}",
            String::from_utf8_lossy(request)
        );
        assert!(closed, "{}", String::from_utf8_lossy(request));
    }
}
