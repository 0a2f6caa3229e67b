//! Every call to the registry and the log proves who makes it.
//!
//! A request carries its process's credential as `Authorization: Bearer <credential>`
//! (`tessera_identity`); this layer checks it with the control keys (one HMAC) and leaves the
//! [`Principal`] in the request's extensions for the routes' [`Caller`](crate::policy::Caller)
//! checks. Without a valid credential the answer is 401 and nothing else happens. Over
//! mutual TLS, the credential must also name the identity the caller's certificate proved. Health
//! and metrics are outside this layer: they say nothing about the system's contents.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tessera::ApiError;
use tessera::identity::{ControlKeys, Principal};
use tessera::listen::Peer;

/// The layer's state: the keys that check credentials.
pub type Keys = Arc<ControlKeys>;

pub async fn authenticate(State(keys): State<Keys>, mut req: Request, next: Next) -> Response {
    let principal: Result<Principal, &str> = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or("a control-plane credential is required (Authorization: Bearer <credential>)")
        .and_then(|v| v.to_str().map_err(|_| "the credential is not valid"))
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .ok_or("the credential goes as Authorization: Bearer <credential>")
        })
        .and_then(|token| {
            keys.verify(token.trim())
                .ok_or("the credential is not valid")
        });
    // Over mutual TLS the credential must be the certificate's: a credential copied to
    // another process does not make it that process.
    let principal = principal.and_then(|principal| match req.extensions().get::<Peer>() {
        Some(Peer(identity)) if identity.principal() != principal.to_string() => {
            Err("the credential is not the certificate's identity")
        }
        _ => Ok(principal),
    });
    match principal {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(why) => {
            tracing::warn!(path = %req.uri().path(), reason = why, "control-plane call refused");
            ApiError::unauthorized(why).into_response()
        }
    }
}
