//! The JSON Web Key Set (RFC 7517) the token service publishes and the gateway reads: the
//! public keys that verify access tokens.
//!
//! One type for both sides, so that what is published is what is read. The token service
//! publishes Ed25519 keys as `OKP` keys (RFC 8037: `crv` `Ed25519`, the public key in `x`);
//! the gateway uses only those, and takes a set that also holds other keys, so every member
//! beyond `kty` and `kid` is optional and skipped when absent. Members this type does not
//! name are ignored when read.

use serde::{Deserialize, Serialize};

/// A key set: `{"keys": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One key, with the members an Ed25519 verifying key needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// The key type: `OKP` for Ed25519.
    pub kty: String,
    /// The curve of an `OKP` key: `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// The algorithm the key is for: `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// What the key is for: `sig`.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// The key id that a token's header names.
    pub kid: String,
    /// The public key of an `OKP` key, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
}

impl Jwk {
    /// An Ed25519 signature-verifying key: `x` is the public key, base64url without padding.
    pub fn ed25519(kid: String, x: String) -> Self {
        Self {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
            kid,
            x: Some(x),
        }
    }

    /// The public key (`x`), if this is an Ed25519 key.
    pub fn ed25519_x(&self) -> Option<&str> {
        if self.kty != "OKP" || self.crv.as_deref() != Some("Ed25519") {
            return None;
        }
        self.x.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ed25519_key_is_published_with_every_member() {
        let jwks = Jwks {
            keys: vec![Jwk::ed25519("k1".into(), "UBv6zT6tDPE0P1xP7a07olk".into())],
        };
        assert_eq!(
            serde_json::to_string(&jwks).unwrap(),
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"k1","x":"UBv6zT6tDPE0P1xP7a07olk"}]}"#
        );
        let read: Jwks = serde_json::from_str(&serde_json::to_string(&jwks).unwrap()).unwrap();
        assert_eq!(read, jwks);
        assert_eq!(read.keys[0].ed25519_x(), Some("UBv6zT6tDPE0P1xP7a07olk"));
    }

    #[test]
    fn a_set_with_other_keys_reads_and_only_ed25519_ones_count() {
        let read: Jwks = serde_json::from_str(
            r#"{"keys":[
                {"kty":"RSA","kid":"r1","n":"0vx7","e":"AQAB","alg":"RS256"},
                {"kty":"OKP","crv":"X25519","kid":"x1","x":"abc"},
                {"kty":"OKP","crv":"Ed25519","kid":"e1"},
                {"kty":"OKP","crv":"Ed25519","kid":"e2","x":"def"}
            ]}"#,
        )
        .unwrap();
        let usable: Vec<_> = read
            .keys
            .iter()
            .map(|k| (k.kid.as_str(), k.ed25519_x()))
            .collect();
        assert_eq!(
            usable,
            [
                ("r1", None),
                ("x1", None),
                ("e1", None),
                ("e2", Some("def"))
            ]
        );
        // A key without `kid` or `kty` is not one the gateway can use: the set is refused.
        assert!(serde_json::from_str::<Jwks>(r#"{"keys":[{"kty":"OKP"}]}"#).is_err());
    }
}
