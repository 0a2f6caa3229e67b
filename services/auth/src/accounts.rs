//! Accounts: how an email is normalized and checked, and the admin account created at first
//! start.

use tessera::{ApiError, Db, unix_now};

use crate::config::AuthConfig;
use crate::{keys, passwords};

/// Makes sure a signing key and the configured admin exist.
pub async fn bootstrap(db: &Db, config: &AuthConfig) -> anyhow::Result<()> {
    keys::current(db).await?;
    if let Some((email, password)) = &config.admin {
        let email = normalize_email(email)
            .map_err(|e| anyhow::anyhow!("AUTH_ADMIN_EMAIL: {}", e.message))?;
        let exists: Option<(i64,)> =
            tessera::store::query_as("SELECT 1 FROM users WHERE email = $1")
                .bind(&email)
                .fetch_optional(db.pool())
                .await?;
        if exists.is_some() {
            return Ok(()); // no 19 MiB, 50 ms hash on every start
        }
        let hash = passwords::hash(password.clone()).await?;
        let done = tessera::store::query(
            "INSERT INTO users (id, email, name, password_hash, roles, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&email)
        .bind("Administrator")
        .bind(hash)
        .bind("admin,user")
        .bind(unix_now() as i64)
        .execute(db.pool())
        .await?;
        if done.rows_affected() == 1 {
            tracing::info!(email = %email, "created the admin account");
        }
    }
    Ok(())
}

/// Lower-cased and trimmed; 400 `invalid_email` unless it looks like name@example.com.
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let bad = || ApiError::bad_request("invalid_email", "email must look like name@example.com");
    if email.len() > 254 || email.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "a@b@c.com",
            "ann@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
