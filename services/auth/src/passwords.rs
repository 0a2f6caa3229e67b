//! Password hashing with Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes), run on
//! the blocking pool so that a login never stalls the async threads, and at most one hash per
//! core at a time: a burst of logins queues instead of holding 19 MiB per blocking thread at
//! once, and gains nothing from more threads than cores anyway. (The binary tells the
//! allocator to give each hash's block back to the system when it is freed; see `main.rs`.)

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use tessera::ApiError;

/// A valid hash of a random password, verified against when the user does not exist.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$hmV4P7bE6Y8Yq0C6qf3aU9Zyw3Pq6ZbQ2m4m3Xw1xXo";

pub fn check_policy(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(8..=128).contains(&n) {
        return Err(ApiError::bad_request(
            "weak_password",
            "password must be 8 to 128 characters",
        ));
    }
    Ok(())
}

/// Permits to hash: one per core.
fn hashing() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

pub async fn hash(password: String) -> anyhow::Result<String> {
    let _permit = hashing().acquire().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
    })
    .await?
}

pub async fn verify(password: String, hash: String) -> anyhow::Result<bool> {
    let _permit = hashing().acquire().await?;
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| anyhow::anyhow!("stored hash is malformed: {e}"))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify() {
        let h = hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!verify("wrong horse".into(), h).await.unwrap());
        // The dummy hash parses, so the no-such-user path costs a real verification.
        assert!(!verify("x".into(), DUMMY_HASH.into()).await.unwrap());
    }

    #[test]
    fn policy() {
        assert!(check_policy("short").is_err());
        assert!(check_policy("long enough").is_ok());
    }
}
