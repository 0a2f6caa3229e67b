//! The Tessera service library: what every service links.
//!
//! A service built on it gets, without writing them again: typed configuration from the
//! environment the runner hands it, its own database with migrations, self-registration and
//! heartbeats, passport verification on every request, W3C trace propagation, JSON logs that
//! carry the trace, health endpoints, Prometheus metrics, and a client that calls other
//! services by name. See `docs/service.md` for a minimal service.

pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod http1;
pub mod log;
pub mod manifest;
pub mod metrics;
pub mod passport;
pub mod registry;
pub mod resilience;
pub mod saga;
pub mod service;
pub mod store;
pub mod trace;

pub use client::{CallError, ServiceClient};
pub use config::{ConfigError, ServiceConfig, Settings};
pub use error::ApiError;
pub use extract::{Caller, Json, Path, Query};
pub use passport::{Passport, PassportKeys};
pub use service::{Context, Events, Service};
pub use store::{Db, DbError, Migration, Tx};
pub use trace::TraceContext;

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
