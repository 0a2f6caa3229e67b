//! The Tessera service library: what every service links.
//!
//! A service built on it gets, without writing them again: typed configuration from the
//! environment the runner hands it, its own database with migrations, self-registration and
//! heartbeats, passport verification on every request, W3C trace propagation, JSON logs that
//! carry the trace, health endpoints, Prometheus metrics and resilience status on an admin
//! listener of their own, and a client that calls other services by name. See `docs/service.md` for a minimal service.
//!
//! It is the one crate a service links: the mechanisms live in crates of their own
//! (`docs/architecture.md`), and this one re-exports them under the paths services use
//! (`tessera::store`, `tessera::events`, …), so that where a mechanism lives can change
//! without a service's code or `Cargo.toml` changing. It does not read the system manifest.

pub mod admin;
pub mod client;
pub mod config;
pub mod error;
pub mod extract;
pub mod feed;
pub mod health;
mod json;
pub mod jwks;
pub mod listen;
pub mod live;
pub mod log;
pub mod mail;
pub mod metrics;
pub mod passport;
pub mod service;
pub mod status;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;

/// The concern crates a service reaches through this one, under the paths it always had.
pub use tessera_events as events;
pub use tessera_events::saga;
pub use tessera_http1 as http1;
pub use tessera_identity as identity;
pub use tessera_registry as registry;
pub use tessera_resilience as resilience;
pub use tessera_shared as shared;
pub use tessera_store as store;
pub use tessera_telemetry as otlp;
pub use tessera_tls as tls;
pub use tessera_trace as trace;
pub use tessera_trace::{unix_now, unix_now_ms};

pub use admin::RESTARTS_ENV;
pub use client::{CallError, ServiceClient};
pub use config::{ConfigError, ServiceConfig, Settings};
pub use error::ApiError;
pub use extract::{Caller, Json, Path, Query};
pub use live::Live;
pub use passport::{Passport, PassportKeys};
pub use service::{Context, Events, MAIL_METADATA_KEY, SAGAS_METADATA_KEY, Service};
pub use store::{Db, DbError, Migration, Tx};
pub use trace::TraceContext;
