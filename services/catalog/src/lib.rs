//! Tessera Shop's `catalog` service: products, browsed by anyone, managed by admins.
//!
//! Lists use keyset pagination on the product id (a UUIDv7, so creation order): the cursor is
//! an opaque token for "after this id", so pages never skip or repeat a product however the
//! catalog changes between requests. Viewing a product bumps its view count with one atomic
//! `UPDATE ... RETURNING`, exact under any concurrency and across replicas.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tessera::{ApiError, Caller, Db, Json, Migration, Path, Query, Service, unix_now};
use uuid::Uuid;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "demo catalog",
        sqlite: include_str!("../migrations/sqlite/0002_demo_catalog.sql"),
    },
];

const MAX_LIMIT: u32 = 100;
const DEFAULT_LIMIT: u32 = 20;

pub async fn run() -> anyhow::Result<()> {
    Service::new("catalog")
        .migrations(MIGRATIONS)
        .run(|ctx| async move { Ok(router(ctx.db().clone())) })
        .await
}

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/catalog/products", get(list).post(create))
        .route(
            "/api/catalog/products/lookup",
            get(lookup_query).post(lookup),
        )
        .route(
            "/api/catalog/products/{id}",
            get(view).put(replace).delete(remove),
        )
        .with_state(db)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Product {
    id: String,
    name: String,
    description: String,
    category: String,
    price: i64,
    currency: String,
    view_count: i64,
}

type Row = (String, String, String, String, i64, String, i64);

impl From<Row> for Product {
    fn from((id, name, description, category, price, currency, view_count): Row) -> Self {
        Self {
            id,
            name,
            description,
            category,
            price,
            currency,
            view_count,
        }
    }
}

const COLUMNS: &str = "id, name, description, category, price, currency, view_count";

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    category: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<Product>,
    next_cursor: Option<String>,
}

async fn list(State(db): State<Db>, Query(q): Query<ListQuery>) -> Result<Json<Page>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let after = match q.cursor.as_deref() {
        None | Some("") => String::new(),
        Some(c) => decode_cursor(c)?,
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM products WHERE id > $1 AND ($2 IS NULL OR category = $2) ORDER BY id LIMIT $3"
    );
    let mut rows: Vec<Row> = tessera::store::query_as(&sql)
        .bind(&after)
        .bind(q.category.as_deref())
        .bind(i64::from(limit) + 1)
        .fetch_all(db.pool())
        .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(&r.0))
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(Product::from).collect(),
        next_cursor,
    }))
}

fn encode_cursor(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("after:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let id = text.strip_prefix("after:").ok_or_else(bad)?;
    Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(id.to_string())
}

async fn view(State(db): State<Db>, Path(id): Path<Uuid>) -> Result<Json<Product>, ApiError> {
    let sql = format!(
        "UPDATE products SET view_count = view_count + 1 WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row: Option<Row> = tessera::store::query_as(&sql)
        .bind(id.to_string())
        .fetch_optional(db.pool())
        .await?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("no such product"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupRequest {
    ids: Vec<Uuid>,
}

#[derive(Deserialize)]
struct LookupQuery {
    ids: String,
}

/// `GET /api/catalog/products/lookup?ids=a,b,c`: the same as the POST, cacheable by callers.
async fn lookup_query(
    State(db): State<Db>,
    Query(q): Query<LookupQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ids = q
        .ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Uuid::parse_str(s.trim()).map_err(|_| {
                ApiError::bad_request("invalid_id", format!("{s:?} is not a product id"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    lookup(State(db), Json(LookupRequest { ids })).await
}

/// Several products by id, for other services (prices for an order); counts no views.
/// Unknown ids are left out of the answer.
async fn lookup(
    State(db): State<Db>,
    Json(req): Json<LookupRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.ids.len() > MAX_LIMIT as usize {
        return Err(ApiError::bad_request(
            "too_many_ids",
            format!("at most {MAX_LIMIT} ids"),
        ));
    }
    let mut items = Vec::with_capacity(req.ids.len());
    let sql = format!("SELECT {COLUMNS} FROM products WHERE id = $1");
    for id in &req.ids {
        let row: Option<Row> = tessera::store::query_as(&sql)
            .bind(id.to_string())
            .fetch_optional(db.pool())
            .await?;
        items.extend(row.map(Product::from));
    }
    Ok(Json(serde_json::json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductInput {
    name: String,
    #[serde(default)]
    description: String,
    category: String,
    price: i64,
    currency: String,
}

impl ProductInput {
    fn validate(&self) -> Result<(), ApiError> {
        let len = |s: &str| s.trim().chars().count();
        if !(1..=200).contains(&len(&self.name)) {
            return Err(ApiError::bad_request(
                "invalid_name",
                "name must be 1 to 200 characters",
            ));
        }
        if len(&self.description) > 2000 {
            return Err(ApiError::bad_request(
                "invalid_description",
                "description must be at most 2000 characters",
            ));
        }
        let category_ok = (1..=50).contains(&self.category.len())
            && self
                .category
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !category_ok {
            return Err(ApiError::bad_request(
                "invalid_category",
                "category must be 1 to 50 of a-z, 0-9 and '-'",
            ));
        }
        if !(0..=1_000_000_000_000).contains(&self.price) {
            return Err(ApiError::bad_request(
                "invalid_price",
                "price must be 0 to 10^12 minor units",
            ));
        }
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ApiError::bad_request(
                "invalid_currency",
                "currency must be an ISO 4217 code like USD",
            ));
        }
        Ok(())
    }
}

async fn create(
    State(db): State<Db>,
    caller: Caller,
    Json(input): Json<ProductInput>,
) -> Result<Response, ApiError> {
    caller.require_role("admin")?;
    input.validate()?;
    let id = Uuid::now_v7().to_string();
    let sql = format!(
        "INSERT INTO products (id, name, description, category, price, currency, view_count, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7) RETURNING {COLUMNS}"
    );
    let row: Row = tessera::store::query_as(&sql)
        .bind(&id)
        .bind(input.name.trim())
        .bind(input.description.trim())
        .bind(&input.category)
        .bind(input.price)
        .bind(&input.currency)
        .bind(unix_now() as i64)
        .fetch_one(db.pool())
        .await?;
    tracing::info!(product = %id, by = %caller.id, "product created");
    Ok((StatusCode::CREATED, Json(Product::from(row))).into_response())
}

async fn replace(
    State(db): State<Db>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(input): Json<ProductInput>,
) -> Result<Json<Product>, ApiError> {
    caller.require_role("admin")?;
    input.validate()?;
    let sql = format!(
        "UPDATE products SET name = $2, description = $3, category = $4, price = $5, currency = $6
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row: Option<Row> = tessera::store::query_as(&sql)
        .bind(id.to_string())
        .bind(input.name.trim())
        .bind(input.description.trim())
        .bind(&input.category)
        .bind(input.price)
        .bind(&input.currency)
        .fetch_optional(db.pool())
        .await?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("no such product"))
}

async fn remove(
    State(db): State<Db>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    caller.require_role("admin")?;
    let done = tessera::store::query("DELETE FROM products WHERE id = $1")
        .bind(id.to_string())
        .execute(db.pool())
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such product"));
    }
    tracing::info!(product = %id, by = %caller.id, "product deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7().to_string();
        assert_eq!(decode_cursor(&encode_cursor(&id)).unwrap(), id);
        for bad in [
            "",
            "!!!",
            "YWZ0ZXI6bm90LWEtdXVpZA",
            &URL_SAFE_NO_PAD.encode("before:x"),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
