//! The market's clock: a tick every `MARKET_TICK_MS` and a news item every `MARKET_NEWS_MS`
//! (either 0: paused), each one transaction with its events in the outbox.
//!
//! The prices live in memory between ticks ([`Market`]) and in the database after each, which
//! is where they are read from again at start: the walk goes on from the last tick stored.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tessera::config::{ConfigError, Settings};
use tessera::events::Event;
use tessera::events::outbox::{self, Outbox};
use tessera::live::Live;
use tessera::store::{Tx, query, query_as, query_scalar};
use tessera::{Context, Db, DbError};
use tokio::sync::Mutex;

use crate::universe::{self, SECTORS};
use crate::walk::Walk;
use crate::{NEWS, SOURCE, TICKS};

/// The settings `tessera config set` may change while the market runs.
#[derive(Clone, Debug)]
pub struct MarketSettings {
    /// Between ticks; 0 pauses the prices.
    pub tick_ms: u64,
    /// Between made-up news items; 0: none (an admin's still go out).
    pub news_ms: u64,
    pub volatility: f64,
    pub correlation: f64,
}

impl MarketSettings {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let settings = Self {
            tick_ms: s.get_or("MARKET_TICK_MS", 1000)?,
            news_ms: s.get_or("MARKET_NEWS_MS", 10_000)?,
            volatility: s.get_or("MARKET_VOLATILITY", 0.002)?,
            correlation: s.get_or("MARKET_CORRELATION", 0.6)?,
        };
        if settings.tick_ms != 0 && settings.tick_ms < 50 {
            return Err(ConfigError::new(
                "MARKET_TICK_MS",
                "0 (paused) or at least 50",
            ));
        }
        if !(0.0..=0.2).contains(&settings.volatility) {
            return Err(ConfigError::new("MARKET_VOLATILITY", "from 0 to 0.2"));
        }
        if !(0.0..=1.0).contains(&settings.correlation) {
            return Err(ConfigError::new("MARKET_CORRELATION", "from 0 to 1"));
        }
        Ok(settings)
    }
}

/// The market's state between ticks.
pub struct Market {
    db: Db,
    seed: u64,
    state: Mutex<State>,
}

struct State {
    tick: u64,
    tickers: Vec<String>,
    sectors: Vec<usize>,
    prices: Vec<i64>,
}

/// A news item, as published.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct News {
    pub id: String,
    pub sector: String,
    pub headline: String,
    pub sentiment: f64,
    pub published: i64,
}

impl Market {
    /// The market as last stored, or a new one drawn from `seed`.
    pub async fn open(db: Db, seed: u64) -> Result<Arc<Market>, DbError> {
        let listings = universe::listings();
        let mut tx = db.write_tx().await?;
        let count: i64 = query_scalar("SELECT COUNT(*) FROM tickers")
            .fetch_one(&mut *tx)
            .await?;
        if count == 0 {
            let walk = Walk {
                seed,
                volatility: 0.0,
                correlation: 0.0,
            };
            for (listing, price) in listings.iter().zip(walk.first_prices(listings.len())) {
                query("INSERT INTO tickers (ticker, sector, name, price, open) VALUES ($1, $2, $3, $4, $4)")
                    .bind(&listing.ticker)
                    .bind(listing.sector)
                    .bind(&listing.name)
                    .bind(price)
                    .execute(&mut *tx)
                    .await?;
            }
            query("INSERT INTO clock (id, tick) VALUES (1, 0)")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let rows: Vec<(String, String, i64)> =
            query_as("SELECT ticker, sector, price FROM tickers ORDER BY ticker")
                .fetch_all(db.pool())
                .await?;
        let tick: i64 = query_scalar("SELECT tick FROM clock WHERE id = 1")
            .fetch_one(db.pool())
            .await?;
        let state = State {
            tick: tick as u64,
            sectors: rows
                .iter()
                .map(|(_, s, _)| SECTORS.iter().position(|x| x == s).unwrap_or(0))
                .collect(),
            prices: rows.iter().map(|r| r.2).collect(),
            tickers: rows.into_iter().map(|r| r.0).collect(),
        };
        tracing::info!(
            tick = state.tick,
            tickers = state.tickers.len(),
            seed,
            "market opened (simulated)"
        );
        Ok(Arc::new(Market {
            db,
            seed,
            state: Mutex::new(state),
        }))
    }

    /// The last tick stored.
    pub async fn tick_count(&self) -> u64 {
        self.state.lock().await.tick
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// One tick: new prices, their candles and the tick's events, in one transaction.
    pub async fn tick(&self, settings: &MarketSettings) -> Result<(), DbError> {
        let mut state = self.state.lock().await;
        let walk = Walk {
            seed: self.seed,
            volatility: settings.volatility,
            correlation: settings.correlation,
        };
        let tick = state.tick + 1;
        let prices = walk.step(tick, &state.prices, &state.sectors);
        let now = tessera::unix_now_ms();
        let mut tx = self.db.write_tx().await?;
        for chunk in (0..prices.len()).collect::<Vec<_>>().chunks(100) {
            upsert_prices(&mut tx, chunk, &state.tickers, &prices).await?;
            for width in [1i64, 60] {
                upsert_candles(&mut tx, chunk, &state.tickers, &prices, width, now).await?;
            }
        }
        query("UPDATE clock SET tick = $1 WHERE id = 1")
            .bind(tick as i64)
            .execute(&mut *tx)
            .await?;
        for (s, sector) in SECTORS.iter().enumerate() {
            let quotes: Vec<serde_json::Value> = (0..prices.len())
                .filter(|&i| state.sectors[i] == s)
                .map(|i| json!({ "ticker": state.tickers[i], "price": prices[i] }))
                .collect();
            let data = json!({ "tick": tick, "time": now, "sector": sector, "prices": quotes });
            outbox::add(
                &mut tx,
                TICKS,
                &Event::new(SOURCE, "invest.market.tick", sector, data),
            )
            .await?;
        }
        if tick % 60 == 0 {
            // Keep 15 minutes of 1 s candles and a day of 1 min ones.
            query("DELETE FROM candles WHERE (width = 1 AND start < $1) OR (width = 60 AND start < $2)")
                .bind(now - 15 * 60_000)
                .bind(now - 24 * 3_600_000)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        state.tick = tick;
        state.prices = prices;
        Ok(())
    }
}

async fn upsert_prices(
    tx: &mut Tx,
    chunk: &[usize],
    tickers: &[String],
    prices: &[i64],
) -> Result<(), DbError> {
    let mut sql = String::from("UPDATE tickers SET price = CASE ticker");
    for (n, _) in chunk.iter().enumerate() {
        sql.push_str(&format!(" WHEN ${} THEN ${}", 2 * n + 1, 2 * n + 2));
    }
    sql.push_str(" ELSE price END WHERE ticker IN (");
    for n in 0..chunk.len() {
        sql.push_str(if n == 0 { "" } else { ", " });
        sql.push_str(&format!("${}", 2 * n + 1));
    }
    sql.push(')');
    let mut q = query(&sql);
    for &i in chunk {
        q = q.bind(&tickers[i]).bind(prices[i]);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn upsert_candles(
    tx: &mut Tx,
    chunk: &[usize],
    tickers: &[String],
    prices: &[i64],
    width: i64,
    now: i64,
) -> Result<(), DbError> {
    let start = now - now.rem_euclid(width * 1000);
    let mut sql =
        String::from("INSERT INTO candles (ticker, width, start, open, high, low, close) VALUES ");
    for n in 0..chunk.len() {
        let p = 2 * n;
        sql.push_str(if n == 0 { "" } else { ", " });
        sql.push_str(
            &format!(
                "(${}, {width}, {start}, ${}, ${1}, ${1}, ${1})",
                p + 1,
                p + 2
            )
            .replace("${1}", &format!("${}", p + 2)),
        );
    }
    sql.push_str(
        " ON CONFLICT (ticker, width, start) DO UPDATE SET
          high = CASE WHEN excluded.high > candles.high THEN excluded.high ELSE candles.high END,
          low = CASE WHEN excluded.low < candles.low THEN excluded.low ELSE candles.low END,
          close = excluded.close",
    );
    let mut q = query(&sql);
    for &i in chunk {
        q = q.bind(&tickers[i]).bind(prices[i]);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Stores a news item and its `invest.news.registered` event in one transaction.
pub async fn register_news(
    db: &Db,
    sector: &str,
    headline: &str,
    sentiment: f64,
) -> Result<News, DbError> {
    let news = News {
        id: uuid::Uuid::now_v7().to_string(),
        sector: sector.to_string(),
        headline: headline.to_string(),
        sentiment,
        published: tessera::unix_now_ms(),
    };
    let mut tx = db.write_tx().await?;
    query(
        "INSERT INTO news (id, sector, headline, sentiment, published) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&news.id)
    .bind(&news.sector)
    .bind(&news.headline)
    .bind(news.sentiment)
    .bind(news.published)
    .execute(&mut *tx)
    .await?;
    let event = Event::new(SOURCE, "invest.news.registered", &news.id, &news);
    outbox::add(&mut tx, NEWS, &event).await?;
    tx.commit().await?;
    Ok(news)
}

/// A made-up news item: a sector, a sentiment, and a headline that says which way it leans.
pub fn made_up_news(rng: &mut impl Rng) -> (&'static str, String, f64) {
    const UP: [&str; 4] = [
        "rally on strong earnings",
        "climb after an upgrade",
        "gain as demand grows",
        "rise on a new contract",
    ];
    const DOWN: [&str; 4] = [
        "slide on weak guidance",
        "fall after a downgrade",
        "drop as costs climb",
        "slip on a recall",
    ];
    let sector = SECTORS[rng.gen_range(0..SECTORS.len())];
    let sentiment = (rng.gen_range(-1.0f64..=1.0) * 100.0).round() / 100.0;
    let what = if sentiment >= 0.0 {
        UP[rng.gen_range(0..UP.len())]
    } else {
        DOWN[rng.gen_range(0..DOWN.len())]
    };
    (
        sector,
        format!("[simulated] {sector} stocks {what}"),
        sentiment,
    )
}

/// Starts the clock and the news desk; they run until the service stops.
pub fn start(ctx: &Context, market: Arc<Market>, settings: Live<MarketSettings>) {
    let outbox: Outbox = ctx.events().outbox.clone();
    let clock = {
        let settings = settings.clone();
        let outbox = outbox.clone();
        async move {
            loop {
                let now = settings.get();
                if now.tick_ms == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let started = tokio::time::Instant::now();
                match market.tick(&now).await {
                    Ok(()) => outbox.wake(),
                    Err(e) => {
                        tracing::warn!(error = %e, "a tick was not stored; the next one tries again")
                    }
                }
                tokio::time::sleep_until(started + Duration::from_millis(now.tick_ms)).await;
            }
        }
    };
    tokio::spawn(clock);
    let db = ctx.db().clone();
    tokio::spawn(async move {
        loop {
            let every = settings.get().news_ms;
            if every == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(every)).await;
            let (sector, headline, sentiment) = made_up_news(&mut rand::thread_rng());
            match register_news(&db, sector, &headline, sentiment).await {
                Ok(news) => {
                    outbox.wake();
                    tracing::info!(news = %news.id, sector, "news registered");
                }
                Err(e) => tracing::warn!(error = %e, "a news item was not stored"),
            }
        }
    });
}
