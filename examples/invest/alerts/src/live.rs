//! The live feed: `GET /api/alerts/live`, a WebSocket on which a signed-in member receives each
//! new alert the moment it is made. The platform's feed (`tessera::feed`: protocol, polling,
//! overlap) over the alerts table.

use tessera::events::BoxFuture;
use tessera::feed::{self, Row, Rows};
use tessera::{Db, DbError};

use crate::http::{View, ViewRow};

/// The feed of this replica.
pub type Feed = feed::Feed<Alerts>;

/// How the alerts made are read, by (created, id); `created` is in milliseconds.
pub struct Alerts;

impl Rows for Alerts {
    type Item = View;
    const KIND: &'static str = "alert";
    const OVERLAP: i64 = 5_000;

    fn page<'a>(
        &'a self,
        db: &'a Db,
        created: i64,
        id: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Row<View>>, DbError>> {
        Box::pin(async move {
            let rows: Vec<(String, ViewRow)> = tessera::store::query_as::<(String, String, String, String, Option<String>, Option<String>, String, String, i64)>(
                "SELECT member_id, id, kind, source, ticker, sector, title, body, created FROM alerts
                 WHERE created >= $1 AND NOT (created = $1 AND id <= $2)
                 ORDER BY created, id LIMIT $3",
            )
            .bind(created)
            .bind(id)
            .bind(limit)
            .fetch_all(db.pool())
            .await?
            .into_iter()
            .map(|(member, id, kind, source, ticker, sector, title, body, created)| {
                (member, (id, kind, source, ticker, sector, title, body, created))
            })
            .collect();
            Ok(rows
                .into_iter()
                .map(|(user, row)| {
                    let view = View::from(row);
                    Row {
                        user,
                        created: view.created,
                        id: view.id.clone(),
                        item: view,
                    }
                })
                .collect())
        })
    }

    fn now(&self) -> i64 {
        tessera::unix_now_ms()
    }
}
