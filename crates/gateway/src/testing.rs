//! What the stages' unit tests share: message heads parsed the way the server and the pool
//! parse them, a request borrowed from one, a route, a token verifier that trusts a fixed
//! key, tokens signed with it, and an upstream instance on a real socket.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tessera::ServiceClient;
use tessera::passport::PassportKeys;
use tessera::registry::{Discovery, Instance};
use tessera::resilience::RateLimiter;
use tessera_manifest::{self as manifest, AuthMode, Fallback, Resilience, RouteLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fields::{self, Field, Fields};
use crate::forward::Forwarder;
use crate::pool::Pool;
use crate::routes::CompiledRoute;
use crate::server::Request;
use crate::tokens::TokenVerifier;
use crate::upstream::Upstream;

/// A message head and its fields, parsed in place.
pub struct Head {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

impl Head {
    /// `lines` are header fields, `Name: value`.
    pub fn request(lines: &[&str]) -> Self {
        Self::parse(
            format!("GET / HTTP/1.1\r\n{}\r\n", crlf(lines)),
            |slots, bytes| {
                let mut req = httparse::Request::new(slots);
                req.parse(bytes).expect("a request head").is_complete()
            },
        )
    }

    /// `lines` are header fields, `Name: value`.
    pub fn response(lines: &[&str]) -> Self {
        Self::parse(
            format!("HTTP/1.1 200 OK\r\n{}\r\n", crlf(lines)),
            |slots, bytes| {
                let mut resp = httparse::Response::new(slots);
                resp.parse(bytes).expect("a response head").is_complete()
            },
        )
    }

    fn parse(
        text: String,
        parse: impl for<'h> Fn(&mut [httparse::Header<'h>], &'h [u8]) -> bool,
    ) -> Self {
        let bytes = text.into_bytes();
        let mut fields = Vec::new();
        {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            assert!(parse(&mut slots, &bytes), "a whole head");
            let found: Vec<_> = slots
                .iter()
                .take_while(|h| !h.name.is_empty())
                .copied()
                .collect();
            fields::record(&bytes, &found, &mut fields);
        }
        Self { bytes, fields }
    }

    pub fn fields(&self) -> Fields<'_> {
        Fields::new(&self.bytes, &self.fields)
    }

    /// A request to `path` with these fields and `body`, from 127.0.0.1.
    pub fn to<'a>(&'a self, method: Method, path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            method,
            target: path,
            path,
            fields: self.fields(),
            body: Ok(body),
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            secure: false,
            start: tokio::time::Instant::now(),
        }
    }
}

fn crlf(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\r\n")).collect()
}

/// A route to `service` under `/api`.
pub fn route(service: &str, auth: AuthMode, roles: &[&str]) -> CompiledRoute {
    limited_route(service, auth, roles, None, None)
}

pub fn limited_route(
    service: &str,
    auth: AuthMode,
    roles: &[&str],
    rate_limit: Option<RouteLimits>,
    fallback: Option<Fallback>,
) -> CompiledRoute {
    let (per_ip, per_user) = rate_limit.map_or((None, None), |l| (l.per_ip, l.per_user));
    CompiledRoute {
        prefix: "/api".into(),
        label: "/api".into(),
        service: service.into(),
        upstream: Arc::new(Upstream::new(service, &Resilience::default())),
        auth,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        shared_per_ip: per_ip.as_ref().map(tessera_shared::SharedLimit::new),
        shared_per_user: per_user.as_ref().map(tessera_shared::SharedLimit::new),
        per_ip: per_ip.map(|l| Arc::new(RateLimiter::new(l))),
        per_user: per_user.map(|l| Arc::new(RateLimiter::new(l))),
        fallback,
        websocket: false,
        grpc: false,
    }
}

pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "tessera-test";
pub const KID: &str = "k1";
/// An Ed25519 key pair made for these tests: the private key as PKCS#8 DER, the public one
/// as a JWK's `x`.
const SEED: [u8; 32] = [
    0xc0, 0x85, 0xbc, 0xc8, 0xb7, 0x06, 0x2f, 0x45, 0xea, 0x08, 0xfd, 0x8a, 0x57, 0x64, 0x71, 0xbd,
    0xef, 0xfe, 0x3f, 0x9e, 0xac, 0xec, 0x46, 0x95, 0xa6, 0x7c, 0xb9, 0x0a, 0x65, 0x31, 0x08, 0xa1,
];
const PUBLIC_X: &str = "UBv6zT6tDPE0P1xP7a07olk-mGz7vsA0Fia4KMCPHcw";

/// The passport keys of a test system: the gateway's, and the services' that verify them.
pub fn passport_keys() -> PassportKeys {
    PassportKeys::from_spec("p1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", "test")
        .expect("a key spec")
}

/// A verifier that trusts [`KID`] and has no token service to ask about any other key (the
/// registry view is empty: a refresh finds no instance).
pub fn verifier() -> Arc<TokenVerifier> {
    verifier_for("auth")
}

/// [`verifier`], for tokens issued by `service`.
pub fn verifier_for(service: &str) -> Arc<TokenVerifier> {
    let client = ServiceClient::new(
        Discovery::fixed([]),
        Arc::new(passport_keys()),
        "gateway",
        Duration::from_secs(1),
    );
    let verifier = TokenVerifier::new(
        manifest::Tokens {
            service: service.into(),
            jwks_path: "/.well-known/jwks.json".into(),
            revocations_path: "/internal/revocations".into(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
        },
        client,
    );
    verifier.trust(KID, PUBLIC_X);
    verifier
}

/// An access token for `sub` signed with the trusted key, expiring `ttl` seconds from now
/// (negative: in the past).
pub fn token(sub: &str, roles: &[&str], sid: Option<&str>, ttl: i64) -> String {
    sign(KID, &SEED, sub, roles, sid, ttl)
}

/// The same, signed with another key under the trusted key's id: a forgery.
pub fn forged(sub: &str) -> String {
    sign(KID, &[7; 32], sub, &[], None, 600)
}

/// A token signed under a key id the verifier has never seen.
pub fn unknown_key(sub: &str) -> String {
    sign("k-unknown", &SEED, sub, &[], None, 600)
}

fn sign(
    kid: &str,
    seed: &[u8; 32],
    sub: &str,
    roles: &[&str],
    sid: Option<&str>,
    ttl: i64,
) -> String {
    const PKCS8_ED25519: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = [&PKCS8_ED25519[..], &seed[..]].concat();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let exp = tessera::unix_now() as i64 + ttl;
    let claims = serde_json::json!({
        "sub": sub, "roles": roles, "sid": sid, "exp": exp, "iss": ISSUER, "aud": AUDIENCE,
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .expect("a signed token")
}

/// A gateway with `routes`, without tokens, forwarding to `shop` at a closed port.
pub fn gateway(routes: crate::routes::RouteTable) -> crate::proxy::Gateway {
    crate::proxy::Gateway {
        routes: arc_swap::ArcSwap::from_pointee(routes),
        tokens: None,
        revoke_for: Duration::from_secs(60),
        forwarder: forwarder("shop", "127.0.0.1:9"),
        tunnel_idle: Duration::from_secs(60),
        tunnel_max: Duration::from_secs(600),
        streams: Default::default(),
        shared: None,
    }
}

/// A forwarder to one instance of `service`, at `address`, with default resilience.
pub fn forwarder(service: &str, address: &str) -> Forwarder {
    Forwarder {
        discovery: Discovery::fixed([Instance {
            id: format!("{service}-1"),
            service: service.into(),
            address: address.into(),
            version: "test".into(),
            metadata: Default::default(),
            weight: None,
        }]),
        keys: passport_keys(),
        pool: Pool::new(4, Duration::from_secs(1)),
        proxies: Default::default(),
        timeout: Duration::from_secs(2),
        max_response: 1 << 20,
        anonymous: Default::default(),
    }
}

/// An instance on 127.0.0.1 that answers every request with `answer` and keeps the heads it
/// was sent.
pub async fn upstream(answer: &'static [u8]) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let heads = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    heads.lock().unwrap().push(head);
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, seen)
}

/// An address on 127.0.0.1 where nothing listens.
pub fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
