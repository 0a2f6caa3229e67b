//! Fixtures for the benchmarks in `bench/`: one tiny JSON handler (about 60 bytes of body),
//! served bare by axum (`bench-upstream`) or as a Tessera service (`bench-service`), so that
//! the difference between them is exactly what the platform adds per hop.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};

/// The body every fixture answers: 60 bytes of JSON.
pub const BODY: &str = r#"{"id":"0190f000-0000-7000-8000-000000000005","price":2900}"#;

async fn item() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

/// Takes an OTLP/HTTP post and forgets it: the sink a traced service exports to in
/// `bench/per_hop.py`, so that the service pays all of its tracing and nothing else is measured.
async fn otlp_sink(_body: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], "")
}

/// The handler, as a router (and an OTLP sink at `/v1/traces` and `/v1/logs`).
pub fn router() -> Router {
    Router::new()
        .route("/api/bench/item", get(item))
        .route("/v1/traces", post(otlp_sink))
        .route("/v1/logs", post(otlp_sink))
}
