//! Access-token verification at the edge.
//!
//! Access tokens are EdDSA JWTs issued by the token service (the shop's `auth`), which
//! publishes its public keys as a JWKS ([`tessera::jwks`]). The gateway:
//! - accepts only `alg: EdDSA` with a `kid` it knows; an unknown `kid` triggers one JWKS
//!   refresh (at most once a second), which is how signing-key rotation is picked up;
//! - checks `iss`, `aud` and `exp`;
//! - caches each verified token for at most [`CACHE_FOR`] (and never past its expiry), so the
//!   signature is checked about once a minute per token rather than once per request, and a
//!   key withdrawn from the JWKS stops being trusted within that bound;
//! - reads the JWKS again every [`KEYS_REFRESH`], dropping keys it no longer lists (and every
//!   cached token with them): the key set comes only from instances registered under the
//!   token service's own credential (`docs/security.md`), and one that was wrong does not
//!   linger;
//! - rejects tokens whose session (`sid`) is revoked. Revocations arrive two ways: the token
//!   service's revocation feed (a long-poll, for every gateway), and the
//!   `X-Tessera-Revoke-Session` header on a response passing through this gateway (for
//!   immediacy on the gateway that served the logout).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tessera::ServiceClient;
use tessera::jwks::Jwks;
use tessera::passport::Prefix;
use tessera_manifest as manifest;

/// Past this many cached tokens the cache is emptied (a bound, not an LRU: verifying again
/// is correct, only slower).
const CACHE_LIMIT: usize = 100_000;
const LEEWAY_SECS: u64 = 5;
/// The longest a verified token is trusted without checking its signature again.
pub const CACHE_FOR: Duration = Duration::from_secs(60);
/// How often the JWKS is read again, unasked.
pub const KEYS_REFRESH: Duration = Duration::from_secs(60);

/// How long a logout's answer waits for its revocation to reach the other gateways (Redis).
const REVOCATION_TOLD_WITHIN: Duration = Duration::from_millis(500);

/// Who a verified token speaks for.
#[derive(Debug)]
pub struct Verified {
    pub sub: String,
    pub roles: Vec<String>,
    pub sid: Option<String>,
    pub exp: u64,
    /// Until when (unix seconds) the cache may answer for it.
    pub cached_until: u64,
    /// What every passport minted for it begins with, made on its first request
    /// (`forward.rs`): kept with the token, it lives as long as the token is cached.
    pub passport: OnceLock<Prefix>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("malformed access token")]
    Malformed,
    #[error("access token algorithm not accepted")]
    Algorithm,
    #[error("access token signed with an unknown key")]
    UnknownKey,
    #[error("access token is invalid")]
    Invalid,
    #[error("access token has expired")]
    Expired,
    #[error("session has been revoked")]
    Revoked,
    #[error("token service unavailable")]
    Unavailable,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    sid: Option<String>,
    exp: u64,
}

#[derive(Deserialize)]
struct RevocationPage {
    seq: i64,
    items: Vec<Revocation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Revocation {
    sid: String,
    expires_at: u64,
}

pub struct TokenVerifier {
    config: manifest::Tokens,
    client: ServiceClient,
    validation: Validation,
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    /// When the JWKS was last fetched; held while fetching.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Verified tokens. Only tokens whose signature checked out are inserted, so a fast hash
    /// (not a DoS-hardened one) is safe for keys this long, looked up on every request.
    cache: RwLock<HashMap<Box<str>, Arc<Verified>, foldhash::fast::RandomState>>,
    /// Revoked session id → until when (unix seconds) it must stay rejected.
    revoked: RwLock<HashMap<String, u64>>,
    /// With Redis: where revocations are told to, and heard from, every other gateway.
    shared: std::sync::OnceLock<Arc<tessera_shared::Shared>>,
}

impl TokenVerifier {
    pub fn new(config: manifest::Tokens, client: ServiceClient) -> Arc<Self> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Arc::new(Self {
            config,
            client,
            validation,
            keys: RwLock::default(),
            last_refresh: tokio::sync::Mutex::new(None),
            shared: std::sync::OnceLock::new(),
            cache: RwLock::default(),
            revoked: RwLock::default(),
        })
    }

    /// The service that issues the tokens (and alone may revoke sessions).
    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// Verifies `token`, from the cache when it can.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, TokenError> {
        let now = tessera::unix_now();
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        let verified = match cached {
            Some(v) if now < v.cached_until => v,
            // Boxed: the uncached path (decoding, and perhaps fetching the keys over the
            // network) is a future of kilobytes, which inline would make every request's
            // future that much larger, copied whole each time it moves (BENCHMARKS.md §1).
            _ => Box::pin(self.verify_uncached(token)).await?,
        };
        if verified.exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(TokenError::Expired);
        }
        if let Some(sid) = &verified.sid
            && self
                .revoked
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(sid)
        {
            return Err(TokenError::Revoked);
        }
        Ok(verified)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Arc<Verified>, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = match self.key(&kid) {
            Some(k) => k,
            None => self.refresh_for(&kid).await?,
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?
            .claims;
        let verified = Arc::new(Verified {
            sub: claims.sub,
            roles: claims.roles,
            sid: claims.sid,
            exp: claims.exp,
            cached_until: tessera::unix_now() + CACHE_FOR.as_secs(),
            passport: OnceLock::new(),
        });
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            let now = tessera::unix_now();
            cache.retain(|_, v| v.exp > now && v.cached_until > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(token.into(), verified.clone());
        Ok(verified)
    }

    fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// Looks for an unknown `kid` in a fresh JWKS. Fetches happen at most once a second, and
    /// one fetch serves every request that was waiting when it started, so a flood of made-up
    /// key ids costs the token service one request a second.
    async fn refresh_for(&self, kid: &str) -> Result<Arc<DecodingKey>, TokenError> {
        let asked = Instant::now();
        let mut last = self.last_refresh.lock().await;
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        if let Some(t) = *last {
            if t >= asked {
                return Err(TokenError::UnknownKey); // a fetch made after we asked lacks it
            }
            let since = t.elapsed();
            if since < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1) - since).await;
            }
        }
        *last = Some(Instant::now());
        match self.fetch_keys().await {
            Ok(()) => self.key(kid).ok_or(TokenError::UnknownKey),
            Err(e) => {
                *last = None; // let the next request try again at once
                Err(e)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(), TokenError> {
        let jwks: Jwks = self
            .client
            .get(&self.config.service, &self.config.jwks_path)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot fetch the JWKS");
                TokenError::Unavailable
            })?;
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let Some(x) = jwk.ed25519_x() else {
                continue;
            };
            match DecodingKey::from_ed_components(x) {
                Ok(k) => {
                    keys.insert(jwk.kid.clone(), Arc::new(k));
                }
                Err(e) => {
                    tracing::warn!(kid = %jwk.kid, error = %e, "ignoring a malformed JWK")
                }
            }
        }
        let mut current = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let withdrawn = current.keys().any(|kid| !keys.contains_key(kid));
        if withdrawn || current.len() != keys.len() {
            tracing::info!(keys = keys.len(), "JWKS loaded");
        }
        *current = keys;
        drop(current);
        if withdrawn {
            // Tokens signed by a withdrawn key are verified again, and refused.
            self.cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        Ok(())
    }

    /// Reads the JWKS again every [`KEYS_REFRESH`] for as long as the process lives.
    pub fn spawn_key_refresh(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEYS_REFRESH).await;
                let Some(this) = this.upgrade() else {
                    return;
                };
                let _ = this.fetch_keys().await;
            }
        });
    }

    /// Rejects every token of session `sid` until `until` (unix seconds).
    pub fn revoke(&self, sid: &str, until: u64) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid.to_string(), until);
    }

    /// Revokes `sid` here and, with Redis, in every other gateway (within milliseconds: they
    /// follow the channel, [`TokenVerifier::share_revocations`]).
    pub async fn revoke_everywhere(&self, sid: &str, until: u64) {
        self.revoke(sid, until);
        if let Some(shared) = self.shared.get() {
            let shared = shared.clone();
            let revocation = tessera_shared::Revocation {
                sid: sid.to_string(),
                until,
            };
            let told = tokio::spawn(async move {
                if !shared.revoke(&revocation).await {
                    tracing::warn!(
                        "a revocation could not be told to the other gateways; they learn it from the token service's feed"
                    );
                }
            });
            // Told before the logout is answered (within a bound; past it, the telling goes
            // on in the background): a client that logs out and calls another gateway at once
            // is refused there too.
            let _ = tokio::time::timeout(REVOCATION_TOLD_WITHIN, told).await;
        }
    }

    /// Tells revocations to, and hears them from, every gateway through Redis.
    pub fn share_revocations(self: &Arc<Self>, shared: Arc<tessera_shared::Shared>) {
        let this = Arc::downgrade(self);
        shared.follow_revocations(move |r| {
            if let Some(this) = this.upgrade() {
                this.revoke(&r.sid, r.until);
            }
        });
        let _ = self.shared.set(shared);
    }

    /// Follows the token service's revocation feed for as long as the process lives, and
    /// forgets revocations whose tokens have all expired.
    pub fn spawn_revocation_feed(self: &Arc<Self>, feed_client: ServiceClient) {
        let this = self.clone();
        tokio::spawn(async move {
            feed_client
                .discovery()
                .wait_loaded(Duration::from_secs(5))
                .await;
            let mut after = 0i64;
            let mut failing = false;
            loop {
                let path = format!("{}?after={after}&wait=20000", this.config.revocations_path);
                match feed_client
                    .get::<RevocationPage>(&this.config.service, &path)
                    .await
                {
                    Ok(page) => {
                        if failing {
                            tracing::info!("revocation feed reachable again");
                            failing = false;
                        }
                        for r in &page.items {
                            this.revoke(&r.sid, r.expires_at);
                        }
                        after = page.seq.max(after);
                        let now = tessera::unix_now();
                        this.revoked
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|_, until| *until > now);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "revocation feed unavailable; retrying");
                            failing = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
impl TokenVerifier {
    /// Trusts a key as if the JWKS had listed it: `x` is the JWK's public key.
    pub(crate) fn trust(&self, kid: &str, x: &str) {
        let key = DecodingKey::from_ed_components(x).expect("an Ed25519 public key");
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kid.to_string(), Arc::new(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[tokio::test]
    async fn an_expiry_at_the_end_of_time_does_not_overflow() {
        let verifier = testing::verifier();
        verifier.cache.write().unwrap().insert(
            "t".into(),
            Arc::new(Verified {
                sub: "ann".into(),
                roles: vec![],
                sid: None,
                exp: u64::MAX,
                cached_until: u64::MAX,
                passport: OnceLock::new(),
            }),
        );
        assert_eq!(verifier.verify("t").await.unwrap().sub, "ann");
    }

    #[tokio::test]
    async fn a_cached_token_is_trusted_for_a_bounded_time_only() {
        let verifier = testing::verifier();
        let token = testing::token("ann", &["user"], None, 600);
        assert_eq!(verifier.verify(&token).await.unwrap().sub, "ann");
        // Its key is withdrawn, as a JWKS read without it leaves it; within the bound the
        // cache still answers.
        verifier.keys.write().unwrap().clear();
        assert!(verifier.verify(&token).await.is_ok());
        // Past the bound, the signature is checked again, and the key is gone.
        {
            let mut cache = verifier.cache.write().unwrap();
            let v = cache[token.as_str()].clone();
            cache.insert(
                token.as_str().into(),
                Arc::new(Verified {
                    sub: v.sub.clone(),
                    roles: v.roles.clone(),
                    sid: v.sid.clone(),
                    exp: v.exp,
                    cached_until: tessera::unix_now(),
                    passport: OnceLock::new(),
                }),
            );
        }
        assert!(verifier.verify(&token).await.is_err());
    }
}
