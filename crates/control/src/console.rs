//! The Tessera Console: a web page served by the control plane at `/console/`, built into the
//! binary (plain HTML, CSS and JavaScript in `crates/control/console/`, no build step): the
//! services and their instances, each route's rate, errors and latency, traces with their
//! waterfall and log lines, a live tail of the logs, topics and consumer groups with their lag,
//! dead letters with a replay button.
//!
//! The page itself holds nothing: every figure comes from the control plane's API, called
//! with the operator's credential the page was given (a sign-in form, or `tessera up`'s URL
//! for a local system, the credential in its fragment, which never reaches a server), so the
//! console shows only what an admin may read and does only what an admin may do. Its
//! responses forbid framing and any script but its own.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The console's pages (outside the credential check: they carry no data).
pub fn routes() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/console.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
