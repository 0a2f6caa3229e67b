//! Tessera Invest's `market` service: a market simulator, honest about being one.
//!
//! There is no network to a real exchange here, so the market is made up, the same way every
//! time for a given seed: a fixed universe of 200 tickers in 10 sectors (`universe.rs`), prices
//! moving by a random walk in which a sector's tickers move together (`walk.rs`), a tick every
//! `MARKET_TICK_MS` published to `market.ticks` (one event per sector), candles of 1 s and
//! 1 min kept for the charts, and news items (sector, headline, sentiment) made up every
//! `MARKET_NEWS_MS` and published as `invest.news.registered` on `market.news`
//! (`simulator.rs`). An admin may publish a news item of their own (`http.rs`).
//!
//! Each tick is one transaction: the new prices, the candles and the tick's events in the
//! outbox, so that what the charts show and what consumers are told never disagree, and a
//! restart goes on from the last tick stored. One replica: a second would be a second market.

pub mod http;
pub mod schema;
pub mod simulator;
pub mod universe;
pub mod walk;

use tessera::Service;

pub use crate::schema::MIGRATIONS;
pub use crate::simulator::MarketSettings;

/// The topic of the ticks.
pub const TICKS: &str = "market.ticks";
/// The topic of the news.
pub const NEWS: &str = "market.news";
/// The events' source.
pub const SOURCE: &str = "/invest/market";

pub async fn run() -> anyhow::Result<()> {
    Service::new("market")
        .migrations(MIGRATIONS)
        .run(|ctx| async move {
            let settings = ctx.live(MarketSettings::from_settings)?;
            let seed = ctx.settings.get_or("MARKET_SEED", 42u64)?;
            let market = simulator::Market::open(ctx.db().clone(), seed).await?;
            simulator::start(&ctx, market.clone(), settings.clone());
            Ok(http::router(http::State {
                db: ctx.db().clone(),
                market,
                settings,
                outbox: ctx.events().outbox.clone(),
            }))
        })
        .await
}
