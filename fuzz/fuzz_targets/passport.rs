//! Passport verification (`tessera::passport::PassportKeys::verify`): arbitrary tokens; tokens
//! correctly signed over arbitrary claims, so that the hand-written claims scanner and its
//! serde fallback are reached; and minted passports with arbitrary claim strings.
//!
//! Asserts: no panic; a token verifies only if one of the keys signed exactly it; the claims
//! of a signed token read as serde_json reads them (the scanner never disagrees with it), and
//! the verdict follows from them (malformed, expired, another audience, or these claims);
//! what `mint` makes verifies, with the claims it was given.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use tessera::passport::{Passport, PassportError, PassportKeys};
use tessera::trace::TraceContext;
use tessera_fuzz::Plan;

const AUDIENCE: &str = "shop";
/// The two keys, `k1` (signs) and `k2`: their ids and secrets.
const KEYS: [(&str, [u8; 32]); 2] = [("k1", [7; 32]), ("k2", [9; 32])];

fn keys() -> PassportKeys {
    let spec: Vec<String> = KEYS
        .iter()
        .map(|(kid, secret)| format!("{kid}:{}", URL_SAFE_NO_PAD.encode(secret)))
        .collect();
    PassportKeys::from_spec(&spec.join(","), AUDIENCE).expect("the fuzz keys")
}

fn mac(secret: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(signed);
    mac.finalize().into_bytes().to_vec()
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static KEYS_: PassportKeys = keys());
    let plan = Plan::new(data);
    KEYS_.with(|keys| match plan.flags % 3 {
        0 => arbitrary_token(keys, plan.payload),
        1 => signed_claims(keys, plan.flags >> 2, plan.payload),
        _ => minted(keys, plan.payload),
    });
});

/// Any text as a token: it verifies only if it is signed, and then says what it signed.
fn arbitrary_token(keys: &PassportKeys, payload: &[u8]) {
    let Ok(token) = std::str::from_utf8(payload) else {
        return;
    };
    let Ok(passport) = keys.verify(token) else {
        return;
    };
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("a verified signature");
    assert!(
        KEYS.iter()
            .any(|(_, secret)| mac(secret, signed.as_bytes()) == signature),
        "verified without a key's signature: {token}"
    );
    let claims = URL_SAFE_NO_PAD
        .decode(signed.split('.').nth(1).unwrap())
        .unwrap();
    let read: Passport = serde_json::from_slice(&claims).expect("verified claims are JSON");
    assert_eq!(passport, read);
}

/// `claims` signed by a key, under a header chosen by `choice`.
fn signed_claims(keys: &PassportKeys, choice: u8, claims: &[u8]) {
    let (kid, secret) = KEYS[usize::from(choice & 1)];
    let header = if choice & 2 == 0 {
        // The spelling the keys sign with, matched without parsing.
        format!(r#"{{"typ":"JWT","alg":"HS256","kid":"{kid}"}}"#)
    } else {
        // Another minter's spelling, parsed.
        format!(r#"{{ "kid": "{kid}", "alg": "HS256" }}"#)
    };
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = URL_SAFE_NO_PAD.encode(mac(&secret, signed.as_bytes()));
    let token = format!("{signed}.{signature}");

    let before = tessera::unix_now();
    let got = keys.verify(&token);
    let after = tessera::unix_now();
    let expected = serde_json::from_slice::<Passport>(claims).ok();
    match (&got, &expected) {
        (Err(PassportError::Malformed), None) => {}
        (Ok(p), Some(e)) => assert_eq!(p, e),
        (Err(PassportError::WrongAudience), Some(e)) => assert_ne!(e.aud, AUDIENCE),
        (Err(PassportError::Expired), Some(e)) => assert!(e.exp.saturating_add(5) < after),
        _ => panic!("{got:?} for claims serde_json reads as {expected:?}"),
    }
    if let Some(e) = expected
        && e.aud == AUDIENCE
        && e.exp.saturating_add(5) >= before
        && before == after
    {
        assert_eq!(got, Ok(e), "valid claims refused");
    }
}

/// A passport minted with claim strings from `payload` (split at 0xff bytes: issuer, subject,
/// session, then roles) verifies with those claims.
fn minted(keys: &PassportKeys, payload: &[u8]) {
    let mut parts = payload
        .split(|b| *b == 0xff)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let issuer = parts.next().unwrap_or_default();
    let sub = parts.next().unwrap_or_default();
    let sid = parts.next().filter(|s| !s.is_empty());
    let roles: Vec<String> = parts.collect();
    let trace = TraceContext::new_root();
    let token = keys.mint(&issuer, &sub, &roles, sid.as_deref(), &trace);
    let p = keys.verify(&token).expect("a minted passport verifies");
    assert_eq!(
        (p.iss, p.aud, p.sub, p.roles, p.sid, p.tid),
        (
            issuer,
            AUDIENCE.to_string(),
            sub,
            roles,
            sid,
            trace.trace_id_hex()
        )
    );
    assert_eq!(p.exp - p.iat, tessera::passport::TTL_SECS);
}
