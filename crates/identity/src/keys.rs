//! The control keys: what issues credentials and checks them.
//!
//! A key set is written `kid:base64secret[,kid:base64secret…]` (the passport's key set has the
//! same form, and reads through [`parse_key_spec`] too). **The first key issues; every key
//! checks**, so rotating is: put a new key first, hand every process a new credential, then
//! drop the old key.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::credential::split;
use crate::{Credential, Principal};

/// The environment variable the control plane may read its keys from (else it reads the
/// state directory's `control.keys`).
pub const KEYS_ENV: &str = "TESSERA_CONTROL_KEYS";

/// Shorter secrets are refused.
const MIN_SECRET: usize = 32;

/// A key set that does not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid key set: {0}")]
pub struct KeySpecError(pub String);

/// Reads `kid:base64secret[,kid:base64secret…]`: each key's id and secret, in order. Secrets
/// are standard or URL-safe base64 of at least 32 bytes; ids are letters and digits.
pub fn parse_key_spec(spec: &str) -> Result<Vec<(String, Vec<u8>)>, KeySpecError> {
    let mut keys = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kid, secret) = part
            .split_once(':')
            .ok_or_else(|| KeySpecError(format!("a key reads kid:base64secret, not {part:?}")))?;
        if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeySpecError(format!(
                "key id {kid:?} must be letters and digits"
            )));
        }
        let secret = STANDARD
            .decode(secret)
            .or_else(|_| URL_SAFE_NO_PAD.decode(secret))
            .map_err(|_| KeySpecError(format!("key {kid:?} is not base64")))?;
        if secret.len() < MIN_SECRET {
            return Err(KeySpecError(format!(
                "key {kid:?} is shorter than {MIN_SECRET} bytes"
            )));
        }
        keys.push((kid.to_string(), secret));
    }
    if keys.is_empty() {
        return Err(KeySpecError("no keys".into()));
    }
    Ok(keys)
}

/// A key set with one fresh random key whose id is `prefix` and the time (unix seconds).
pub fn generate_key_spec(prefix: char, now_secs: u64) -> String {
    let secret: [u8; 32] = rand::random();
    format!("{prefix}{now_secs}:{}", STANDARD.encode(secret))
}

/// The keys that issue and check credentials. Held by the control plane and the runner only.
pub struct ControlKeys {
    keys: Vec<(String, Hmac<Sha256>)>,
}

impl ControlKeys {
    pub fn from_spec(spec: &str) -> Result<Self, KeySpecError> {
        let keys = parse_key_spec(spec)?
            .into_iter()
            .map(|(kid, secret)| {
                let mac = Hmac::new_from_slice(&secret).expect("HMAC takes keys of any length");
                (kid, mac)
            })
            .collect();
        Ok(Self { keys })
    }

    /// A fresh key set spec with one key, as `tessera up` makes on first start.
    pub fn generate_spec(now_secs: u64) -> String {
        generate_key_spec('c', now_secs)
    }

    /// A secret for `purpose` derived from the first key (HMAC-SHA256 of `secret:<purpose>`):
    /// for an engine's password (`nats:order`), so that a process has no second secret to be
    /// given, and the engine never learns the credential that opens the control plane. Not a
    /// credential: `verify` knows nothing of it. Changes when the keys rotate.
    pub fn secret_for(&self, purpose: &str) -> String {
        let (_, mac) = &self.keys[0];
        URL_SAFE_NO_PAD.encode(mac_of(mac, &format!("secret:{purpose}")))
    }

    /// The credential of `principal`, under the first key.
    pub fn issue(&self, principal: &Principal) -> Credential {
        let (kid, mac) = &self.keys[0];
        let signed = format!("{principal}.{kid}");
        let tag = mac_of(mac, &signed);
        Credential::new(
            principal.clone(),
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag)),
        )
    }

    /// Who `token` speaks for, if one of these keys made it.
    pub fn verify(&self, token: &str) -> Option<Principal> {
        let (principal, kid, tag) = split(token).ok()?;
        let (_, mac) = self.keys.iter().find(|(k, _)| k == kid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let signed = &token[..principal.len() + 1 + kid.len()];
        let mut mac = mac.clone();
        mac.update(signed.as_bytes());
        // In constant time: a MAC that is almost right says nothing about the right one.
        mac.verify_slice(&tag).ok()?;
        Principal::parse(principal)
    }
}

impl std::fmt::Debug for ControlKeys {
    /// The key ids only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ControlKeys").field("kids", &kids).finish()
    }
}

fn mac_of(mac: &Hmac<Sha256>, signed: &str) -> Vec<u8> {
    let mut mac = mac.clone();
    mac.update(signed.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secrets_differ_by_purpose_and_are_no_credentials() {
        let k = keys();
        let a = k.secret_for("nats:order");
        assert_eq!(a, k.secret_for("nats:order"));
        assert_ne!(a, k.secret_for("nats:payment"));
        assert!(k.verify(&a).is_none());
        assert!(
            !k.issue(&Principal::Service("order".into()))
                .token()
                .contains(&a)
        );
    }
    use crate::CredentialError;

    fn keys() -> ControlKeys {
        ControlKeys::from_spec(&ControlKeys::generate_spec(1)).unwrap()
    }

    #[test]
    fn a_credential_proves_its_principal_and_nothing_else() {
        let keys = keys();
        let catalog = keys.issue(&Principal::Service("catalog".into()));
        assert_eq!(
            keys.verify(catalog.token()),
            Some(Principal::Service("catalog".into()))
        );
        assert!(catalog.token().starts_with("service:catalog.c1."));
        // Its principal changed, its MAC kept: refused.
        let forged = catalog
            .token()
            .replacen("service:catalog", "service:auth", 1);
        assert_eq!(keys.verify(&forged), None);
        // Another system's keys made it: refused.
        assert_eq!(super::tests::keys().verify(catalog.token()), None);
        // A MAC one bit off, a missing part, an unknown key id: refused.
        let mut flipped = catalog.token().to_string();
        let last = flipped.pop().unwrap();
        flipped.push(if last == 'A' { 'B' } else { 'A' });
        for bad in [
            flipped.as_str(),
            "service:catalog",
            "admin..x",
            &catalog.token().replacen(".c1.", ".c2.", 1),
        ] {
            assert_eq!(keys.verify(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_first_key_issues_and_every_key_checks() {
        let old = ControlKeys::generate_spec(1);
        let new = ControlKeys::generate_spec(2);
        let before = ControlKeys::from_spec(&old)
            .unwrap()
            .issue(&Principal::Gateway);
        let rotated = ControlKeys::from_spec(&format!("{new},{old}")).unwrap();
        assert_eq!(rotated.verify(before.token()), Some(Principal::Gateway));
        let after = rotated.issue(&Principal::Gateway);
        assert!(after.token().starts_with("gateway.c2."));
        assert_eq!(
            ControlKeys::from_spec(&old).unwrap().verify(after.token()),
            None
        );
    }

    #[test]
    fn a_credential_reads_back_and_never_prints_its_token() {
        let admin = keys().issue(&Principal::Admin);
        let read = Credential::parse(admin.token()).unwrap();
        assert_eq!(read, admin);
        assert_eq!(format!("{admin} {admin:?}"), "admin Credential(admin)");
        assert_eq!(
            Credential::parse("root.c1.AAAA"),
            Err(CredentialError::Principal)
        );
        assert_eq!(Credential::parse("admin"), Err(CredentialError::Malformed));
        // Nothing but a key id and a MAC may follow the principal: no header injection.
        for bad in [
            "admin.c1.AA\r\nX-Evil: 1",
            "admin.c 1.AAAA",
            "admin.c1.AA==",
        ] {
            assert_eq!(
                Credential::parse(bad),
                Err(CredentialError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_sets_that_do_not_read_say_why() {
        for (spec, why) in [
            ("", "no keys"),
            ("k1", "kid:base64secret"),
            ("k1:AAAA", "shorter than 32 bytes"),
            ("k1:%%%", "not base64"),
            ("k.1:AAAA", "letters and digits"),
        ] {
            let e = parse_key_spec(spec).unwrap_err();
            assert!(e.0.contains(why), "{spec:?}: {e}");
        }
    }
}
