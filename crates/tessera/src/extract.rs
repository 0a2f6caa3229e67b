//! Extractors whose rejections have the same shape as every other error.
//!
//! axum's own `Json`, `Query` and `Path` answer bad input with plain-text bodies. These wrap
//! them so that malformed JSON, a wrong type, a missing field, an unknown field (where the
//! type denies them), a bad UUID or an oversized body all get an [`ApiError`] with a 4xx
//! status and a message that says what was wrong.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::passport::Passport;

/// A JSON body in, or a JSON body out.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request("invalid_body", body_text(&e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request("malformed_json", body_text(&e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// axum's messages start with a fixed prefix that says nothing to an API client.
fn body_text(text: &str) -> String {
    text.strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .or_else(|| text.strip_prefix("Failed to parse the request body as JSON: "))
        .unwrap_or(text)
        .to_string()
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query parameters.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| {
                let text = r.body_text();
                ApiError::bad_request(
                    "invalid_query",
                    text.strip_prefix("Failed to deserialize query string: ")
                        .unwrap_or(&text)
                        .to_string(),
                )
            })
    }
}

/// Path parameters (a `Uuid` here rejects a malformed id with 400).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| ApiError::bad_request("invalid_path", r.body_text()))
    }
}

/// The verified passport of the request (possibly anonymous).
impl<S: Send + Sync> FromRequestParts<S> for Passport {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Passport>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing passport"))
    }
}

/// An authenticated caller: a user or a service, never anonymous (401 otherwise).
#[derive(Clone, Debug)]
pub struct Caller {
    /// The user id, or `service:<name>`.
    pub id: String,
    pub roles: Vec<String>,
    /// The login session, for a user.
    pub session: Option<String>,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// 403 unless the caller has `role`.
    pub fn require_role(&self, role: &str) -> Result<(), ApiError> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("requires role {role}")))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let p = Passport::from_request_parts(parts, state).await?;
        if p.is_anonymous() {
            return Err(ApiError::unauthorized("sign in first"));
        }
        Ok(Caller {
            id: p.sub,
            roles: p.roles,
            session: p.sid,
        })
    }
}
