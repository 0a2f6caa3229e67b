//! Tessera Invest's `alerts` service: tells members what concerns them, once.
//!
//! It keeps, from `portfolio.events`, who holds which ticker (and so which sector) and who
//! follows which (`holders.rs`). When `market` registers a news item (`market.news`), every
//! member holding that sector gets one alert; when `signals` changes a ticker's signal
//! (`signals.changed`), every member holding or following that ticker does (`fanout.rs`).
//!
//! Exactly once, across redelivery and crashes: a consumer's writes and its inbox record
//! commit in one transaction, and an alert's key is its cause and its member
//! (`news:<news id>:<member>`), so a cause met twice inserts nothing the second time. A whole
//! fan-out is one `INSERT … SELECT`, however many members it reaches.
//!
//! Holders are known as `alerts` last heard of them: a trade made just before a news item may
//! be seen after it, as the two come on different topics. Members read their alerts through
//! the API (`http.rs`), or on a WebSocket as they are made (`live.rs`).

pub mod fanout;
pub mod holders;
pub mod http;
pub mod live;
pub mod schema;

use tessera::Service;
use tessera::events::Consumer;

pub use crate::schema::MIGRATIONS;

pub async fn run() -> anyhow::Result<()> {
    Service::new("alerts")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let mailing = tessera::mail::start(&ctx)?;
            let events = ctx.events();
            events.consume(
                Consumer::new("portfolio.events", "alerts"),
                holders::Holders,
            );
            events.consume(
                Consumer::new("market.news", "alerts"),
                fanout::NewsAlerts { mailing },
            );
            events.consume(
                Consumer::new("signals.changed", "alerts"),
                fanout::SignalAlerts { mailing },
            );
            Ok(http::router(ctx.db().clone()))
        })
        .await
}
