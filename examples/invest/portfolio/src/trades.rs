//! A trade: buy or sell at the market's price, in one transaction that keeps cash and every
//! holding at zero or above however many trades of one member run at once.
//!
//! The checks are in the statements that write, not in a read before them: cash leaves the
//! account by `UPDATE … SET cash = cash - $1 WHERE … AND cash >= $1`, shares leave a holding by
//! `… AND quantity >= $1`, and a statement that changed no row refuses the trade. Embedded,
//! write transactions take turns; on PostgreSQL two at once on one account make one of them a
//! conflict, which is tried again. An `Idempotency-Key` makes a retried request one trade.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera::events::{Event, outbox};
use tessera::store::{Tx, query, query_as, query_scalar};
use tessera::{ApiError, Db};

use crate::{EVENTS, SOURCE};

/// How many times a trade that lost a race with another is tried again.
const MAX_CONFLICTS: u32 = 100;
/// The most shares in one trade.
pub const MAX_QUANTITY: i64 = 1_000_000;

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// What the member asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradeInput {
    pub ticker: String,
    pub side: Side,
    pub quantity: i64,
}

/// The market's quote, as `market` answers it.
#[derive(Clone, Debug, Deserialize)]
pub struct Quote {
    pub ticker: String,
    pub sector: String,
    pub price: i64,
}

/// A trade made.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trade {
    pub id: String,
    pub ticker: String,
    pub side: Side,
    pub quantity: i64,
    pub price: i64,
    pub at: i64,
}

/// Opens the member's account if it is not open yet.
pub async fn open_account(tx: &mut Tx, member: &str, opening_cash: i64) -> Result<(), ApiError> {
    query(
        "INSERT INTO accounts (member_id, cash, realized, style, opened) VALUES ($1, $2, 0, 'balanced', $3)
         ON CONFLICT (member_id) DO NOTHING",
    )
    .bind(member)
    .bind(opening_cash)
    .bind(tessera::unix_now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The trade a key already made, if any.
pub async fn by_key(db: &Db, member: &str, key: &str) -> Result<Option<Trade>, ApiError> {
    let row: Option<(String, String, String, i64, i64, i64)> = query_as(
        "SELECT id, ticker, side, quantity, price, at FROM trades WHERE member_id = $1 AND idempotency_key = $2",
    )
    .bind(member)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|(id, ticker, side, quantity, price, at)| Trade {
        id,
        ticker,
        side: if side == "buy" { Side::Buy } else { Side::Sell },
        quantity,
        price,
        at,
    }))
}

/// Makes the trade at `quote`'s price; a race with another transaction is tried again.
pub async fn execute(
    db: &Db,
    member: &str,
    key: Option<&str>,
    quote: &Quote,
    input: &TradeInput,
    opening_cash: i64,
) -> Result<Trade, ApiError> {
    if let Some(key) = key
        && let Some(trade) = by_key(db, member, key).await?
    {
        return Ok(trade);
    }
    let mut conflicts = 0;
    loop {
        match try_execute(db, member, key, quote, input, opening_cash).await {
            Err(e) if e.is_conflict() && conflicts < MAX_CONFLICTS => {
                // A request with the same key may be what this one raced (on PostgreSQL its
                // insert is a conflict): its trade is the answer.
                if let Some(key) = key
                    && let Some(trade) = by_key(db, member, key).await?
                {
                    return Ok(trade);
                }
                conflicts += 1;
                let pause = 200
                    + u64::from(uuid::Uuid::new_v4().as_u128() as u16)
                        % (500 * u64::from(conflicts.min(10)));
                tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
            }
            // The same key's request, at the same moment, made the trade (the unique index
            // refused this one's): that trade is the answer.
            Err(e) => match key {
                Some(key) => return by_key(db, member, key).await?.ok_or(e),
                None => return Err(e),
            },
            outcome => return outcome,
        }
    }
}

async fn try_execute(
    db: &Db,
    member: &str,
    key: Option<&str>,
    quote: &Quote,
    input: &TradeInput,
    opening_cash: i64,
) -> Result<Trade, ApiError> {
    let amount = quote
        .price
        .checked_mul(input.quantity)
        .ok_or_else(|| ApiError::bad_request("invalid_quantity", "the trade is too large"))?;
    let mut tx = db.write_tx().await?;
    open_account(&mut tx, member, opening_cash).await?;
    match input.side {
        Side::Buy => {
            let paid =
                query("UPDATE accounts SET cash = cash - $1 WHERE member_id = $2 AND cash >= $1")
                    .bind(amount)
                    .bind(member)
                    .execute(&mut *tx)
                    .await?;
            if paid.rows_affected() == 0 {
                return Err(ApiError::conflict(
                    "insufficient_cash",
                    "not enough cash for this trade",
                ));
            }
            query(
                "INSERT INTO holdings (member_id, ticker, sector, quantity, cost, removed, version)
                 VALUES ($1, $2, $3, $4, $5, 0, 1)
                 ON CONFLICT (member_id, ticker) DO UPDATE SET quantity = holdings.quantity + excluded.quantity,
                    cost = holdings.cost + excluded.cost, version = holdings.version + 1",
            )
            .bind(member)
            .bind(&quote.ticker)
            .bind(&quote.sector)
            .bind(input.quantity)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        }
        Side::Sell => {
            // Every SET reads the row as it was: `removed` is the cost of the shares sold.
            let sold = query(
                "UPDATE holdings SET removed = (cost * $1) / quantity, cost = cost - (cost * $1) / quantity,
                    quantity = quantity - $1, version = version + 1
                 WHERE member_id = $2 AND ticker = $3 AND quantity >= $1",
            )
            .bind(input.quantity)
            .bind(member)
            .bind(&quote.ticker)
            .execute(&mut *tx)
            .await?;
            if sold.rows_affected() == 0 {
                return Err(ApiError::conflict(
                    "insufficient_holding",
                    "not enough shares for this trade",
                ));
            }
            let removed: i64 =
                query_scalar("SELECT removed FROM holdings WHERE member_id = $1 AND ticker = $2")
                    .bind(member)
                    .bind(&quote.ticker)
                    .fetch_one(&mut *tx)
                    .await?;
            query("UPDATE accounts SET cash = cash + $1, realized = realized + $2 WHERE member_id = $3")
                .bind(amount)
                .bind(amount - removed)
                .bind(member)
                .execute(&mut *tx)
                .await?;
        }
    }
    let (quantity, version): (i64, i64) =
        query_as("SELECT quantity, version FROM holdings WHERE member_id = $1 AND ticker = $2")
            .bind(member)
            .bind(&quote.ticker)
            .fetch_one(&mut *tx)
            .await?;
    let trade = Trade {
        id: uuid::Uuid::now_v7().to_string(),
        ticker: quote.ticker.clone(),
        side: input.side,
        quantity: input.quantity,
        price: quote.price,
        at: tessera::unix_now_ms(),
    };
    query(
        "INSERT INTO trades (id, member_id, idempotency_key, ticker, side, quantity, price, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&trade.id)
    .bind(member)
    .bind(key)
    .bind(&trade.ticker)
    .bind(trade.side.as_str())
    .bind(trade.quantity)
    .bind(trade.price)
    .bind(trade.at)
    .execute(&mut *tx)
    .await?;
    let data = json!({
        "memberId": member,
        "ticker": quote.ticker,
        "sector": quote.sector,
        "quantity": quantity,
        "version": version,
    });
    outbox::add(
        &mut tx,
        EVENTS,
        &Event::new(SOURCE, "invest.holding.changed", member, data),
    )
    .await?;
    tx.commit().await?;
    Ok(trade)
}

/// Starts or stops following a ticker (`invest.follow.changed`).
pub async fn follow(db: &Db, member: &str, ticker: &str, following: bool) -> Result<(), ApiError> {
    let mut conflicts = 0;
    loop {
        let attempt = async {
            let mut tx = db.write_tx().await?;
            query(
                "INSERT INTO follows (member_id, ticker, version, following) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (member_id, ticker) DO UPDATE SET version = follows.version + 1, following = excluded.following",
            )
            .bind(member)
            .bind(ticker)
            .bind(following)
            .execute(&mut *tx)
            .await?;
            let version: i64 =
                query_scalar("SELECT version FROM follows WHERE member_id = $1 AND ticker = $2")
                    .bind(member)
                    .bind(ticker)
                    .fetch_one(&mut *tx)
                    .await?;
            let data = json!({ "memberId": member, "ticker": ticker, "following": following, "version": version });
            outbox::add(
                &mut tx,
                EVENTS,
                &Event::new(SOURCE, "invest.follow.changed", member, data),
            )
            .await?;
            tx.commit().await?;
            Ok::<(), ApiError>(())
        };
        match attempt.await {
            Err(e) if e.is_conflict() && conflicts < MAX_CONFLICTS => conflicts += 1,
            outcome => return outcome,
        }
    }
}
