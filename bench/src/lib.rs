//! Fixtures for the benchmarks in `bench/`: one tiny JSON handler (about 60 bytes of body),
//! served bare by axum (`bench-upstream`) or as a Tessera service (`bench-service`), so that
//! the difference between them is exactly what the platform adds per hop.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The body every fixture answers: 60 bytes of JSON.
pub const BODY: &str = r#"{"id":"0190f000-0000-7000-8000-000000000005","price":2900}"#;

async fn item() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

/// The handler, as a router.
pub fn router() -> Router {
    Router::new().route("/api/bench/item", get(item))
}
