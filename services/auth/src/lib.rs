//! Tessera Shop's `auth` service: accounts, login, access and refresh tokens, and the JWKS the
//! gateway verifies access tokens with.
//!
//! - Passwords are hashed with Argon2id (off the async threads).
//! - Access tokens are EdDSA JWTs (`iss`, `aud`, `sub`, `roles`, `sid`, `jti`, `iat`, `exp`).
//! - Refresh tokens are opaque random strings, stored only as SHA-256, rotated on every use.
//!   Presenting one that was already used revokes its whole session (family): someone holds a
//!   stolen copy.
//! - Logout and reuse revoke the session. The revocation is answered with the
//!   `X-Tessera-Revoke-Session` header (the gateway that carried it rejects the session's
//!   tokens at once) and published on `/internal/revocations` for every gateway.
//!
//! `http.rs` is the API; `accounts.rs`, `tokens.rs`, `sessions.rs`, `keys.rs` and
//! `passwords.rs` are what it is made of.

pub mod accounts;
pub mod config;
pub mod http;
mod keys;
mod passwords;
pub mod schema;
pub mod sessions;
pub mod tokens;

use tessera::Service;

pub use crate::config::AuthConfig;
use crate::http::AppState;
pub use crate::schema::MIGRATIONS;

pub async fn run() -> anyhow::Result<()> {
    Service::new("auth")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let config = AuthConfig::from_settings(&ctx.settings)?;
            let state = AppState::new(ctx.db().clone(), config);
            accounts::bootstrap(&state.db, &state.config).await?;
            Ok(http::router(state))
        })
        .await
}
