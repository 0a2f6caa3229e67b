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

mod keys;
mod passwords;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera::store::is_unique_violation;
use tessera::{ApiError, Caller, Db, Json, Migration, Query, Service, unix_now};
use tokio::sync::watch;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "init",
    sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
}];

/// The header that tells the gateway to revoke a session now.
const REVOKE_HEADER: &str = "x-tessera-revoke-session";

/// The service's own settings (from the manifest's `env`).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `AUTH_ISSUER`: the access tokens' `iss`.
    pub issuer: String,
    /// `AUTH_AUDIENCE`: the access tokens' `aud`.
    pub audience: String,
    /// `AUTH_ACCESS_TTL_SECS`.
    pub access_ttl: u64,
    /// `AUTH_REFRESH_TTL_SECS`: how long a session lasts without logging in again.
    pub refresh_ttl: u64,
    /// `AUTH_ADMIN_EMAIL` / `AUTH_ADMIN_PASSWORD`: the admin created on first start.
    pub admin: Option<(String, String)>,
}

impl AuthConfig {
    pub fn from_settings(s: &tessera::Settings) -> Result<Self, tessera::ConfigError> {
        let admin = match (s.raw("AUTH_ADMIN_EMAIL"), s.raw("AUTH_ADMIN_PASSWORD")) {
            (Some(e), Some(p)) => Some((e.to_string(), p.to_string())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(tessera::ConfigError::new(
                    "AUTH_ADMIN_PASSWORD",
                    "is required with AUTH_ADMIN_EMAIL",
                ));
            }
            (None, Some(_)) => {
                return Err(tessera::ConfigError::new(
                    "AUTH_ADMIN_EMAIL",
                    "is required with AUTH_ADMIN_PASSWORD",
                ));
            }
        };
        let access_ttl = s.get_or("AUTH_ACCESS_TTL_SECS", 900u64)?;
        if !(5..=86_400).contains(&access_ttl) {
            return Err(tessera::ConfigError::new(
                "AUTH_ACCESS_TTL_SECS",
                "must be 5 to 86400",
            ));
        }
        Ok(Self {
            issuer: s.get_or("AUTH_ISSUER", "tessera-auth".to_string())?,
            audience: s.get_or("AUTH_AUDIENCE", "tessera-api".to_string())?,
            access_ttl,
            refresh_ttl: s.get_or("AUTH_REFRESH_TTL_SECS", 30 * 86_400u64)?,
            admin,
        })
    }
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: AuthConfig,
    /// The newest revocation seq this process wrote: wakes long-polling feed readers.
    revoked: watch::Sender<i64>,
}

pub async fn run() -> anyhow::Result<()> {
    Service::new("auth")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let config = AuthConfig::from_settings(&ctx.settings)?;
            let state = AppState::new(ctx.db().clone(), config);
            state.bootstrap().await?;
            Ok(router(state))
        })
        .await
}

impl AppState {
    pub fn new(db: Db, config: AuthConfig) -> Self {
        Self {
            db,
            config,
            revoked: watch::channel(0).0,
        }
    }

    /// Makes sure a signing key and the configured admin exist.
    pub async fn bootstrap(&self) -> anyhow::Result<()> {
        keys::current(&self.db).await?;
        if let Some((email, password)) = &self.config.admin {
            let email = normalize_email(email)
                .map_err(|e| anyhow::anyhow!("AUTH_ADMIN_EMAIL: {}", e.message))?;
            let exists: Option<(i64,)> =
                tessera::store::query_as("SELECT 1 FROM users WHERE email = $1")
                    .bind(&email)
                    .fetch_optional(self.db.pool())
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
            .execute(self.db.pool())
            .await?;
            if done.rows_affected() == 1 {
                tracing::info!(email = %email, "created the admin account");
            }
        }
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/auth/signup", post(signup))
        .route("/api/auth/login", post(login))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/me", get(me))
        .route("/api/auth/.well-known/jwks.json", get(jwks))
        .route("/api/auth/keys/rotate", post(rotate))
        .route("/internal/revocations", get(revocations))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    email: String,
    password: String,
    name: String,
}

#[derive(Serialize)]
struct UserView {
    id: String,
    email: String,
    name: String,
    roles: Vec<String>,
}

async fn signup(
    State(st): State<AppState>,
    Json(req): Json<SignupRequest>,
) -> Result<Response, ApiError> {
    let email = normalize_email(&req.email)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "name must be 1 to 100 characters",
        ));
    }
    passwords::check_policy(&req.password)?;
    let hash = passwords::hash(req.password)
        .await
        .map_err(ApiError::internal)?;
    let id = uuid::Uuid::now_v7().to_string();
    let inserted = tessera::store::query(
        "INSERT INTO users (id, email, name, password_hash, roles, created_at) VALUES ($1, $2, $3, $4, 'user', $5)",
    )
    .bind(&id)
    .bind(&email)
    .bind(name)
    .bind(hash)
    .bind(unix_now() as i64)
    .execute(st.db.pool())
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "email_taken",
                "an account with this email already exists",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(user = %id, "signed up");
    let view = UserView {
        id,
        email,
        name: name.to_string(),
        roles: vec!["user".into()],
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenPair {
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

async fn login(
    State(st): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong email or password",
        )
    };
    let email = normalize_email(&req.email).map_err(|_| invalid())?;
    let row: Option<(String, String, String)> =
        tessera::store::query_as("SELECT id, password_hash, roles FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(st.db.pool())
            .await?;
    // Verify against a dummy hash when there is no such user, so timing does not tell.
    let (user_id, hash, roles) = match row {
        Some(r) => r,
        None => {
            let _ = passwords::verify(req.password, passwords::DUMMY_HASH.to_string()).await;
            return Err(invalid());
        }
    };
    if !passwords::verify(req.password, hash)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(invalid());
    }

    let now = unix_now();
    let session = uuid::Uuid::now_v7().to_string();
    let refresh = new_refresh_token();
    let mut tx = st.db.write_tx().await?;
    tessera::store::query(
        "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&session)
    .bind(&user_id)
    .bind(now as i64)
    .bind((now + st.config.refresh_ttl) as i64)
    .execute(&mut *tx)
    .await?;
    insert_refresh(&mut tx, &refresh, &session, now + st.config.refresh_ttl).await?;
    tx.commit().await?;
    tracing::info!(user = %user_id, session = %session, "logged in");
    Ok(Json(st.issue(&user_id, &roles, &session, refresh).await?))
}

impl AppState {
    async fn issue(
        &self,
        user_id: &str,
        roles: &str,
        session: &str,
        refresh: String,
    ) -> Result<TokenPair, ApiError> {
        let key = keys::current(&self.db).await?;
        let now = unix_now();
        let claims = AccessClaims {
            iss: &self.config.issuer,
            aud: &self.config.audience,
            sub: user_id,
            roles: roles.split(',').filter(|r| !r.is_empty()).collect(),
            sid: session,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp: now + self.config.access_ttl,
        };
        let access_token = key.sign(&claims).map_err(ApiError::internal)?;
        Ok(TokenPair {
            access_token,
            refresh_token: refresh,
            expires_in: self.config.access_ttl,
            token_type: "Bearer",
        })
    }

    /// Revokes a session inside `tx`; returns the revocation's seq.
    async fn revoke_session(
        &self,
        tx: &mut tessera::store::Tx,
        session: &str,
    ) -> Result<i64, tessera::store::DbError> {
        let now = unix_now();
        tessera::store::query(
            "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now as i64)
        .bind(session)
        .execute(&mut **tx)
        .await?;
        let (seq,): (i64,) = tessera::store::query_as(
            "INSERT INTO revocations (session_id, expires_at) VALUES ($1, $2) RETURNING seq",
        )
        .bind(session)
        .bind((now + self.config.access_ttl) as i64)
        .fetch_one(&mut **tx)
        .await?;
        Ok(seq)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    State(st): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> Result<Response, ApiError> {
    let invalid = |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_refresh_token", msg);
    let hash = hash_token(&req.refresh_token);
    let now = unix_now();
    let mut tx = st.db.write_tx().await?;
    // session, expires_at, used_at, user, roles, session revoked_at
    type RefreshRow = (String, i64, Option<i64>, String, String, Option<i64>);
    let row: Option<RefreshRow> = tessera::store::query_as(
        "SELECT r.session_id, r.expires_at, r.used_at, s.user_id, u.roles, s.revoked_at
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id
         WHERE r.hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((session, expires_at, used_at, user_id, roles, revoked_at)) = row else {
        return Err(invalid("unknown refresh token"));
    };
    if revoked_at.is_some() {
        return Err(invalid("this session has ended"));
    }
    if used_at.is_some() {
        // Reuse: a copy of an already rotated token. End the whole family.
        let seq = st.revoke_session(&mut tx, &session).await?;
        tx.commit().await?;
        st.revoked.send_replace(seq);
        tracing::warn!(session = %session, user = %user_id, "refresh token reused; session revoked");
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "refresh_token_reused",
            "refresh token was already used; session revoked",
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&session) {
            resp.headers_mut().insert(REVOKE_HEADER, v);
        }
        return Ok(resp);
    }
    if expires_at <= now as i64 {
        return Err(invalid("refresh token has expired"));
    }
    tessera::store::query("UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2")
        .bind(now as i64)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    let next = new_refresh_token();
    insert_refresh(&mut tx, &next, &session, expires_at as u64).await?;
    tx.commit().await?;
    Ok(Json(st.issue(&user_id, &roles, &session, next).await?).into_response())
}

async fn logout(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let session = caller
        .session
        .ok_or_else(|| ApiError::bad_request("no_session", "this caller has no session"))?;
    let mut tx = st.db.write_tx().await?;
    let seq = st.revoke_session(&mut tx, &session).await?;
    tx.commit().await?;
    st.revoked.send_replace(seq);
    tracing::info!(user = %caller.id, session = %session, "logged out");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&session) {
        headers.insert(REVOKE_HEADER, v);
    }
    Ok((headers, Json(serde_json::json!({ "loggedOut": true }))).into_response())
}

async fn me(State(st): State<AppState>, caller: Caller) -> Result<Json<UserView>, ApiError> {
    let row: Option<(String, String, String, String)> =
        tessera::store::query_as("SELECT id, email, name, roles FROM users WHERE id = $1")
            .bind(&caller.id)
            .fetch_optional(st.db.pool())
            .await?;
    let (id, email, name, roles) = row.ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(Json(UserView {
        id,
        email,
        name,
        roles: roles.split(',').map(str::to_string).collect(),
    }))
}

async fn jwks(State(st): State<AppState>) -> Result<Response, ApiError> {
    let jwks = keys::jwks(&st.db).await?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "max-age=60")],
        Json(jwks),
    )
        .into_response())
}

async fn rotate(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_role("admin")?;
    let kid = keys::rotate(&st.db).await?;
    Ok(Json(serde_json::json!({ "kid": kid })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    wait: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FeedItem {
    seq: i64,
    sid: String,
    expires_at: i64,
}

/// Revocations after `after`, waiting up to `wait` ms for one when there are none.
async fn revocations(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<FeedQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_role("system")?;
    let mut woken = st.revoked.subscribe();
    let wait = Duration::from_millis(q.wait.min(25_000));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let rows: Vec<(i64, String, i64)> = tessera::store::query_as(
            "SELECT seq, session_id, expires_at FROM revocations WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT 1000",
        )
        .bind(q.after)
        .bind(unix_now() as i64)
        .fetch_all(st.db.pool())
        .await?;
        let now = tokio::time::Instant::now();
        if !rows.is_empty() || now >= deadline {
            let (max,): (i64,) =
                tessera::store::query_as("SELECT COALESCE(MAX(seq), 0) FROM revocations")
                    .fetch_one(st.db.pool())
                    .await?;
            let seq = rows.last().map_or(max.max(q.after), |r| r.0);
            let items: Vec<FeedItem> = rows
                .into_iter()
                .map(|(seq, sid, expires_at)| FeedItem {
                    seq,
                    sid,
                    expires_at,
                })
                .collect();
            return Ok(Json(serde_json::json!({ "seq": seq, "items": items })));
        }
        // Another replica may write a revocation too: look again at least every second.
        let nap = (deadline - now).min(Duration::from_secs(1));
        let _ = tokio::time::timeout(nap, woken.changed()).await;
    }
}

fn normalize_email(raw: &str) -> Result<String, ApiError> {
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

fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

async fn insert_refresh(
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

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token();
        assert_ne!(a, new_refresh_token());
        assert_ne!(hash_token(&a), a);
        assert_eq!(hash_token(&a), hash_token(&a));
    }
}
