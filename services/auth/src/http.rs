//! The auth API: the router and its handlers.
//!
//! Logout and refresh-token reuse revoke the session. The revocation is answered with the
//! `X-Tessera-Revoke-Session` header (the gateway that carried it rejects the session's tokens
//! at once) and published on `/internal/revocations` for every gateway.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tessera::store::is_unique_violation;
use tessera::{ApiError, Caller, Db, Json, Query, unix_now};
use tokio::sync::watch;

use crate::accounts::normalize_email;
use crate::config::AuthConfig;
use crate::tokens::{TokenPair, hash_token, insert_refresh, new_refresh_token};
use crate::{keys, passwords, sessions, tokens};

/// The header that tells the gateway to revoke a session now.
const REVOKE_HEADER: &str = "x-tessera-revoke-session";

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: AuthConfig,
    /// The newest revocation seq this process wrote: wakes long-polling feed readers.
    revoked: watch::Sender<i64>,
}

impl AppState {
    pub fn new(db: Db, config: AuthConfig) -> Self {
        Self {
            db,
            config,
            revoked: watch::channel(0).0,
        }
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
        .route("/internal/users/{id}", get(user_of))
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
    Ok(Json(
        tokens::issue(&st.db, &st.config, &user_id, &roles, &session, refresh).await?,
    ))
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
        let seq = sessions::revoke(&mut tx, &session, st.config.access_ttl).await?;
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
    Ok(
        Json(tokens::issue(&st.db, &st.config, &user_id, &roles, &session, next).await?)
            .into_response(),
    )
}

async fn logout(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let session = caller
        .session
        .ok_or_else(|| ApiError::bad_request("no_session", "this caller has no session"))?;
    let mut tx = st.db.write_tx().await?;
    let seq = sessions::revoke(&mut tx, &session, st.config.access_ttl).await?;
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
    user_view(&st.db, &caller.id).await.map(Json)
}

/// A user's address, for the system's own services (mail: `tessera::mail`); nobody else.
async fn user_of(
    State(st): State<AppState>,
    caller: Caller,
    tessera::Path(id): tessera::Path<String>,
) -> Result<Json<UserView>, ApiError> {
    caller.require_role("system")?;
    user_view(&st.db, &id).await.map(Json)
}

/// The user `id`, as the API shows one.
async fn user_view(db: &tessera::Db, id: &str) -> Result<UserView, ApiError> {
    let row: Option<(String, String, String, String)> =
        tessera::store::query_as("SELECT id, email, name, roles FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(db.pool())
            .await?;
    let (id, email, name, roles) = row.ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(UserView {
        id,
        email,
        name,
        roles: roles.split(',').map(str::to_string).collect(),
    })
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

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::{Value, json};
    use tessera::Passport;
    use tessera::testing::{TempDb, passport, request, send};

    use super::*;
    use crate::accounts;
    use crate::schema::MIGRATIONS;

    /// The router on a fresh database, bootstrapped with an admin; the database goes with it.
    struct Auth {
        _db: TempDb,
        router: Router,
    }

    async fn auth() -> Auth {
        let db = TempDb::new("auth", MIGRATIONS).await;
        let config = AuthConfig {
            issuer: "tessera-auth".into(),
            audience: "tessera-api".into(),
            access_ttl: 900,
            refresh_ttl: 3600,
            admin: Some(("Root@Example.com".into(), "root-password".into())),
        };
        accounts::bootstrap(&db, &config).await.unwrap();
        Auth {
            router: router(AppState::new(db.clone(), config)),
            _db: db,
        }
    }

    /// Who calls, as the passport the request middleware leaves for the handlers says: here
    /// with the login session, which the token endpoints care about.
    #[derive(Clone, Copy)]
    struct Who<'a> {
        sub: &'a str,
        roles: &'a [&'a str],
        session: Option<&'a str>,
    }

    const ANYONE: Who = Who {
        sub: "anonymous",
        roles: &[],
        session: None,
    };
    const GATEWAY: Who = Who {
        sub: "service:gateway",
        roles: &["system"],
        session: None,
    };

    /// An answer: status, the revoke header, the JSON body.
    type Answer = (StatusCode, Option<String>, Value);

    impl Auth {
        async fn call(&self, who: Who<'_>, method: &str, uri: &str, body: Option<Value>) -> Answer {
            let mut req = request(method, uri, &[], body);
            req.extensions_mut().insert(Passport {
                sid: who.session.map(str::to_string),
                ..passport(who.sub, who.roles)
            });
            let (status, headers, body) = send(&self.router, req).await;
            let revoke = headers
                .get(REVOKE_HEADER)
                .map(|v| v.to_str().unwrap().to_string());
            (status, revoke, body)
        }

        async fn login(&self, email: &str, password: &str) -> Answer {
            let body = json!({ "email": email, "password": password });
            self.call(ANYONE, "POST", "/api/auth/login", Some(body))
                .await
        }

        async fn refresh(&self, token: &Value) -> Answer {
            let body = json!({ "refreshToken": token });
            self.call(ANYONE, "POST", "/api/auth/refresh", Some(body))
                .await
        }

        /// The access token's claims, checked against the published JWKS.
        async fn verify(&self, token: &Value) -> Value {
            let token = token.as_str().unwrap();
            let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
            let (_, _, jwks) = self
                .call(ANYONE, "GET", "/api/auth/.well-known/jwks.json", None)
                .await;
            let jwk = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == kid.as_str())
                .expect("the token's key is published");
            let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
            let mut validation = Validation::new(Algorithm::EdDSA);
            validation.set_audience(&["tessera-api"]);
            validation.set_issuer(&["tessera-auth"]);
            jsonwebtoken::decode::<Value>(token, &key, &validation)
                .unwrap()
                .claims
        }
    }

    #[tokio::test]
    async fn a_new_account_signs_in_with_a_verifiable_token() {
        let auth = auth().await;
        let signup =
            json!({ "email": " Ann@Example.COM ", "password": "correct horse", "name": " Ann " });
        let (status, _, user) = auth
            .call(ANYONE, "POST", "/api/auth/signup", Some(signup))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = user["id"].as_str().unwrap().to_string();
        assert_eq!(
            user,
            json!({ "id": id, "email": "ann@example.com", "name": "Ann", "roles": ["user"] })
        );

        let (status, _, pair) = auth.login("ANN@example.com", "correct horse").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (&pair["tokenType"], &pair["expiresIn"]),
            (&json!("Bearer"), &json!(900))
        );
        let claims = auth.verify(&pair["accessToken"]).await;
        assert_eq!(
            (&claims["sub"], &claims["roles"]),
            (&json!(id), &json!(["user"]))
        );
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            900
        );
        assert!(claims["sid"].is_string());

        let me = Who {
            sub: &id,
            roles: &["user"],
            session: claims["sid"].as_str(),
        };
        let (status, _, shown) = auth.call(me, "GET", "/api/auth/me", None).await;
        assert_eq!((status, &shown), (StatusCode::OK, &user));
        let (status, _, body) = auth.call(ANYONE, "GET", "/api/auth/me", None).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &json!("unauthenticated"))
        );

        // The admin made at start signs in with both roles.
        let (_, _, pair) = auth.login("root@example.com", "root-password").await;
        let claims = auth.verify(&pair["accessToken"]).await;
        assert_eq!(claims["roles"], json!(["admin", "user"]));
    }

    #[tokio::test]
    async fn signups_and_logins_are_checked() {
        let auth = auth().await;
        let signup = |email: &str, password: &str, name: &str| json!({ "email": email, "password": password, "name": name });
        for (body, status, code) in [
            (
                signup("ann", "correct horse", "Ann"),
                StatusCode::BAD_REQUEST,
                "invalid_email",
            ),
            (
                signup("ann@example.com", "short", "Ann"),
                StatusCode::BAD_REQUEST,
                "weak_password",
            ),
            (
                signup("ann@example.com", "correct horse", " "),
                StatusCode::BAD_REQUEST,
                "invalid_name",
            ),
            (
                json!({ "email": "ann@example.com", "password": "correct horse" }),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                signup("ROOT@example.com", "correct horse", "Ann"),
                StatusCode::CONFLICT,
                "email_taken",
            ),
        ] {
            let (got, _, answer) = auth
                .call(ANYONE, "POST", "/api/auth/signup", Some(body.clone()))
                .await;
            assert_eq!(
                (got, answer["code"].as_str()),
                (status, Some(code)),
                "{body}"
            );
        }
        for (email, password) in [
            ("root@example.com", "wrong-password"),
            ("nobody@example.com", "root-password"),
            ("not an email", "root-password"),
        ] {
            let (status, _, answer) = auth.login(email, password).await;
            assert_eq!(
                (status, &answer["code"]),
                (StatusCode::UNAUTHORIZED, &json!("invalid_credentials")),
                "{email} {password}"
            );
        }
    }

    #[tokio::test]
    async fn a_reused_refresh_token_ends_its_session() {
        let auth = auth().await;
        let (_, _, first) = auth.login("root@example.com", "root-password").await;
        let sid = auth.verify(&first["accessToken"]).await["sid"].clone();

        let (status, _, second) = auth.refresh(&first["refreshToken"]).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(second["refreshToken"], first["refreshToken"]);
        assert_eq!(
            auth.verify(&second["accessToken"]).await["sid"],
            sid,
            "same session"
        );

        // The spent token again: someone holds a copy. The whole session ends.
        let (status, revoke, answer) = auth.refresh(&first["refreshToken"]).await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::UNAUTHORIZED, &json!("refresh_token_reused"))
        );
        assert_eq!(
            revoke.as_deref(),
            sid.as_str(),
            "the gateway is told at once"
        );
        for token in [&second["refreshToken"], &json!("made-up")] {
            let (status, _, answer) = auth.refresh(token).await;
            assert_eq!(
                (status, &answer["code"]),
                (StatusCode::UNAUTHORIZED, &json!("invalid_refresh_token"))
            );
        }
        let (_, _, feed) = auth
            .call(GATEWAY, "GET", "/internal/revocations?after=0", None)
            .await;
        assert_eq!(feed["items"][0]["sid"], sid);
    }

    #[tokio::test]
    async fn logout_revokes_the_session_for_every_gateway() {
        let auth = auth().await;
        let (_, _, pair) = auth.login("root@example.com", "root-password").await;
        let claims = auth.verify(&pair["accessToken"]).await;
        let root = Who {
            sub: claims["sub"].as_str().unwrap(),
            roles: &["admin", "user"],
            session: claims["sid"].as_str(),
        };
        let feed = "/internal/revocations?after=0";
        let (_, _, before) = auth.call(GATEWAY, "GET", feed, None).await;
        assert_eq!(before, json!({ "seq": 0, "items": [] }));

        let (status, revoke, body) = auth.call(root, "POST", "/api/auth/logout", None).await;
        assert_eq!(
            (status, &body),
            (StatusCode::OK, &json!({ "loggedOut": true }))
        );
        assert_eq!(revoke.as_deref(), claims["sid"].as_str());

        let (status, _, after) = auth.call(GATEWAY, "GET", feed, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (&after["seq"], &after["items"][0]["sid"]),
            (&json!(1), &claims["sid"])
        );
        let (_, _, later) = auth
            .call(GATEWAY, "GET", "/internal/revocations?after=1", None)
            .await;
        assert_eq!(later, json!({ "seq": 1, "items": [] }));
        // The refresh token of the session is dead too.
        let (status, _, _) = auth.refresh(&pair["refreshToken"]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Only services read the feed; a caller without a session cannot log out.
        let (status, _, _) = auth.call(root, "GET", feed, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, body) = auth.call(GATEWAY, "POST", "/api/auth/logout", None).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::BAD_REQUEST, &json!("no_session"))
        );
    }

    #[tokio::test]
    async fn admins_rotate_the_signing_key() {
        let auth = auth().await;
        let user = Who {
            sub: "u",
            roles: &["user"],
            session: None,
        };
        let admin = Who {
            sub: "root",
            roles: &["admin", "user"],
            session: None,
        };
        let (status, _, body) = auth.call(user, "POST", "/api/auth/keys/rotate", None).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::FORBIDDEN, &json!("forbidden"))
        );

        let (_, _, old) = auth.login("root@example.com", "root-password").await;
        let (status, _, rotated) = auth
            .call(admin, "POST", "/api/auth/keys/rotate", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, new) = auth.login("root@example.com", "root-password").await;
        let kid = |pair: &Value| {
            jsonwebtoken::decode_header(pair["accessToken"].as_str().unwrap())
                .unwrap()
                .kid
                .unwrap()
        };
        assert_eq!(
            kid(&new),
            rotated["kid"].as_str().unwrap(),
            "the new key signs"
        );
        assert_ne!(kid(&old), kid(&new));
        // Both verify: the old key stays published.
        auth.verify(&old["accessToken"]).await;
        auth.verify(&new["accessToken"]).await;
    }
}
