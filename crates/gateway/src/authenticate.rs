//! Who is calling: the access token of `Authorization: Bearer <token>`, verified
//! (`tokens.rs`) into the caller it speaks for.
//!
//! No token is no caller: whether the route admits that is the authorize stage's question.
//! A token that is there must be good, on every route: a malformed, forged, expired or revoked
//! one is 401, never quietly treated as no token, so that a client whose session ended learns
//! so instead of seeing a signed-out view. When the token service is needed (a key id the
//! gateway has not seen) and cannot be reached, the answer is 503: the token may well be good.
//!
//! The gateway also ends sessions here: a response carrying [`REVOKE_SESSION`] (the token
//! service's logout) revokes the session at once, before that response reaches the client.
//! Only the token service's answers may: any other service saying so is ignored, or one
//! compromised service could end every user's session.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::error::GatewayError;
use crate::fields::Fields;
use crate::tokens::{TokenError, TokenVerifier, Verified};

/// A response header by which an upstream asks the gateway to revoke the caller's session
/// at once (the token service sets it on logout). Never sent on to the client.
pub const REVOKE_SESSION: &str = "x-tessera-revoke-session";

/// The caller the request's access token speaks for, `None` without one. On a route that
/// lets WebSockets through (`websocket`), a token offered as a subprotocol counts too.
pub async fn caller(
    tokens: Option<&TokenVerifier>,
    fields: &Fields<'_>,
    websocket: bool,
) -> Result<Option<Arc<Verified>>, GatewayError> {
    let token = match fields.get("authorization") {
        Some(value) => bearer(value).ok_or(GatewayError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "expected a Bearer token",
        ))?,
        // A browser cannot set `Authorization` on a WebSocket: it offers the token as a
        // subprotocol instead.
        None if websocket => match fields
            .get("sec-websocket-protocol")
            .and_then(subprotocol_token)
        {
            Some(token) => token,
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let verifier = tokens.ok_or(GatewayError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "this gateway accepts no tokens",
    ))?;
    match verifier.verify(token).await {
        Ok(v) => Ok(Some(v)),
        Err(TokenError::Unavailable) => Err(GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "cannot verify tokens right now",
        )),
        Err(e) => Err(GatewayError {
            message: e.to_string().into(),
            ..GatewayError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "")
        }),
    }
}

/// The subprotocol a browser's WebSocket offers its access token as (`new WebSocket(url,
/// ["tessera", "bearer." + token])`): a browser cannot set `Authorization` on a handshake, and
/// a token in the URL would be written to every access log on the way. It is taken like an
/// `Authorization` header, and never forwarded (`forward.rs`).
pub const BEARER_SUBPROTOCOL: &str = "bearer.";

/// The access token a `Sec-WebSocket-Protocol` value offers, if any.
pub fn subprotocol_token(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value)
        .ok()?
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL))
        .filter(|t| !t.is_empty())
}

/// The token of an `Authorization` value in the `Bearer` scheme.
#[inline]
fn bearer(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Revokes the session an answer of service `from` names in [`REVOKE_SESSION`], for
/// `lifetime` (the longest its tokens can live), if `from` is the token service; the other
/// gateways are told before the answer goes back (`TokenVerifier::revoke_everywhere`).
pub async fn revoke_if_asked(
    tokens: Option<&TokenVerifier>,
    from: &str,
    answer: &Fields<'_>,
    lifetime: Duration,
) {
    if let (Some(sid), Some(tokens)) = (answer.get_str(REVOKE_SESSION), tokens) {
        if tokens.service() != from {
            tracing::warn!(
                service = from,
                "ignoring a session revocation from a service that does not issue tokens"
            );
            return;
        }
        tokens
            .revoke_everywhere(sid, tessera::unix_now() + lifetime.as_secs())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Head};

    async fn refusal(tokens: Option<&TokenVerifier>, authorization: &str) -> GatewayError {
        let head = Head::request(&[&format!("Authorization: {authorization}")]);
        caller(tokens, &head.fields(), false).await.unwrap_err()
    }

    fn is_401(e: &GatewayError, message: &str) {
        assert_eq!(
            (e.status, e.code, &*e.message),
            (StatusCode::UNAUTHORIZED, "unauthenticated", message)
        );
    }

    #[tokio::test]
    async fn a_good_token_is_its_caller_and_no_token_is_none() {
        let verifier = testing::verifier();
        let token = testing::token("u1", &["admin"], Some("s1"), 600);
        let head = Head::request(&[&format!("Authorization: Bearer {token}")]);
        let who = caller(Some(&verifier), &head.fields(), false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (who.sub.as_str(), &who.roles[..]),
            ("u1", &["admin".to_string()][..])
        );
        // The scheme's case, and space around the token, do not matter.
        let head = Head::request(&[&format!("authorization: bearer  {token} ")]);
        assert!(
            caller(Some(&verifier), &head.fields(), false)
                .await
                .unwrap()
                .is_some()
        );

        let head = Head::request(&["Cookie: a=b"]);
        assert!(
            caller(Some(&verifier), &head.fields(), false)
                .await
                .unwrap()
                .is_none()
        );
        assert!(caller(None, &head.fields(), false).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_bad_token_is_401_on_every_route() {
        let verifier = testing::verifier();
        let v = Some(&*verifier);
        is_401(&refusal(v, "Basic dTpw").await, "expected a Bearer token");
        is_401(&refusal(v, "Bearertoken").await, "expected a Bearer token");
        is_401(
            &refusal(v, "Bearer not.a.jwt").await,
            "malformed access token",
        );
        let forged = testing::forged("u1");
        is_401(
            &refusal(v, &format!("Bearer {forged}")).await,
            "access token is invalid",
        );
        let expired = testing::token("u1", &[], None, -600);
        is_401(
            &refusal(v, &format!("Bearer {expired}")).await,
            "access token has expired",
        );
        let token = testing::token("u1", &[], None, 600);
        is_401(
            &refusal(None, &format!("Bearer {token}")).await,
            "this gateway accepts no tokens",
        );
    }

    #[tokio::test]
    async fn an_unknown_key_without_a_token_service_is_503_not_401() {
        let verifier = testing::verifier();
        let token = testing::unknown_key("u1");
        let e = refusal(Some(&verifier), &format!("Bearer {token}")).await;
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
    }

    #[tokio::test]
    async fn a_session_revoked_by_an_answer_is_refused_from_then_on() {
        let verifier = testing::verifier();
        let token = testing::token("u1", &[], Some("s1"), 600);
        let other = testing::token("u2", &[], Some("s2"), 600);
        let request = Head::request(&[&format!("Authorization: Bearer {token}")]);
        assert!(
            caller(Some(&verifier), &request.fields(), false)
                .await
                .is_ok()
        );

        let logout = Head::response(&["X-Tessera-Revoke-Session: s1"]);
        // Said by another service than the token service: ignored.
        revoke_if_asked(
            Some(&verifier),
            "catalog",
            &logout.fields(),
            Duration::from_secs(60),
        )
        .await;
        assert!(
            caller(Some(&verifier), &request.fields(), false)
                .await
                .is_ok()
        );
        revoke_if_asked(
            Some(&verifier),
            "auth",
            &logout.fields(),
            Duration::from_secs(60),
        )
        .await;
        let e = caller(Some(&verifier), &request.fields(), false)
            .await
            .unwrap_err();
        is_401(&e, "session has been revoked");
        // Only that session.
        let head = Head::request(&[&format!("Authorization: Bearer {other}")]);
        assert!(caller(Some(&verifier), &head.fields(), false).await.is_ok());
        // An answer without the field revokes nothing; without tokens, nothing to revoke.
        revoke_if_asked(None, "auth", &logout.fields(), Duration::from_secs(60)).await;
        let plain = Head::response(&["X-Other: s2"]);
        revoke_if_asked(
            Some(&verifier),
            "auth",
            &plain.fields(),
            Duration::from_secs(60),
        )
        .await;
        assert!(caller(Some(&verifier), &head.fields(), false).await.is_ok());
    }
}
