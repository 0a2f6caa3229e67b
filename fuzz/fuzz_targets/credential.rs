//! Credentials (`tessera_identity`): `ControlKeys::verify` and `Credential::parse` on arbitrary
//! text, credentials issued to arbitrary principals, and key sets as an operator writes them.
//!
//! Asserts: no panic; a token verifies only if a key issued exactly it to its principal; a
//! credential that parses keeps its token and a principal that reads back as itself; what
//! `issue` makes verifies as its principal, and no other token differing from it by a byte
//! does.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use tessera_fuzz::Plan;
use tessera_identity::{ControlKeys, Credential, Principal};

const SECRETS: [(&str, [u8; 32]); 2] = [("c1", [3; 32]), ("c2", [5; 32])];

fn spec(keys: &[(&str, [u8; 32])]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(kid, secret)| format!("{kid}:{}", STANDARD.encode(secret)))
        .collect();
    keys.join(",")
}

fuzz_target!(|data: &[u8]| {
    let plan = Plan::new(data);
    let Ok(text) = std::str::from_utf8(plan.payload) else {
        return;
    };
    let keys = ControlKeys::from_spec(&spec(&SECRETS)).unwrap();
    match plan.flags % 3 {
        0 => arbitrary_token(&keys, text),
        1 => issued(&keys, text, plan.sizes.first().copied(), plan.flags),
        _ => {
            // A key set as an operator writes it.
            if let Ok(k) = ControlKeys::from_spec(text) {
                let p = Principal::Gateway;
                assert_eq!(k.verify(k.issue(&p).token()), Some(p));
            }
            let _ = tessera::PassportKeys::from_spec(text, "shop");
        }
    }
});

fn arbitrary_token(keys: &ControlKeys, token: &str) {
    let parsed = Credential::parse(token);
    if let Ok(c) = &parsed {
        assert_eq!(c.token(), token);
        assert_eq!(
            Principal::parse(&c.principal().to_string()).as_ref(),
            Some(c.principal())
        );
        assert!(
            !format!("{c:?}{c}").contains(token),
            "a credential shows its token"
        );
    }
    if let Some(p) = keys.verify(token) {
        let issued: Vec<String> = SECRETS
            .iter()
            .map(|key| {
                let one = ControlKeys::from_spec(&spec(&[*key])).unwrap();
                one.issue(&p).token().to_string()
            })
            .collect();
        assert!(
            issued.iter().any(|t| t == token),
            "verified, never issued: {token}"
        );
        assert_eq!(parsed.map(|c| c.principal().clone()), Ok(p));
    }
}

fn issued(keys: &ControlKeys, principal: &str, at: Option<usize>, flip: u8) {
    let Some(p) = Principal::parse(principal) else {
        return;
    };
    let credential = keys.issue(&p);
    assert_eq!(keys.verify(credential.token()), Some(p.clone()));
    let parsed = Credential::parse(credential.token()).expect("an issued credential parses");
    assert_eq!(parsed.principal(), &p);
    // Tampered with: refused.
    let mut bytes = credential.token().as_bytes().to_vec();
    let at = at.unwrap_or(0) % bytes.len();
    bytes[at] ^= flip | 1;
    if let Ok(tampered) = String::from_utf8(bytes) {
        assert_eq!(keys.verify(&tampered), None, "{tampered}");
    }
}
