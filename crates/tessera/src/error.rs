//! The one place a service's errors become HTTP responses.
//!
//! A handler returns `Result<_, ApiError>`. The body is `{"code": "...", "message": "..."}`,
//! which the gateway puts into the envelope's `error` field as it is, so the message must be
//! fit for a client. Internal errors and failed calls to other services are logged with the
//! trace id (the request span carries it) and answered with a fixed message per code that
//! names at most the other service: never an address, a port or a piece of another service's
//! body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The code of a 503 for a database that stayed busy (locked, or every connection in use):
/// nothing was written; trying again later may pass.
pub const BUSY: &str = "database_busy";
/// The code of a 503 for a transaction that lost a race with a concurrent one and was rolled
/// back: nothing was written, and trying again at once is the cure.
pub const CONFLICT: &str = "database_conflict";

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// An unexpected failure: logged in full, answered without details.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl ApiError {
    /// Whether the request failed only because its transaction lost a race with a concurrent
    /// one: nothing was written, and it may be tried again at once.
    pub fn is_conflict(&self) -> bool {
        self.code == CONFLICT
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            code: self.code,
            message: &self.message,
        })
        .unwrap_or_default();
        (
            self.status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<crate::store::DbError> for ApiError {
    fn from(err: crate::store::DbError) -> Self {
        if err.is_race() {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                CONFLICT,
                "a concurrent change got there first, try again",
            );
        }
        if err.is_busy() {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                BUSY,
                "database is busy, try again",
            );
        }
        if err.is_unavailable() {
            // Where and why go to the log; the caller learns only that it may try later.
            tracing::warn!(error = %err, "database unavailable");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable, try again later",
            );
        }
        Self::internal(err)
    }
}

/// A failed call to another service is answered with a fixed message per code, naming the
/// service by name only: the error's text holds addresses, ports and pieces of the other
/// service's body, and goes to the log line (with the trace id) instead.
impl From<crate::client::CallError> for ApiError {
    fn from(err: crate::client::CallError) -> Self {
        use crate::client::CallError;
        match &err {
            CallError::Status {
                service, status, ..
            } if status.is_client_error() => {
                tracing::warn!(error = %err, "call refused");
                Self::new(
                    *status,
                    "upstream_rejected",
                    format!("the {service} service refused the request"),
                )
            }
            CallError::NoInstance(service)
            | CallError::Timeout(service)
            | CallError::Connect(service, _)
            | CallError::Broken(service, _)
            | CallError::CircuitOpen(service)
            | CallError::BulkheadFull(service) => {
                tracing::warn!(error = %err, "call failed");
                Self::unavailable(format!("the {service} service is unavailable"))
            }
            CallError::Status { .. } | CallError::Decode(..) => Self::internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http::Method;

    use super::*;
    use crate::client::{CallError, ServiceClient};
    use crate::passport::PassportKeys;
    use crate::registry::{Discovery, Instance};
    use crate::store::DbError;

    /// The body a client gets for `e`.
    async fn body(e: ApiError) -> String {
        let body = e.into_response().into_body();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_refused_call_tells_the_client_which_service_not_where_it_was() {
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let port = address.rsplit(':').next().unwrap().to_string();
        let client = ServiceClient::new(
            Discovery::fixed([Instance {
                id: "inventory-1".into(),
                service: "inventory".into(),
                address: address.clone(),
                version: "test".into(),
                metadata: Default::default(),
                weight: None,
            }]),
            Arc::new(PassportKeys::from_spec(&PassportKeys::generate_spec(), "test").unwrap()),
            "order",
            Duration::from_secs(2),
        );
        let err = client
            .send(Method::POST, "inventory", "/v1/reservations", None)
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Connect(..)), "{err}");
        assert!(
            err.to_string().contains(&address),
            "the detail is there: {err}"
        );

        let e = ApiError::from(err);
        assert_eq!(
            (e.status, e.code, e.message.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the inventory service is unavailable"
            )
        );
        let body = body(e).await;
        assert!(
            !body.contains("127.0.0.1") && !body.contains(&port),
            "{body}"
        );
    }

    #[tokio::test]
    async fn no_failed_call_leaks_an_address_or_the_other_services_body() {
        let secret = "10.1.2.3:5432";
        let cases = [
            (
                CallError::Broken(
                    "inventory".into(),
                    format!("the exchange with {secret} failed"),
                ),
                503,
                "unavailable",
                "the inventory service is unavailable",
            ),
            (
                CallError::Timeout("inventory".into()),
                503,
                "unavailable",
                "the inventory service is unavailable",
            ),
            (
                CallError::NoInstance("payment".into()),
                503,
                "unavailable",
                "the payment service is unavailable",
            ),
            (
                CallError::CircuitOpen("payment".into()),
                503,
                "unavailable",
                "the payment service is unavailable",
            ),
            (
                CallError::BulkheadFull("payment".into()),
                503,
                "unavailable",
                "the payment service is unavailable",
            ),
            (
                CallError::Status {
                    service: "inventory".into(),
                    status: StatusCode::CONFLICT,
                    body: format!(r#"{{"code":"x","message":"row locked on {secret}"}}"#),
                },
                409,
                "upstream_rejected",
                "the inventory service refused the request",
            ),
            (
                CallError::Status {
                    service: "inventory".into(),
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: format!("panicked at {secret}"),
                },
                500,
                "internal",
                "internal error",
            ),
            (
                CallError::Decode("inventory".into(), format!("expected a list near {secret}")),
                500,
                "internal",
                "internal error",
            ),
        ];
        for (err, status, code, message) in cases {
            let e = ApiError::from(err);
            assert_eq!(
                (e.status.as_u16(), e.code, e.message.as_str()),
                (status, code, message)
            );
            let body = body(e).await;
            assert!(
                !body.contains("10.1.2.3") && !body.contains("5432"),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn database_errors_say_busy_or_internal_and_nothing_more() {
        let e = ApiError::from(DbError::Busy(Duration::from_secs(5)));
        assert_eq!((e.status.as_u16(), e.code), (503, "database_busy"));
        assert_eq!(e.message, "database is busy, try again");
        let e = ApiError::from(DbError::Unavailable(
            "postgres://shop:***@10.0.0.7/orders: connection refused".into(),
        ));
        assert_eq!((e.status.as_u16(), e.code), (503, "database_unavailable"));
        assert!(!e.message.contains("10.0.0.7"), "{}", e.message);
        let e = ApiError::from(DbError::Decode(
            "column orders.secret_note: bad utf-8".into(),
        ));
        assert_eq!((e.status.as_u16(), e.code), (500, "internal"));
        let body = body(e).await;
        assert_eq!(body, r#"{"code":"internal","message":"internal error"}"#);
    }
}
