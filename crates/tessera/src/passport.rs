//! The passport: a short-lived internal JWT that tells a service who is calling.
//!
//! The gateway verifies the client's access token once and mints a passport for every request
//! it forwards (header `X-Passport`). Services verify it on every request and forward it
//! unchanged on the calls they make, so a whole call tree acts for the same caller and trace.
//! It is HMAC-SHA256 signed with a key shared inside the system: verification costs a hash,
//! not a public-key operation, which matters on a path every request takes. Keys carry a
//! `kid`; the first key of the set signs and every key verifies, which is how keys rotate.
//! The format is specified in `docs/passport.md`.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::trace::TraceContext;

/// The header a passport travels in.
pub const HEADER: &str = "x-passport";
/// The subject of a passport minted for a caller without an access token.
pub const ANONYMOUS: &str = "anonymous";
/// How long a passport lives.
pub const TTL_SECS: u64 = 30;
/// Clock skew tolerated when checking `exp`.
const LEEWAY_SECS: u64 = 5;

/// The passport's claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Passport {
    /// Who minted it: `tessera-gateway`, or `service:<name>` for a service acting for itself.
    pub iss: String,
    /// The system it is valid in (`TESSERA_SYSTEM`).
    pub aud: String,
    /// The user id, `anonymous`, or `service:<name>`.
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The login session the access token belongs to (absent for anonymous callers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The trace id (32 lowercase hex) of the request it was minted for.
    pub tid: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

impl Passport {
    pub fn is_anonymous(&self) -> bool {
        self.sub == ANONYMOUS
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PassportError {
    #[error("missing passport")]
    Missing,
    #[error("malformed passport")]
    Malformed,
    #[error("passport signed with an unknown key")]
    UnknownKey,
    #[error("passport signature is invalid")]
    BadSignature,
    #[error("passport has expired")]
    Expired,
    #[error("passport is for another audience")]
    WrongAudience,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid passport key set: {0}")]
pub struct KeySpecError(String);

/// The system's passport keys: one signs, all verify.
pub struct PassportKeys {
    signing_kid: String,
    signing: EncodingKey,
    header: Header,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
    audience: String,
}

impl std::fmt::Debug for PassportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassportKeys")
            .field("signing_kid", &self.signing_kid)
            .field("kids", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PassportKeys {
    /// Parses `kid:base64secret[,kid:base64secret...]`; secrets must be at least 32 bytes.
    pub fn from_spec(spec: &str, audience: &str) -> Result<Self, KeySpecError> {
        let mut keys = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kid, secret) = part
                .split_once(':')
                .ok_or_else(|| KeySpecError(format!("{part:?} is not kid:base64secret")))?;
            let secret = STANDARD
                .decode(secret)
                .or_else(|_| URL_SAFE_NO_PAD.decode(secret))
                .map_err(|_| KeySpecError(format!("key {kid:?} is not base64")))?;
            if secret.len() < 32 {
                return Err(KeySpecError(format!(
                    "key {kid:?} is shorter than 32 bytes"
                )));
            }
            keys.push((kid.to_string(), secret));
        }
        let Some((signing_kid, signing_secret)) = keys.first().cloned() else {
            return Err(KeySpecError("no keys".into()));
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signing_kid.clone());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Ok(Self {
            signing: EncodingKey::from_secret(&signing_secret),
            verifying: keys
                .iter()
                .map(|(k, s)| (k.clone(), DecodingKey::from_secret(s)))
                .collect(),
            header,
            validation,
            signing_kid,
            audience: audience.to_string(),
        })
    }

    /// A fresh random key set spec with one key, as `tessera up` makes on first start.
    pub fn generate_spec() -> String {
        let secret: [u8; 32] = rand::random();
        format!("p{}:{}", crate::unix_now(), STANDARD.encode(secret))
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Mints a passport for `sub` acting in `trace`.
    pub fn mint(
        &self,
        issuer: &str,
        sub: &str,
        roles: &[String],
        sid: Option<&str>,
        trace: &TraceContext,
    ) -> String {
        let now = crate::unix_now();
        let claims = Passport {
            iss: issuer.to_string(),
            aud: self.audience.clone(),
            sub: sub.to_string(),
            roles: roles.to_vec(),
            sid: sid.map(str::to_string),
            tid: trace.trace_id_hex(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp: now + TTL_SECS,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use this to make expired or odd passports).
    pub fn sign(&self, claims: &Passport) -> String {
        jsonwebtoken::encode(&self.header, claims, &self.signing)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies signature, key, expiry and audience.
    pub fn verify(&self, token: &str) -> Result<Passport, PassportError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| PassportError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(PassportError::BadSignature);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(PassportError::UnknownKey)?;
        jsonwebtoken::decode::<Passport>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => PassportError::Expired,
                    ErrorKind::InvalidAudience => PassportError::WrongAudience,
                    ErrorKind::InvalidSignature => PassportError::BadSignature,
                    _ => PassportError::Malformed,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> PassportKeys {
        PassportKeys::from_spec(&PassportKeys::generate_spec(), "shop").unwrap()
    }

    #[test]
    fn wrong_audience_is_refused() {
        let spec = PassportKeys::generate_spec();
        let ours = PassportKeys::from_spec(&spec, "shop").unwrap();
        let theirs = PassportKeys::from_spec(&spec, "other-system").unwrap();
        let token = theirs.mint("x", "u1", &[], None, &TraceContext::new_root());
        assert_eq!(ours.verify(&token), Err(PassportError::WrongAudience));
    }

    #[test]
    fn mint_then_verify() {
        let k = keys();
        let t = TraceContext::new_root();
        let token = k.mint("tessera-gateway", "u1", &["user".into()], Some("s1"), &t);
        let p = k.verify(&token).unwrap();
        assert_eq!(p.sub, "u1");
        assert_eq!(p.roles, ["user"]);
        assert_eq!(p.sid.as_deref(), Some("s1"));
        assert_eq!(p.tid, t.trace_id_hex());
        assert!(p.exp - p.iat <= 60);
    }

    #[test]
    fn rejects_forged_expired_and_foreign() {
        let k = keys();
        let t = TraceContext::new_root();
        let other = keys();
        let forged = other.mint("x", "u1", &[], None, &t);
        assert!(matches!(
            k.verify(&forged),
            Err(PassportError::UnknownKey | PassportError::BadSignature)
        ));

        let mut p = k.verify(&k.mint("x", "u1", &[], None, &t)).unwrap();
        p.exp = crate::unix_now() - 60;
        assert_eq!(k.verify(&k.sign(&p)), Err(PassportError::Expired));

        assert_eq!(k.verify("not.a.jwt"), Err(PassportError::Malformed));
        let good = k.mint("x", "u1", &[], None, &t);
        let mut tampered = good.clone();
        tampered.replace_range(good.len() - 3.., "AAA");
        assert!(k.verify(&tampered).is_err());
    }

    #[test]
    fn rotation_verifies_old_keys() {
        let old = PassportKeys::generate_spec();
        let new = format!("k2:{}", STANDARD.encode([7u8; 32]));
        let before = PassportKeys::from_spec(&old, "shop").unwrap();
        let after = PassportKeys::from_spec(&format!("{new},{old}"), "shop").unwrap();
        let t = TraceContext::new_root();
        let token = before.mint("x", "u", &[], None, &t);
        assert!(after.verify(&token).is_ok());
        assert!(before.verify(&after.mint("x", "u", &[], None, &t)).is_err());
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(PassportKeys::from_spec("", "a").is_err());
        assert!(PassportKeys::from_spec("nokid", "a").is_err());
        assert!(PassportKeys::from_spec("k:short", "a").is_err());
    }
}
