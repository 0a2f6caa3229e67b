//! The alerts' API: a member reads theirs, newest first, or hears them as they come
//! (`live.rs`); an admin sees who one cause reached.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera::store::{query_as, query_scalar};
use tessera::{ApiError, Caller, Db, Json, Path, Query};

use crate::live::{Alerts, Feed};

pub fn router(db: Db) -> Router {
    let feed = Feed::start(db.clone(), Alerts);
    Router::new()
        .route("/api/alerts/live", get(tessera::feed::live::<Alerts>))
        .with_state(feed)
        .merge(routes(db))
}

fn routes(db: Db) -> Router {
    Router::new()
        .route("/api/alerts", get(list))
        .route("/api/alerts/sources/{kind}/{source}", get(reached))
        .route("/api/alerts/audience", get(audience))
        .with_state(db)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only alerts created after this (unix ms): what a page polling for new ones asks.
    since: Option<i64>,
    limit: Option<u32>,
}

/// An alert, as the API and the live feed show it.
#[derive(Debug, Serialize)]
pub struct View {
    pub id: String,
    pub kind: String,
    pub source: String,
    pub ticker: Option<String>,
    pub sector: Option<String>,
    pub title: String,
    pub body: String,
    pub created: i64,
}

/// An alert as its columns are read: id, kind, source, ticker, sector, title, body, created.
pub type ViewRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
);

impl From<ViewRow> for View {
    fn from((id, kind, source, ticker, sector, title, body, created): ViewRow) -> Self {
        View {
            id,
            kind,
            source,
            ticker,
            sector,
            title,
            body,
            created,
        }
    }
}

async fn list(
    State(db): State<Db>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<View>>, ApiError> {
    let limit = i64::from(q.limit.unwrap_or(50).clamp(1, 500));
    let rows: Vec<ViewRow> = query_as(
        "SELECT id, kind, source, ticker, sector, title, body, created FROM alerts
         WHERE member_id = $1 AND created > $2 ORDER BY created DESC, id DESC LIMIT $3",
    )
    .bind(&caller.id)
    .bind(q.since.unwrap_or(-1))
    .bind(limit)
    .fetch_all(db.read())
    .await?;
    Ok(Json(rows.into_iter().map(View::from).collect()))
}

/// The members one cause reached, and how many alerts it made (one each): an operator's view.
async fn reached(
    State(db): State<Db>,
    caller: Caller,
    Path((kind, source)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let members: Vec<(String,)> =
        query_as("SELECT member_id FROM alerts WHERE kind = $1 AND source = $2 ORDER BY member_id")
            .bind(&kind)
            .bind(&source)
            .fetch_all(db.pool())
            .await?;
    let alerts: i64 = query_scalar("SELECT COUNT(*) FROM alerts WHERE kind = $1 AND source = $2")
        .bind(&kind)
        .bind(&source)
        .fetch_one(db.pool())
        .await?;
    Ok(Json(
        json!({ "alerts": alerts, "members": members.into_iter().map(|m| m.0).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AudienceQuery {
    sector: Option<String>,
    ticker: Option<String>,
}

/// How many members a cause would reach, as alerts knows them now: the holders of a sector
/// (a news item's audience), or the holders and followers of a ticker (a signal's). An
/// operator's view.
async fn audience(
    State(db): State<Db>,
    caller: Caller,
    Query(q): Query<AudienceQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let members: i64 = match (&q.sector, &q.ticker) {
        (Some(sector), None) => {
            query_scalar(
                "SELECT COUNT(DISTINCT member_id) FROM holders WHERE sector = $1 AND quantity > 0",
            )
            .bind(sector)
            .fetch_one(db.read())
            .await?
        }
        (None, Some(ticker)) => query_scalar(
            "SELECT COUNT(*) FROM (SELECT member_id FROM followers WHERE ticker = $1 AND following
                 UNION SELECT member_id FROM holders WHERE ticker = $1 AND quantity > 0) m",
        )
        .bind(ticker)
        .fetch_one(db.read())
        .await?,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "name one sector or one ticker",
            ));
        }
    };
    Ok(Json(json!({ "members": members })))
}
