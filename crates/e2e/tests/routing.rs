//! The gateway matches a route on the path the services route on: spellings of a path that a
//! service would read as another (a fragment, dot segments, empty segments, percent-encoded
//! letters) are refused or matched as that path, so that a route's limits cannot be stepped
//! around by spelling its path differently.

use tessera_testkit::{ADMIN_EMAIL, Options, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a login with a wrong password to `target`, as written, over a raw socket (an HTTP
/// client library would normalise the target first); the status of the answer.
async fn login_at(sys: &System, target: &str) -> u16 {
    let body = format!(r#"{{"email":"{ADMIN_EMAIL}","password":"wrong-password"}}"#);
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut sock = TcpStream::connect(sys.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sock.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{target}: not an answer: {answer:?}"))
}

#[tokio::test]
async fn the_login_limit_cannot_be_stepped_around_by_spelling_the_path_differently() {
    let sys = System::start_with(Options {
        extra_manifest: r#"
[[route]]
prefix = "/api/auth/login"
service = "auth"
auth = "public"
rate_limit = { per_ip = "3/m" }
"#
        .into(),
        ..Options::default()
    })
    .await;
    // The limit's three attempts reach the password check.
    for _ in 0..3 {
        assert_eq!(login_at(&sys, "/api/auth/login").await, 401);
    }
    assert_eq!(login_at(&sys, "/api/auth/login").await, 429);
    // Every other spelling of the login path is refused, or counted by the login limit (which
    // is used up): none reaches the password check, nor falls back to the `/api/auth` route.
    for target in [
        "/api/auth/login#x",
        "/api/auth/login?x=1#frag",
        "/api/auth/./login",
        "/api/auth/x/../login",
        "/api/auth/%2e/login",
        "/api/auth/%2E%2E/auth/login",
        "/api//auth/login",
        "/api/auth//login",
        "/api/auth/%6Cogin",
        "/api/auth/%6cogin",
        "/api/auth/log%69n",
        "/api/%61uth/login",
        "/api/auth/login/",
    ] {
        for _ in 0..2 {
            let status = login_at(&sys, target).await;
            assert!(
                matches!(status, 400 | 429),
                "{target}: {status}, neither refused nor limited"
            );
        }
    }
    // Other routes are matched as before.
    let (status, body) = sys.get("/api/catalog/products?limit=1", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sys.get("/api/%63atalog/products?limit=1", None).await;
    assert_ne!(status, 400, "an encoded letter is that letter: {body}");
}
