//! The portfolio's API, for the signed-in member: their portfolio and report, trades, style,
//! and the tickers they follow.

use std::collections::HashMap;

use axum::Router;
use axum::extract::State as Axum;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera::events::outbox::Outbox;
use tessera::store::{query, query_as};
use tessera::{ApiError, CallError, Caller, Db, Json, Path, Query, ServiceClient};

use crate::report::{self, Holding, Style};
use crate::trades::{self, MAX_QUANTITY, Quote, Trade, TradeInput};

#[derive(Clone)]
pub struct State {
    pub db: Db,
    pub client: ServiceClient,
    pub outbox: Outbox,
    pub opening_cash: i64,
}

pub fn router(state: State) -> Router {
    Router::new()
        .route("/api/portfolio", get(overview))
        .route("/api/portfolio/report", get(report_of))
        .route("/api/portfolio/trades", get(trade_list).post(trade))
        .route("/api/portfolio/style", put(set_style))
        .route("/api/portfolio/follows", get(follows))
        .route(
            "/api/portfolio/follows/{ticker}",
            put(follow).delete(unfollow),
        )
        .with_state(state)
}

/// The member's account, opened on first sight.
async fn account(st: &State, member: &str) -> Result<(i64, i64, Style, Vec<Holding>), ApiError> {
    let read = async {
        let row: Option<(i64, i64, String)> =
            query_as("SELECT cash, realized, style FROM accounts WHERE member_id = $1")
                .bind(member)
                .fetch_optional(st.db.read())
                .await?;
        Ok::<_, ApiError>(row)
    };
    let (cash, realized, style) = match read.await? {
        Some(row) => row,
        None => {
            let mut tx = st.db.write_tx().await?;
            trades::open_account(&mut tx, member, st.opening_cash).await?;
            tx.commit().await?;
            let row: (i64, i64, String) =
                query_as("SELECT cash, realized, style FROM accounts WHERE member_id = $1")
                    .bind(member)
                    .fetch_one(st.db.pool())
                    .await?;
            row
        }
    };
    let holdings: Vec<(String, String, i64, i64)> = query_as(
        "SELECT ticker, sector, quantity, cost FROM holdings WHERE member_id = $1 AND quantity > 0 ORDER BY ticker",
    )
    .bind(member)
    .fetch_all(st.db.read())
    .await?;
    let holdings = holdings
        .into_iter()
        .map(|(ticker, sector, quantity, cost)| Holding {
            ticker,
            sector,
            quantity,
            cost,
        })
        .collect();
    Ok((
        cash,
        realized,
        Style::parse(&style).unwrap_or(Style::Balanced),
        holdings,
    ))
}

/// Every ticker's price, or None when the market does not answer (the portfolio is then valued
/// at cost, and says so).
async fn prices(st: &State) -> Option<HashMap<String, i64>> {
    match st
        .client
        .get::<Vec<Quote>>("market", "/api/market/tickers")
        .await
    {
        Ok(quotes) => Some(quotes.into_iter().map(|q| (q.ticker, q.price)).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "no prices from the market; valued at cost");
            None
        }
    }
}

async fn overview(Axum(st): Axum<State>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let (cash, realized, style, holdings) = account(&st, &caller.id).await?;
    let prices = prices(&st).await;
    let r = report::report(style, cash, realized, &holdings, prices.as_ref());
    Ok(Json(json!({
        "memberId": caller.id,
        "style": r.style,
        "cash": r.cash,
        "invested": r.invested,
        "total": r.total,
        "priced": r.priced,
        "holdings": r.positions,
    })))
}

async fn report_of(
    Axum(st): Axum<State>,
    caller: Caller,
) -> Result<Json<report::Report>, ApiError> {
    let (cash, realized, style, holdings) = account(&st, &caller.id).await?;
    let prices = prices(&st).await;
    Ok(Json(report::report(
        style,
        cash,
        realized,
        &holdings,
        prices.as_ref(),
    )))
}

/// A ticker as a member may write it: letters and digits, up to 10.
fn ticker_of(raw: &str) -> Result<String, ApiError> {
    let t = raw.trim().to_ascii_uppercase();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request(
            "invalid_ticker",
            "a ticker is 1 to 10 letters and digits",
        ));
    }
    Ok(t)
}

/// The market's quote for `ticker`.
async fn quote(st: &State, ticker: &str) -> Result<Quote, ApiError> {
    st.client
        .get::<Quote>("market", &format!("/api/market/tickers/{ticker}"))
        .await
        .map_err(|e| match e {
            CallError::Status { status, .. } if status == StatusCode::NOT_FOUND => {
                ApiError::bad_request("unknown_ticker", "no such ticker on the market")
            }
            e => {
                tracing::warn!(error = %e, "no price from the market");
                ApiError::unavailable("the market is not answering; try again")
            }
        })
}

async fn trade(
    Axum(st): Axum<State>,
    caller: Caller,
    headers: HeaderMap,
    Json(mut input): Json<TradeInput>,
) -> Result<(StatusCode, Json<Trade>), ApiError> {
    input.ticker = ticker_of(&input.ticker)?;
    if !(1..=MAX_QUANTITY).contains(&input.quantity) {
        return Err(ApiError::bad_request(
            "invalid_quantity",
            format!("quantity is 1 to {MAX_QUANTITY}"),
        ));
    }
    let key = match headers.get("idempotency-key") {
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 100 => Some(k.to_string()),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key is 1 to 100 characters",
                ));
            }
        },
        None => None,
    };
    let quote = quote(&st, &input.ticker).await?;
    let trade = trades::execute(
        &st.db,
        &caller.id,
        key.as_deref(),
        &quote,
        &input,
        st.opening_cash,
    )
    .await?;
    st.outbox.wake();
    tracing::info!(member = %caller.id, ticker = %trade.ticker, side = ?trade.side, quantity = trade.quantity, "trade");
    Ok((StatusCode::CREATED, Json(trade)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
}

async fn trade_list(
    Axum(st): Axum<State>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let rows: Vec<(String, String, String, i64, i64, i64)> = query_as(
        "SELECT id, ticker, side, quantity, price, at FROM trades WHERE member_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(&caller.id)
    .bind(limit)
    .fetch_all(st.db.read())
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, ticker, side, quantity, price, at)| {
                json!({ "id": id, "ticker": ticker, "side": side, "quantity": quantity, "price": price, "at": at })
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StyleInput {
    style: String,
}

async fn set_style(
    Axum(st): Axum<State>,
    caller: Caller,
    Json(input): Json<StyleInput>,
) -> Result<Json<Value>, ApiError> {
    let style = Style::parse(&input.style).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_style",
            "style is conservative, balanced or aggressive",
        )
    })?;
    let mut tx = st.db.write_tx().await?;
    trades::open_account(&mut tx, &caller.id, st.opening_cash).await?;
    query("UPDATE accounts SET style = $1 WHERE member_id = $2")
        .bind(style.as_str())
        .bind(&caller.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "style": style.as_str() })))
}

async fn follows(Axum(st): Axum<State>, caller: Caller) -> Result<Json<Vec<String>>, ApiError> {
    let rows: Vec<(String,)> =
        query_as("SELECT ticker FROM follows WHERE member_id = $1 AND following ORDER BY ticker")
            .bind(&caller.id)
            .fetch_all(st.db.read())
            .await?;
    Ok(Json(rows.into_iter().map(|r| r.0).collect()))
}

async fn follow(
    Axum(st): Axum<State>,
    caller: Caller,
    Path(ticker): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ticker = ticker_of(&ticker)?;
    quote(&st, &ticker).await?; // a ticker the market lists
    trades::follow(&st.db, &caller.id, &ticker, true).await?;
    st.outbox.wake();
    Ok(StatusCode::NO_CONTENT)
}

async fn unfollow(
    Axum(st): Axum<State>,
    caller: Caller,
    Path(ticker): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ticker = ticker_of(&ticker)?;
    trades::follow(&st.db, &caller.id, &ticker, false).await?;
    st.outbox.wake();
    Ok(StatusCode::NO_CONTENT)
}
