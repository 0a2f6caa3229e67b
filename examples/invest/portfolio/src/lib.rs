//! Tessera Invest's `portfolio` service: each member's cash, holdings and trades, an
//! investment-style profile, and a report (allocation by sector, profit and loss).
//!
//! A member is a user of the system's `auth` service; their account opens with
//! `PORTFOLIO_OPENING_CASH` the first time they touch it. A trade is at the market's price
//! (asked of `market` when it is made, never taken from the client) and is one transaction
//! that cannot take cash or a holding below zero however many trades of one member run at
//! once (`trades.rs`). Each change of a holding or of what a member follows is published on
//! `portfolio.events`, with a version per holding, so that `alerts` knows who holds and
//! follows what. Reports read the read replica where there is one (`report.rs`).

pub mod http;
pub mod report;
pub mod schema;
pub mod trades;

use tessera::Service;

pub use crate::schema::MIGRATIONS;

/// The topic of holdings and follows changing.
pub const EVENTS: &str = "portfolio.events";
/// The events' source.
pub const SOURCE: &str = "/invest/portfolio";

pub async fn run() -> anyhow::Result<()> {
    Service::new("portfolio")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let opening_cash = ctx
                .settings
                .get_or("PORTFOLIO_OPENING_CASH", 10_000_000i64)?;
            Ok(http::router(http::State {
                db: ctx.db().clone(),
                client: ctx.client.clone(),
                outbox: ctx.events().outbox.clone(),
                opening_cash,
            }))
        })
        .await
}
