//! The answers the gateway makes itself, before an upstream is asked or instead of its answer.
//!
//! Every stage refuses with a [`GatewayError`]: a status, a stable code a client can match on,
//! and one fixed sentence for people. `wrap::refusal` is the one place it becomes a response.
//! A message is written for the client and says what happened in its terms; it never carries
//! an address, a port or a piece of an upstream's body. What an operator needs to know goes to
//! the log line, with the request's trace id, where it happens.

use std::borrow::Cow;

use http::StatusCode;

/// A response the gateway makes itself.
#[derive(Debug)]
pub struct GatewayError {
    pub status: StatusCode,
    pub code: &'static str,
    /// Fixed text in all but one case (a token's fault, `tokens::TokenError`), so a refusal
    /// allocates nothing.
    pub message: Cow<'static, str>,
    /// For 429: (limit, seconds to wait).
    pub retry_after: Option<(u32, u64)>,
}

impl GatewayError {
    pub const fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message: Cow::Borrowed(message),
            retry_after: None,
        }
    }

    /// The request's path has dot segments or empty ones (`routes.rs`).
    pub const PATH_NOT_NORMAL: Self = Self::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "the path has '.', '..' or empty segments",
    );

    /// No route matches the request's path.
    pub const ROUTE_NOT_FOUND: Self = Self::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no route for this path",
    );
}
