//! A simulator of an external card payment provider, for the shop's `payment` service to
//! talk to. It behaves like a real one where it matters: charges are idempotent by their
//! `Idempotency-Key` (a retried charge never charges twice), a charge can be voided, and it can
//! be slow, fail, hang or decline, set at start (`PROVIDER_*` env) or at run time
//! (`PUT /v1/behavior`), which is how tests break it on purpose.
//!
//! | call | |
//! |---|---|
//! | `POST /v1/charges` + `Idempotency-Key` | `{amount, currency, reference}` → `201 {key, status: "captured"}`, `402 {status: "declined"}`, or 503 |
//! | `POST /v1/charges/{key}/void` | voids (or forbids) the charge with that key |
//! | `GET /v1/charges` | every charge (for audits and tests) |
//! | `GET/PUT /v1/behavior` | `{latencyMs, failureRate, hang, declineOver}` |
//!
//! `http.rs` has the router and handlers, `behavior.rs` the ways it can be broken.

pub mod behavior;
pub mod http;
pub mod schema;

use tessera::Service;

use crate::behavior::Behavior;
pub use crate::schema::MIGRATIONS;

pub async fn run() -> anyhow::Result<()> {
    Service::new("payment-provider")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            // Follows `tessera config`: each change replaces what `PUT /v1/behavior` set.
            let behavior = ctx.live(Behavior::from_settings)?;
            let router = http::router(ctx.db().clone(), (*behavior.get()).clone());
            let current = router.behavior.clone();
            behavior.on_change(move |old, new| {
                // Only a change of its own settings replaces what was set by hand.
                if old != new {
                    tracing::info!(behavior = ?new, "behaviour changed by the configuration");
                    *current.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
                }
            });
            Ok(router.routes)
        })
        .await
}
