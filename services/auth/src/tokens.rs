//! Tokens: access tokens are EdDSA JWTs signed with the current key (`keys.rs`); refresh
//! tokens are opaque random strings, stored only as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tessera::{ApiError, Db, unix_now};

use crate::config::AuthConfig;
use crate::keys;

/// What login and refresh answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
    token_type: &'static str,
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    roles: Vec<&'a str>,
    sid: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

/// A new access token for `user_id` in `session`, with `refresh` as its refresh token.
pub async fn issue(
    db: &Db,
    config: &AuthConfig,
    user_id: &str,
    roles: &str,
    session: &str,
    refresh: String,
) -> Result<TokenPair, ApiError> {
    let key = keys::current(db).await?;
    let now = unix_now();
    let claims = AccessClaims {
        iss: &config.issuer,
        aud: &config.audience,
        sub: user_id,
        roles: roles.split(',').filter(|r| !r.is_empty()).collect(),
        sid: session,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        iat: now,
        exp: now + config.access_ttl,
    };
    let access_token = key.sign(&claims).map_err(ApiError::internal)?;
    Ok(TokenPair {
        access_token,
        refresh_token: refresh,
        expires_in: config.access_ttl,
        token_type: "Bearer",
    })
}

/// 32 random bytes, base64url.
pub fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How a refresh token is stored and looked up.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

/// Stores a refresh token of `session` (as its hash).
pub async fn insert_refresh(
    tx: &mut tessera::store::Tx,
    token: &str,
    session: &str,
    expires_at: u64,
) -> Result<(), tessera::store::DbError> {
    tessera::store::query(
        "INSERT INTO refresh_tokens (hash, session_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(hash_token(token))
    .bind(session)
    .bind(expires_at as i64)
    .execute(&mut **tx)
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token();
        assert_ne!(a, new_refresh_token());
        assert_ne!(hash_token(&a), a);
        assert_eq!(hash_token(&a), hash_token(&a));
    }
}
