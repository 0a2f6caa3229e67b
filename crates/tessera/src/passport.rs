//! The passport: a short-lived internal JWT that tells a service who is calling.
//!
//! The gateway verifies the client's access token once and mints a passport for every request
//! it forwards (header `X-Passport`). Services verify it on every request and forward it
//! unchanged on the calls they make, so a whole call tree acts for the same caller and trace.
//! It is HMAC-SHA256 signed with a key shared inside the system: verification costs a hash,
//! not a public-key operation, which matters on a path every request takes. Keys carry a
//! `kid`; the first key of the set signs and every key verifies, which is how keys rotate.
//! The format is specified in `docs/passport.md`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::json::push_json_str;
use crate::trace::TraceContext;

/// Base64url without padding, as JWS uses it, on the SIMD codec: it runs on every request.
const B64: base64_simd::Base64 = base64_simd::URL_SAFE_NO_PAD;

/// The header a passport travels in.
pub const HEADER: &str = "x-passport";
/// The subject of a passport minted for a caller without an access token.
pub const ANONYMOUS: &str = "anonymous";
/// The issuer of the passports the control plane mints for the system's operators (the
/// console's calls to services): what a service's operator-only routes require, since a
/// gateway's passport may carry an end user's `admin` role.
pub const CONTROL_ISSUER: &str = "tessera-control";
/// How long a passport lives.
pub const TTL_SECS: u64 = 30;
/// Clock skew tolerated when checking `exp`.
const LEEWAY_SECS: u64 = 5;
/// Claims up to this size are decoded on the stack (a passport's are about 250 bytes).
const STACK_CLAIMS: usize = 1024;

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

/// One key of the set. The HMAC state is keyed once, here: signing and verifying clone it
/// rather than re-deriving the padded key blocks per passport.
struct Key {
    kid: String,
    /// Drawn when the key is read: which key a [`Prefix`] was made under (two sets may
    /// reuse a kid for different secrets).
    id: u64,
    mac: Hmac<Sha256>,
    /// The encoded JWS header this key signs with. A passport whose header segment is exactly
    /// this is matched to the key without decoding or parsing the header.
    header: String,
}

/// The system's passport keys: one signs, all verify.
pub struct PassportKeys {
    /// The first one signs.
    keys: Vec<Key>,
    audience: String,
}

impl std::fmt::Debug for PassportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassportKeys")
            .field("signing_kid", &self.keys[0].kid)
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The JWS header, as far as verification reads it.
#[derive(Deserialize)]
struct JwsHeader<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<std::borrow::Cow<'a, str>>,
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
            // Spelled as docs/passport.md shows it (and as jsonwebtoken and PyJWT write it).
            let header = format!(
                r#"{{"typ":"JWT","alg":"HS256","kid":{}}}"#,
                serde_json::Value::from(kid)
            );
            keys.push(Key {
                kid: kid.to_string(),
                id: rand::random(),
                mac: Hmac::new_from_slice(&secret).expect("HMAC takes keys of any length"),
                header: URL_SAFE_NO_PAD.encode(header),
            });
        }
        if keys.is_empty() {
            return Err(KeySpecError("no keys".into()));
        }
        Ok(Self {
            keys,
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
        let token = self.mint_bytes(issuer, sub, roles, sid, trace);
        String::from_utf8(token).expect("a passport is ASCII")
    }

    /// [`Self::mint`], as a header value made without copying the token.
    pub fn mint_header(
        &self,
        issuer: &str,
        sub: &str,
        roles: &[String],
        sid: Option<&str>,
        trace: &TraceContext,
    ) -> http::HeaderValue {
        let token = self.mint_bytes(issuer, sub, roles, sid, trace);
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(token))
            .expect("a passport is base64url and dots")
    }

    /// [`Self::mint`]'s token as bytes (ASCII): what a request's head takes as it is, with no
    /// header value made (and checked byte by byte) of it.
    pub fn mint_bytes(
        &self,
        issuer: &str,
        sub: &str,
        roles: &[String],
        sid: Option<&str>,
        trace: &TraceContext,
    ) -> Vec<u8> {
        JSON.with_borrow_mut(|json| {
            json.clear();
            self.push_caller(json, issuer, sub, roles, sid);
            push_request(json, trace);
            self.sign_json(json.as_bytes())
        })
    }

    /// What every passport of this caller begins with, signed ahead: see [`Prefix`].
    pub fn prefix(&self, issuer: &str, sub: &str, roles: &[String], sid: Option<&str>) -> Prefix {
        let key = &self.keys[0];
        let mut json = String::with_capacity(256);
        self.push_caller(&mut json, issuer, sub, roles, sid);
        // Base64 writes three bytes as four characters: the claims' first 3n bytes are the
        // same characters in every passport, whatever follows them.
        let whole = json.len() - json.len() % 3;
        let mut token = Vec::with_capacity(key.header.len() + 1 + whole / 3 * 4);
        token.extend_from_slice(key.header.as_bytes());
        token.push(b'.');
        let start = token.len();
        token.resize(start + B64.encoded_length(whole), 0);
        let _ = B64.encode(
            &json.as_bytes()[..whole],
            base64_simd::Out::from_slice(&mut token[start..]),
        );
        let mut mac = key.mac.clone();
        mac.update(&token);
        Prefix {
            key: key.id,
            token,
            rest: json.as_bytes()[whole..].to_vec(),
            mac,
        }
    }

    /// [`Self::mint_bytes`] for the caller `prefix` was made for: the same passport, with
    /// only the request's claims written, encoded and hashed. A prefix of another signing key
    /// than this set's is not used (the caller's passport is minted whole).
    pub fn mint_with(&self, prefix: &Prefix, trace: &TraceContext) -> Option<Vec<u8>> {
        if prefix.key != self.keys[0].id {
            return None;
        }
        Some(JSON.with_borrow_mut(|json| {
            json.clear();
            push_request(json, trace);
            CLAIMS.with_borrow_mut(|claims| {
                // The bytes left over from the prefix's last whole group (perhaps part of a
                // character) open this one's.
                claims.clear();
                claims.extend_from_slice(&prefix.rest);
                claims.extend_from_slice(json.as_bytes());
                let tail = B64.encoded_length(claims.len());
                let mut token = Vec::with_capacity(prefix.token.len() + tail + 1 + 43);
                token.extend_from_slice(&prefix.token);
                let start = token.len();
                token.resize(start + tail, 0);
                let _ = B64.encode(claims, base64_simd::Out::from_slice(&mut token[start..]));
                let mut mac = prefix.mac.clone();
                mac.update(&token[start..]);
                push_signature(&mut token, mac);
                token
            })
        }))
    }

    /// The claims that are the caller's, in `Passport`'s order, opening the JSON object.
    fn push_caller(
        &self,
        json: &mut String,
        issuer: &str,
        sub: &str,
        roles: &[String],
        sid: Option<&str>,
    ) {
        json.push_str(r#"{"iss":"#);
        push_json_str(json, issuer);
        json.push_str(r#","aud":"#);
        push_json_str(json, &self.audience);
        json.push_str(r#","sub":"#);
        push_json_str(json, sub);
        json.push_str(r#","roles":["#);
        for (i, role) in roles.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            push_json_str(json, role);
        }
        json.push(']');
        if let Some(sid) = sid {
            json.push_str(r#","sid":"#);
            push_json_str(json, sid);
        }
    }

    /// Signs arbitrary claims (tests use this to make expired or odd passports).
    pub fn sign(&self, claims: &Passport) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialise");
        String::from_utf8(self.sign_json(&json)).expect("a passport is ASCII")
    }

    /// `header.claims.signature`, base64url without padding, HMAC-SHA256 with the first key.
    fn sign_json(&self, json: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let claims_len = B64.encoded_length(json.len());
        let mut token = Vec::with_capacity(key.header.len() + claims_len + 2 + 43);
        token.extend_from_slice(key.header.as_bytes());
        token.push(b'.');
        let start = token.len();
        token.resize(start + claims_len, 0);
        let _ = B64.encode(json, base64_simd::Out::from_slice(&mut token[start..]));
        let mut mac = key.mac.clone();
        mac.update(&token);
        push_signature(&mut token, mac);
        token
    }

    /// Verifies key, signature, expiry and audience, in that order.
    pub fn verify(&self, token: &str) -> Result<Passport, PassportError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(PassportError::Malformed)?;
        let (header, claims) = signed.split_once('.').ok_or(PassportError::Malformed)?;
        if claims.contains('.') {
            return Err(PassportError::Malformed);
        }
        let key = match self.keys.iter().find(|k| k.header == header) {
            Some(key) => key,
            None => self.key_of(header)?,
        };

        if signature.len() != 43 {
            return Err(PassportError::BadSignature);
        }
        let mut sig = [0u8; 32];
        B64.decode(signature.as_bytes(), base64_simd::Out::from_slice(&mut sig))
            .map_err(|_| PassportError::Malformed)?;
        let mut mac = key.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| PassportError::BadSignature)?;

        let decoded_len = B64
            .decoded_length(claims.as_bytes())
            .map_err(|_| PassportError::Malformed)?;
        let passport: Passport = if decoded_len <= STACK_CLAIMS {
            let mut buf = [0u8; STACK_CLAIMS];
            let json = B64
                .decode(claims.as_bytes(), base64_simd::Out::from_slice(&mut buf))
                .map_err(|_| PassportError::Malformed)?;
            parse_claims(json)
        } else {
            let json = B64
                .decode_to_vec(claims.as_bytes())
                .map_err(|_| PassportError::Malformed)?;
            parse_claims(&json)
        }
        .ok_or(PassportError::Malformed)?;

        if passport.exp.saturating_add(LEEWAY_SECS) < crate::unix_now() {
            return Err(PassportError::Expired);
        }
        if passport.aud != self.audience {
            return Err(PassportError::WrongAudience);
        }
        Ok(passport)
    }

    /// The key a header other than our own signing headers names (another minter's spelling).
    fn key_of(&self, header: &str) -> Result<&Key, PassportError> {
        let json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| PassportError::Malformed)?;
        let header: JwsHeader<'_> =
            serde_json::from_slice(&json).map_err(|_| PassportError::Malformed)?;
        if header.alg != "HS256" {
            return Err(PassportError::BadSignature);
        }
        let kid = header.kid.ok_or(PassportError::UnknownKey)?;
        self.keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(PassportError::UnknownKey)
    }
}

/// The claims of a verified passport. Claims as minters write them (a flat object of plain
/// strings, whole numbers, a list of strings, `null`) are read by a small scanner, since every
/// request pays for this; anything else (escapes, other value types, duplicate or missing
/// claims) is left to serde_json, whose verdict stands.
fn parse_claims(json: &[u8]) -> Option<Passport> {
    Scanner { json, at: 0 }
        .claims()
        .or_else(|| serde_json::from_slice(json).ok())
}

/// JSON's whitespace (not `is_ascii_whitespace`, which also takes form feed).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Reads the simple form of the claims; `None` means "not that simple", never "invalid".
struct Scanner<'a> {
    json: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn claims(mut self) -> Option<Passport> {
        let (mut iss, mut aud, mut sub, mut tid, mut jti) = (None, None, None, None, None);
        let (mut roles, mut sid, mut iat, mut exp) = (None, None, None, None);
        self.eat(b'{')?;
        if self.peek()? != b'}' {
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                let fresh = match key {
                    "iss" => iss.replace(self.string()?).is_none(),
                    "aud" => aud.replace(self.string()?).is_none(),
                    "sub" => sub.replace(self.string()?).is_none(),
                    "tid" => tid.replace(self.string()?).is_none(),
                    "jti" => jti.replace(self.string()?).is_none(),
                    "iat" => iat.replace(self.number()?).is_none(),
                    "exp" => exp.replace(self.number()?).is_none(),
                    "roles" => roles.replace(self.strings()?).is_none(),
                    "sid" => {
                        let value = if self.peek()? == b'n' {
                            self.literal(b"null")?;
                            None
                        } else {
                            Some(self.string()?)
                        };
                        sid.replace(value).is_none()
                    }
                    _ => return None, // unknown claims: serde_json decides
                };
                if !fresh {
                    return None; // a claim twice: serde_json refuses it
                }
                match self.next()? {
                    b',' => continue,
                    b'}' => break,
                    _ => return None,
                }
            }
        } else {
            self.at += 1;
        }
        if self.json[self.at..].iter().any(|&b| !is_space(b)) {
            return None;
        }
        Some(Passport {
            iss: iss?.to_owned(),
            aud: aud?.to_owned(),
            sub: sub?.to_owned(),
            roles: roles.unwrap_or_default(),
            sid: sid.flatten().map(str::to_owned),
            tid: tid?.to_owned(),
            jti: jti?.to_owned(),
            iat: iat?,
            exp: exp?,
        })
    }

    /// The next byte that is not whitespace.
    fn peek(&mut self) -> Option<u8> {
        while is_space(*self.json.get(self.at)?) {
            self.at += 1;
        }
        self.json.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.peek()?;
        let rest = &self.json[self.at..];
        rest.starts_with(word).then(|| self.at += word.len())
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = crate::json::plain_prefix(&self.json[start..]);
        if self.json.get(start + len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        std::str::from_utf8(&self.json[start..start + len]).ok()
    }

    /// A whole number without sign, fraction or exponent.
    fn number(&mut self) -> Option<u64> {
        self.peek()?;
        let digits = self.json[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 19 || (digits > 1 && self.json[self.at] == b'0') {
            return None; // none, too many, or a leading zero (not JSON)
        }
        let text = std::str::from_utf8(&self.json[self.at..self.at + digits]).ok()?;
        self.at += digits;
        if matches!(self.json.get(self.at), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        text.parse().ok()
    }

    fn strings(&mut self) -> Option<Vec<String>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(out);
        }
        loop {
            out.push(self.string()?.to_owned());
            match self.next()? {
                b',' => continue,
                b']' => return Some(out),
                _ => return None,
            }
        }
    }
}

thread_local! {
    /// The claims' JSON, reused between passports.
    static JSON: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
    /// The claims a passport from a [`Prefix`] encodes, reused.
    static CLAIMS: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
}

/// The claims that are the request's (its trace, a fresh id, the time), closing the object.
fn push_request(json: &mut String, trace: &TraceContext) {
    let now = crate::unix_now();
    let mut hex = [0u8; 32];
    json.push_str(r#","tid":""#);
    json.push_str(crate::trace::hex(&trace.trace_id, &mut hex));
    json.push_str(r#"","jti":""#);
    json.push_str(crate::trace::hex(&rand::random::<[u8; 16]>(), &mut hex));
    json.push_str(r#"","iat":"#);
    let mut n = itoa::Buffer::new();
    json.push_str(n.format(now));
    json.push_str(r#","exp":"#);
    json.push_str(n.format(now + TTL_SECS));
    json.push('}');
}

/// `.` and the signature of everything `mac` has read, base64url.
fn push_signature(token: &mut Vec<u8>, mac: Hmac<Sha256>) {
    let signature = mac.finalize().into_bytes();
    token.push(b'.');
    let start = token.len();
    token.resize(start + 43, 0);
    let _ = B64.encode(
        &signature,
        base64_simd::Out::from_slice(&mut token[start..]),
    );
}

/// The first part of every passport minted for one caller, under one key: the header, the
/// caller's claims (issuer, audience, subject, roles, session) as far as they fill whole
/// base64 groups, and the MAC with those bytes read. A gateway keeps one with each access
/// token it has verified ([`PassportKeys::mint_with`]): a request then writes, encodes and
/// hashes only its own claims, about half of a passport, where hashing the whole was the
/// biggest part of what the gateway itself spent on a request.
#[derive(Clone)]
pub struct Prefix {
    /// The signing key's [`Key::id`].
    key: u64,
    /// `header.` and the base64url of the claims' first 3n bytes.
    token: Vec<u8>,
    /// The claims' bytes after those (none, one or two).
    rest: Vec<u8>,
    /// The signing key's MAC, `token` read.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Prefix {
    /// Nothing of it (it holds a keyed MAC).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefix").finish_non_exhaustive()
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
    fn a_passport_minted_from_a_prefix_is_the_one_minted_whole() {
        let spec = PassportKeys::generate_spec();
        let k = PassportKeys::from_spec(&spec, "shop").unwrap();
        let t = TraceContext::new_root();
        let roles: Vec<String> = vec!["user".into(), "ad\"min".into()];
        let mut split_a_character = false;
        // Every length of claims modulo 3 (the subject's length moves where the groups cut).
        for sub in ["u", "u1", "u12", "user-\u{e9}\u{e9}", "\"quoted\\"] {
            // A session id ending in a character of two or three bytes: the groups may cut it.
            for sid in [
                None,
                Some("s1"),
                Some("s\u{e9}"),
                Some("s\u{e9}\u{e9}"),
                Some("\u{20ac}"),
            ] {
                let prefix = k.prefix("tessera-gateway", sub, &roles, sid);
                split_a_character |= std::str::from_utf8(&prefix.rest).is_err();
                let token = String::from_utf8(k.mint_with(&prefix, &t).unwrap()).unwrap();
                let whole = k.mint("tessera-gateway", sub, &roles, sid, &t);
                let (a, b) = (k.verify(&token).unwrap(), k.verify(&whole).unwrap());
                assert_eq!((&a.sub, &a.roles, &a.sid), (&b.sub, &b.roles, &b.sid));
                assert_eq!((&a.iss, &a.aud, &a.tid), (&b.iss, &b.aud, &b.tid));
                assert!(a.exp - a.iat == TTL_SECS && a.jti != b.jti);
                // Byte for byte the same but for the fresh id (and a second's tick).
                let header_and_claims = |t: &str| {
                    let claims = t.split('.').nth(1).unwrap();
                    let json = URL_SAFE_NO_PAD.decode(claims).unwrap();
                    let mut p: Passport = serde_json::from_slice(&json).unwrap();
                    p.jti.clear();
                    (t.split('.').next().unwrap().to_string(), p)
                };
                let (ha, mut pa) = header_and_claims(&token);
                let (hb, mut pb) = header_and_claims(&whole);
                (pa.iat, pa.exp, pb.iat, pb.exp) = (0, 0, 0, 0);
                assert_eq!((ha, pa), (hb, pb));
            }
        }
        assert!(split_a_character, "some prefix ends within a character");
        // A prefix made under another signing key is not used, even one of the same kid.
        let kid = spec.split(':').next().unwrap();
        let same_kid = format!("{kid}:{}", STANDARD.encode([9u8; 32]));
        let other = PassportKeys::from_spec(&same_kid, "shop").unwrap();
        let foreign = other.prefix("tessera-gateway", "u1", &roles, None);
        assert!(k.mint_with(&foreign, &t).is_none());
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
    fn the_claims_scanner_agrees_with_serde() {
        let base = r#"{"iss":"gw","aud":"shop","sub":"u1","roles":["a","b"],"sid":"s1","tid":"0af7651916cd43dd8448eb211c80319c","jti":"j","iat":1700000000,"exp":1700000030}"#;
        let mut cases: Vec<String> = vec![
            base.into(),
            base.replace(r#""sid":"s1","#, ""),
            base.replace(r#""sid":"s1""#, r#""sid":null"#),
            base.replace(r#"["a","b"]"#, "[]"),
            base.replace(r#"["a","b"]"#, " [ \"a\" , \"b\" ] "),
            base.replace(r#""roles":["a","b"],"#, ""),
            base.replace(',', " ,\n\t").replace(':', "\r: "),
            format!(" {base} \n"),
            // Not the simple form: serde_json decides.
            base.replace(r#""u1""#, r#""u\"1""#),
            base.replace(r#""u1""#, r#""\u00e9\ud83d\ude00""#),
            base.replace(r#""jti":"j","#, r#""jti":"j","extra":{"x":[1]},"#),
            base.replace(r#""jti":"j","#, r#""jti":"j","jti":"k","#),
            base.replace("1700000000", "01700000000"),
            base.replace("1700000000", "1700000000.0"),
            base.replace("1700000000", "-1"),
            base.replace("1700000000", "1e9"),
            base.replace("1700000000", "99999999999999999999"),
            base.replace(r#"["a","b"]"#, "null"),
            base.replace(r#"["a","b"]"#, r#"["a",1]"#),
            base.replace(r#"["a","b"]"#, r#"["a",]"#),
            base.replace(r#""iss":"gw","#, ""),
            base.replace(r#""iss":"gw""#, r#""iss":7"#),
            base.replace('}', ",}"),
            base.replace('{', "{\u{c}"),
            format!("{base}x"),
            format!("{base}{{}}"),
            "{}".into(),
            "[]".into(),
            String::new(),
            base[..base.len() - 1].into(),
        ];
        cases.push(base.replace(r#""u1""#, "\"u\u{1}1\""));
        for (i, case) in cases.iter().enumerate() {
            let fast = Scanner {
                json: case.as_bytes(),
                at: 0,
            }
            .claims();
            let serde = serde_json::from_slice::<Passport>(case.as_bytes()).ok();
            if let Some(fast) = &fast {
                assert_eq!(Some(fast), serde.as_ref(), "case {i}: {case}");
            }
            assert_eq!(parse_claims(case.as_bytes()), serde, "case {i}: {case}");
            if i < 8 {
                assert!(fast.is_some(), "case {i} should take the fast path: {case}");
            }
        }
        // What the minter writes takes the fast path.
        let k = keys();
        let token = k.mint(
            "gw",
            "u1",
            &["a".into()],
            Some("s1"),
            &TraceContext::new_root(),
        );
        let claims = token.split('.').nth(1).unwrap();
        let json = URL_SAFE_NO_PAD.decode(claims).unwrap();
        assert!(Scanner { json: &json, at: 0 }.claims().is_some());
    }

    #[test]
    fn claims_with_any_characters_survive_minting() {
        // The claims JSON is written by hand: every character must come back as it went in.
        let k = keys();
        let t = TraceContext::new_root();
        let sub = "us\"er\\1\n\t\u{1}é€😀";
        let roles = vec!["a,b".to_string(), "\"x\"".to_string(), String::new()];
        let token = k.mint("service:o\"dd", sub, &roles, None, &t);
        let p = k.verify(&token).unwrap();
        assert_eq!((p.iss.as_str(), p.sub.as_str()), ("service:o\"dd", sub));
        assert_eq!(p.roles, roles);
        assert_eq!(p.sid, None);
        // And no roles at all.
        let p = k.verify(&k.mint("gw", "anonymous", &[], None, &t)).unwrap();
        assert!(p.roles.is_empty());
        assert_eq!(p.jti.len(), 32);
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
    fn an_expiry_at_the_end_of_time_does_not_overflow() {
        // Found with the passport fuzz target: `exp` plus the leeway overflowed (a panic with
        // overflow checks, an expired passport without). Only a key holder can sign one.
        let k = keys();
        let mut p = k
            .verify(&k.mint("x", "u1", &[], None, &TraceContext::new_root()))
            .unwrap();
        for exp in [u64::MAX, u64::MAX - LEEWAY_SECS + 1] {
            p.exp = exp;
            assert_eq!(k.verify(&k.sign(&p)), Ok(p.clone()));
        }
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
    fn verifies_a_passport_from_another_minter() {
        // Another implementation may order or space the header differently, or use other
        // libraries: verification parses such a header instead of matching our own spelling.
        let spec = format!("k1:{}", STANDARD.encode([9u8; 32]));
        let k = PassportKeys::from_spec(&spec, "shop").unwrap();
        let now = crate::unix_now();
        let claims = serde_json::json!({"iss": "py", "aud": "shop", "sub": "u9", "tid": "0af7651916cd43dd8448eb211c80319c",
            "jti": "x", "iat": now, "exp": now + 30});
        let header = URL_SAFE_NO_PAD.encode(r#"{ "alg": "HS256", "kid": "k1" }"#);
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut mac = Hmac::<Sha256>::new_from_slice(&[9u8; 32]).unwrap();
        mac.update(signed.as_bytes());
        let token = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        let p = k.verify(&token).unwrap();
        assert_eq!((p.sub.as_str(), p.roles.len()), ("u9", 0));

        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(k.verify(&none), Err(PassportError::BadSignature));
        let no_kid = token.replacen(&header, &URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#), 1);
        assert_eq!(k.verify(&no_kid), Err(PassportError::UnknownKey));
        assert_eq!(k.verify("a.b.c.d"), Err(PassportError::Malformed));
        assert_eq!(k.verify(""), Err(PassportError::Malformed));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(PassportKeys::from_spec("", "a").is_err());
        assert!(PassportKeys::from_spec("nokid", "a").is_err());
        assert!(PassportKeys::from_spec("k:short", "a").is_err());
    }
}
