//! The one place a service's errors become HTTP responses.
//!
//! A handler returns `Result<_, ApiError>`. The body is `{"code": "...", "message": "..."}`,
//! which the gateway puts into the envelope's `error` field. Internal errors are logged with
//! the trace id (the request span carries it) and answered with a generic message, so nothing
//! internal leaks to a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

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
        if err.is_busy() {
            return Self::unavailable("database is busy, try again");
        }
        Self::internal(err)
    }
}

impl From<crate::client::CallError> for ApiError {
    fn from(err: crate::client::CallError) -> Self {
        use crate::client::CallError;
        match err {
            CallError::Status { status, .. } if status.is_client_error() => {
                Self::new(status, "upstream_rejected", err.to_string())
            }
            CallError::NoInstance(_)
            | CallError::Timeout(_)
            | CallError::Connect(..)
            | CallError::Broken(..)
            | CallError::CircuitOpen(_)
            | CallError::BulkheadFull(_) => {
                tracing::warn!(error = %err, "call failed");
                Self::unavailable(err.to_string())
            }
            other => Self::internal(other),
        }
    }
}
