//! Signing keys for access tokens: Ed25519, kept in the database so they survive restarts and
//! are shared by replicas; published as a JWKS ([`tessera::jwks`]) for the gateway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tessera::Db;
use tessera::jwks::{Jwk, Jwks};

pub struct CurrentKey {
    pub kid: String,
    der: Vec<u8>,
}

impl CurrentKey {
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.der))
    }
}

/// The newest unretired key, created if there is none (replicas starting together agree on
/// one).
pub async fn current(db: &Db) -> Result<CurrentKey, tessera::store::DbError> {
    // Every token issued asks: a plain read, and only a first start takes the lock below.
    if let Some(key) = newest(db.pool()).await? {
        return Ok(key);
    }
    let mut tx = db.write_tx().await?;
    if db.dialect() == tessera::store::Dialect::Postgres {
        // A transaction on PostgreSQL reads a snapshot: two replicas starting together would
        // each find no key and each add one. They take turns on the table instead; taken
        // before the first query, the lock comes before the snapshot, so the second sees
        // the first one's key. (Embedded, write transactions take turns anyway.)
        tessera::store::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
    }
    let key = match newest(&mut *tx).await? {
        Some(key) => key,
        None => {
            let key = insert_new(&mut tx).await?;
            tracing::info!(kid = %key.kid, "created a signing key");
            key
        }
    };
    tx.commit().await?;
    Ok(key)
}

/// The newest unretired key, read on `on` (the pool, or a transaction).
async fn newest<'c>(
    on: impl tessera::store::Executor<'c>,
) -> Result<Option<CurrentKey>, tessera::store::DbError> {
    let row: Option<(String, Vec<u8>)> = tessera::store::query_as(
        "SELECT kid, private_der FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid DESC LIMIT 1",
    )
    .fetch_optional(on)
    .await?;
    Ok(row.map(|(kid, der)| CurrentKey { kid, der }))
}

/// Adds a new key that signs from now on; older keys stay in the JWKS so that tokens they
/// signed remain valid until they expire.
pub async fn rotate(db: &Db) -> Result<String, tessera::store::DbError> {
    let mut tx = db.write_tx().await?;
    let key = insert_new(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(kid = %key.kid, "rotated the signing key");
    Ok(key.kid)
}

async fn insert_new(tx: &mut tessera::store::Tx) -> Result<CurrentKey, tessera::store::DbError> {
    let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let der = signing
        .to_pkcs8_der()
        .expect("an Ed25519 key encodes")
        .as_bytes()
        .to_vec();
    let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let kid = format!("k{}", uuid::Uuid::now_v7().simple());
    // Microseconds keep the order of two rotations within one second.
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    tessera::store::query(
        "INSERT INTO signing_keys (kid, private_der, public_x, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&kid)
    .bind(&der)
    .bind(&x)
    .bind(created)
    .execute(&mut **tx)
    .await?;
    Ok(CurrentKey { kid, der })
}

pub async fn jwks(db: &Db) -> Result<Jwks, tessera::store::DbError> {
    let rows: Vec<(String, String)> = tessera::store::query_as(
        "SELECT kid, public_x FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(Jwks {
        keys: rows
            .into_iter()
            .map(|(kid, x)| Jwk::ed25519(kid, x))
            .collect(),
    })
}
