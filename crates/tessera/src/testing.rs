//! Fixtures for a service's in-crate tests of its router: no socket, no process.
//!
//! A service exposes `fn router(state) -> Router`; its unit tests open the database in a fresh
//! directory ([`TempDb`]), build the router on it ([`App`]), and drive it with `oneshot`
//! ([`App::call`], or [`request`] and [`send`] for what that does not cover). The request middleware is not on that router, so a request carries
//! the [`Passport`] the middleware would have left for the handlers ([`passport`]), for the
//! callers every service's tests speak of ([`ANYONE`], [`ANN`], [`BOB`], [`ADMIN`]). A consumer's
//! handler is driven the same way, one event at a time ([`handle`]).
//!
//! It lives here, behind the `test-util` feature, so that the services share one copy rather
//! than each writing its own: a service asks for it in `[dev-dependencies]` only, and nothing
//! of it reaches a binary.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::events::{Event, Handler};
use crate::{Db, Migration, Passport};

/// A caller: the passport's subject and roles.
pub type Who<'a> = (&'a str, &'a [&'a str]);

/// A caller without an access token.
pub const ANYONE: Who<'static> = (crate::passport::ANONYMOUS, &[]);
/// A customer.
pub const ANN: Who<'static> = ("ann", &["user"]);
/// Another customer, who must not see Ann's things.
pub const BOB: Who<'static> = ("bob", &["user"]);
/// An administrator.
pub const ADMIN: Who<'static> = ("root", &["admin", "user"]);

/// A service's database in a fresh temporary directory, migrated; the directory is removed
/// when this is dropped. It derefs to the [`Db`].
pub struct TempDb {
    db: Db,
    dir: PathBuf,
    url: String,
}

impl TempDb {
    /// Opens `service`'s database, as the runtime would, in a new directory, applying
    /// `migrations`.
    pub async fn new(service: &str, migrations: &[Migration]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tessera-test-{service}-{}", uuid::Uuid::new_v4()));
        let url = Db::default_url(&dir, service);
        let db = Db::open(&url, migrations)
            .await
            .expect("a database in a fresh directory opens");
        Self { db, dir, url }
    }

    /// The database's URL, to open it again (say, with more migrations).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory that holds it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Deref for TempDb {
    type Target = Db;

    fn deref(&self) -> &Db {
        &self.db
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A passport as the request middleware leaves it for the handlers.
pub fn passport(sub: &str, roles: &[&str]) -> Passport {
    Passport {
        iss: "tessera-gateway".into(),
        aud: "test".into(),
        sub: sub.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        sid: None,
        tid: "0af7651916cd43dd8448eb211c80319c".into(),
        jti: "j".into(),
        iat: 0,
        exp: u64::MAX,
    }
}

/// A service's router on its own [`TempDb`]: what most router tests call.
pub struct App {
    pub db: TempDb,
    pub router: Router,
}

impl App {
    /// `router` built on `service`'s database, fresh and migrated.
    pub async fn new(
        service: &str,
        migrations: &[Migration],
        router: impl FnOnce(Db) -> Router,
    ) -> Self {
        let db = TempDb::new(service, migrations).await;
        let router = router(db.clone());
        Self { db, router }
    }

    /// Calls the router as `who`: the answer's status and its body as JSON (`Null` when it
    /// is not JSON). `body`, if any, is sent as JSON.
    pub async fn call(
        &self,
        who: Who<'_>,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(who, method, uri, &[], body).await
    }

    /// [`App::call`] with more request headers (say, `Idempotency-Key`).
    pub async fn call_with(
        &self,
        who: Who<'_>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = request(method, uri, headers, body);
        request.extensions_mut().insert(passport(who.0, who.1));
        let (status, _, body) = send(&self.router, request).await;
        (status, body)
    }
}

/// A request without a passport: `headers`, and `body`, if any, as JSON. Insert a
/// [`Passport`] into its extensions to call as someone.
pub fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("a valid request")
}

/// Sends `request` through `router`: the answer's status, headers, and body as JSON (`Null`
/// when it is not JSON).
pub async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("a router does not fail");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the body reads");
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Runs `event` through a consumer's `handler` in one write transaction and commits it, as the
/// consumer would.
pub async fn handle(db: &Db, handler: &dyn Handler, event: &Event) {
    let mut tx = db.write_tx().await.expect("a write transaction");
    handler
        .handle(event, &mut tx)
        .await
        .expect("the handler takes the event");
    tx.commit().await.expect("the transaction commits");
}

#[cfg(test)]
mod tests {
    use axum::Extension;
    use axum::routing::post;
    use serde_json::json;

    use super::*;

    /// Echoes the caller, the idempotency key and the body back.
    fn echo() -> Router {
        Router::new().route(
            "/echo",
            post(
                |Extension(p): Extension<Passport>, headers: HeaderMap, body: String| async move {
                    let key = headers.get("idempotency-key").map(|v| v.to_str().unwrap());
                    axum::Json(json!({ "sub": p.sub, "roles": p.roles, "key": key, "body": body }))
                },
            ),
        )
    }

    #[tokio::test]
    async fn a_call_carries_the_passport_headers_and_json() {
        let app = App::new("test", &[], |_| echo()).await;
        let (status, answer) = app
            .call_with(
                ADMIN,
                "POST",
                "/echo",
                &[("idempotency-key", "k1")],
                Some(json!({ "a": 1 })),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            answer,
            json!({ "sub": "root", "roles": ["admin", "user"], "key": "k1", "body": "{\"a\":1}" })
        );
        let (status, answer) = app.call(ANYONE, "GET", "/nowhere", None).await;
        assert_eq!((status, answer), (StatusCode::NOT_FOUND, Value::Null));
    }

    #[tokio::test]
    async fn the_directory_goes_with_the_database() {
        let db = TempDb::new("test", &[]).await;
        let dir = db.dir().to_path_buf();
        assert!(dir.join("test.db").exists());
        db.close().await;
        drop(db);
        assert!(!dir.exists());
    }
}
