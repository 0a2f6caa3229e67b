//! Who holds and follows what, as `portfolio.events` tells it. Each change carries its
//! holding's version, and only a newer version is taken: an event delivered again, or late,
//! changes nothing.

use serde::Deserialize;
use tessera::events::{BoxFuture, Event, Handler, HandlerError, Tx};
use tessera::store::query;

pub struct Holders;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HoldingChanged {
    member_id: String,
    ticker: String,
    sector: String,
    quantity: i64,
    version: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FollowChanged {
    member_id: String,
    ticker: String,
    following: bool,
    version: i64,
}

impl Handler for Holders {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            match event.ty.as_str() {
                "invest.holding.changed" => {
                    let h: HoldingChanged = event
                        .data_as()
                        .map_err(|e| HandlerError::permanent(e.to_string()))?;
                    query(
                        "INSERT INTO holders (member_id, ticker, sector, quantity, version) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (member_id, ticker) DO UPDATE SET quantity = excluded.quantity,
                            sector = excluded.sector, version = excluded.version
                         WHERE excluded.version > holders.version",
                    )
                    .bind(&h.member_id)
                    .bind(&h.ticker)
                    .bind(&h.sector)
                    .bind(h.quantity)
                    .bind(h.version)
                    .execute(&mut **tx)
                    .await?;
                }
                "invest.follow.changed" => {
                    let f: FollowChanged = event
                        .data_as()
                        .map_err(|e| HandlerError::permanent(e.to_string()))?;
                    query(
                        "INSERT INTO followers (member_id, ticker, following, version) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (member_id, ticker) DO UPDATE SET following = excluded.following,
                            version = excluded.version
                         WHERE excluded.version > followers.version",
                    )
                    .bind(&f.member_id)
                    .bind(&f.ticker)
                    .bind(f.following)
                    .bind(f.version)
                    .execute(&mut **tx)
                    .await?;
                }
                _ => {} // other portfolio events are not about holders
            }
            Ok(())
        })
    }
}
