//! The market's API: sectors, tickers with their prices, candles, news; an admin may publish a
//! news item. Every answer is read from the database (a read replica where there is one).

use std::sync::Arc;

use axum::Router;
use axum::extract::State as Axum;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera::events::outbox::Outbox;
use tessera::store::query_as;
use tessera::{ApiError, Caller, Db, Json, Live, Passport, Path, Query};

use crate::simulator::{Market, MarketSettings, News, register_news};
use crate::universe::{self, PER_SECTOR, SECTORS};

#[derive(Clone)]
pub struct State {
    pub db: Db,
    pub market: Arc<Market>,
    pub settings: Live<MarketSettings>,
    pub outbox: Outbox,
}

pub fn router(state: State) -> Router {
    Router::new()
        .route("/api/market/status", get(status))
        .route("/api/market/sectors", get(sectors))
        .route("/api/market/tickers", get(tickers))
        .route("/api/market/tickers/{ticker}", get(ticker))
        .route("/api/market/tickers/{ticker}/candles", get(candles))
        .route("/api/market/news", get(news).post(publish))
        .with_state(state)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Quote {
    ticker: String,
    sector: String,
    name: String,
    price: i64,
    open: i64,
}

type QuoteRow = (String, String, String, i64, i64);

fn quote((ticker, sector, name, price, open): QuoteRow) -> Quote {
    Quote {
        ticker,
        sector,
        name,
        price,
        open,
    }
}

async fn status(Axum(st): Axum<State>, _: Passport) -> Json<Value> {
    let settings = st.settings.get();
    Json(json!({
        "simulated": true,
        "seed": st.market.seed(),
        "tick": st.market.tick_count().await,
        "tickMs": settings.tick_ms,
        "newsMs": settings.news_ms,
        "tickers": SECTORS.len() * PER_SECTOR,
    }))
}

async fn sectors(_: Passport) -> Json<Value> {
    let listings = universe::listings();
    Json(json!(SECTORS
        .iter()
        .map(|s| json!({
            "sector": s,
            "tickers": listings.iter().filter(|l| l.sector == *s).map(|l| &l.ticker).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TickersQuery {
    sector: Option<String>,
}

async fn tickers(
    Axum(st): Axum<State>,
    _: Passport,
    Query(q): Query<TickersQuery>,
) -> Result<Json<Vec<Quote>>, ApiError> {
    let rows: Vec<QuoteRow> = match q.sector.as_deref() {
        Some(name) => {
            let sector = universe::sector(name).ok_or_else(unknown_sector)?;
            query_as("SELECT ticker, sector, name, price, open FROM tickers WHERE sector = $1 ORDER BY ticker")
                .bind(sector)
                .fetch_all(st.db.read())
                .await?
        }
        None => {
            query_as("SELECT ticker, sector, name, price, open FROM tickers ORDER BY ticker")
                .fetch_all(st.db.read())
                .await?
        }
    };
    Ok(Json(rows.into_iter().map(quote).collect()))
}

async fn ticker(
    Axum(st): Axum<State>,
    _: Passport,
    Path(ticker): Path<String>,
) -> Result<Json<Quote>, ApiError> {
    let row: Option<QuoteRow> =
        query_as("SELECT ticker, sector, name, price, open FROM tickers WHERE ticker = $1")
            .bind(ticker.to_ascii_uppercase())
            .fetch_optional(st.db.read())
            .await?;
    row.map(quote).map(Json).ok_or_else(unknown_ticker)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandlesQuery {
    /// `1s` or `1m`.
    width: Option<String>,
    limit: Option<u32>,
}

async fn candles(
    Axum(st): Axum<State>,
    _: Passport,
    Path(ticker): Path<String>,
    Query(q): Query<CandlesQuery>,
) -> Result<Json<Value>, ApiError> {
    let width = match q.width.as_deref().unwrap_or("1s") {
        "1s" => 1i64,
        "1m" => 60,
        _ => return Err(ApiError::bad_request("invalid_width", "width is 1s or 1m")),
    };
    let limit = q.limit.unwrap_or(120);
    if !(1..=1440).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit is 1 to 1440"));
    }
    let ticker = ticker.to_ascii_uppercase();
    let mut rows: Vec<(i64, i64, i64, i64, i64)> = query_as(
        "SELECT start, open, high, low, close FROM candles WHERE ticker = $1 AND width = $2
         ORDER BY start DESC LIMIT $3",
    )
    .bind(&ticker)
    .bind(width)
    .bind(i64::from(limit))
    .fetch_all(st.db.read())
    .await?;
    if rows.is_empty() && universe::listings().iter().all(|l| l.ticker != ticker) {
        return Err(unknown_ticker());
    }
    rows.reverse();
    let candles: Vec<Value> = rows
        .into_iter()
        .map(|(start, open, high, low, close)| json!({ "start": start, "open": open, "high": high, "low": low, "close": close }))
        .collect();
    Ok(Json(
        json!({ "ticker": ticker, "width": q.width.as_deref().unwrap_or("1s"), "candles": candles }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewsQuery {
    sector: Option<String>,
    limit: Option<u32>,
}

async fn news(
    Axum(st): Axum<State>,
    _: Passport,
    Query(q): Query<NewsQuery>,
) -> Result<Json<Vec<News>>, ApiError> {
    let limit = i64::from(q.limit.unwrap_or(50).clamp(1, 500));
    type Row = (String, String, String, f64, i64);
    let rows: Vec<Row> = match q.sector.as_deref() {
        Some(name) => {
            let sector = universe::sector(name).ok_or_else(unknown_sector)?;
            query_as(
                "SELECT id, sector, headline, sentiment, published FROM news WHERE sector = $1
                 ORDER BY published DESC LIMIT $2",
            )
            .bind(sector)
            .bind(limit)
            .fetch_all(st.db.read())
            .await?
        }
        None => query_as("SELECT id, sector, headline, sentiment, published FROM news ORDER BY published DESC LIMIT $1")
            .bind(limit)
            .fetch_all(st.db.read())
            .await?,
    };
    Ok(Json(
        rows.into_iter()
            .map(|(id, sector, headline, sentiment, published)| News {
                id,
                sector,
                headline,
                sentiment,
                published,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewsInput {
    sector: String,
    headline: String,
    sentiment: f64,
}

/// An admin's news item: published as any other.
async fn publish(
    Axum(st): Axum<State>,
    caller: Caller,
    Json(input): Json<NewsInput>,
) -> Result<(axum::http::StatusCode, Json<News>), ApiError> {
    caller.require_role("admin")?;
    let sector = universe::sector(&input.sector).ok_or_else(unknown_sector)?;
    let headline = input.headline.trim();
    if headline.is_empty() || headline.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "invalid_headline",
            "a headline is 1 to 200 characters",
        ));
    }
    if !(-1.0..=1.0).contains(&input.sentiment) {
        return Err(ApiError::bad_request(
            "invalid_sentiment",
            "sentiment is from -1 to 1",
        ));
    }
    let news = register_news(&st.db, sector, headline, input.sentiment).await?;
    st.outbox.wake();
    tracing::info!(news = %news.id, sector, "news registered by an admin");
    Ok((axum::http::StatusCode::CREATED, Json(news)))
}

fn unknown_sector() -> ApiError {
    ApiError::bad_request(
        "unknown_sector",
        format!("sectors are: {}", SECTORS.join(", ")),
    )
}

fn unknown_ticker() -> ApiError {
    ApiError::not_found("no such ticker")
}
