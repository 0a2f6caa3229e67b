//! The catalog API: the router and its handlers. Anyone may browse; only admins change the
//! catalog.
//!
//! Lists use keyset pagination on the product id (a UUIDv7, so creation order): the cursor is
//! an opaque token for "after this id", so pages never skip or repeat a product however the
//! catalog changes between requests. Viewing a product bumps its view count with one atomic
//! `UPDATE ... RETURNING`, exact under any concurrency and across replicas (so a product's
//! own page is never cached).
//!
//! Lists and lookups (what other services price orders with) read through the catalog's cache
//! (`tessera::shared::Cache`: on Redis when the system has one, shared by every replica).
//! Every change puts a product event in the outbox in its own transaction; the catalog
//! consumes those events and invalidates the product and every list (`worker.rs`), so a
//! changed price is never served from the cache once its event is handled.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tessera::events::Event;
use tessera::shared::Cache;
use tessera::{ApiError, Caller, Db, Json, Path, Query, unix_now};
use uuid::Uuid;

use crate::products::{COLUMNS, Product, ProductInput, Row};
use crate::worker::{EVENTS, LISTS, product_group};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub cache: Arc<Cache>,
    /// Wakes the outbox's relay after a commit.
    pub wake: Arc<dyn Fn() + Send + Sync>,
}

const MAX_LIMIT: u32 = 100;
const DEFAULT_LIMIT: u32 = 20;

pub fn router(state: AppState) -> Router {
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
        .with_state(state)
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    category: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<Product>,
    next_cursor: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page>, ApiError> {
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
    // (No category and an empty one are the same list, under the same key.)
    let category = match q.category.as_deref() {
        None | Some("") => None,
        Some(c) if crate::products::valid_category(c) => Some(c),
        Some(_) => return Err(crate::products::invalid_category()),
    };
    let key = format!("{limit}:{after}:{}", category.unwrap_or(""));
    let page = st
        .cache
        .read_through(LISTS, &key, read_page(&st.db, &after, category, limit))
        .await?;
    Ok(Json(page))
}

/// One page from the database: from the primary, as what is read here may be cached (a
/// replica behind it would put back what an invalidation just hid).
async fn read_page(
    db: &Db,
    after: &str,
    category: Option<&str>,
    limit: u32,
) -> Result<Page, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM products WHERE id > $1 AND (CAST($2 AS TEXT) IS NULL OR category = $2) ORDER BY id LIMIT $3"
    );
    let mut rows: Vec<Row> = tessera::store::query_as(&sql)
        .bind(after)
        .bind(category)
        .bind(i64::from(limit) + 1)
        .fetch_all(db.pool())
        .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(&r.0))
    } else {
        None
    };
    Ok(Page {
        items: rows.into_iter().map(Product::from).collect(),
        next_cursor,
    })
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

async fn view(State(st): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Product>, ApiError> {
    let sql = format!(
        "UPDATE products SET view_count = view_count + 1 WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row: Option<Row> = tessera::store::query_as(&sql)
        .bind(id.to_string())
        .fetch_optional(st.db.pool())
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
    State(st): State<AppState>,
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
    lookup(State(st), Json(LookupRequest { ids })).await
}

/// Several products by id, for other services (prices for an order); counts no views.
/// Unknown ids are left out of the answer.
async fn lookup(
    State(st): State<AppState>,
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
        let id = id.to_string();
        let read = async {
            let row: Option<Row> = tessera::store::query_as(&sql)
                .bind(&id)
                .fetch_optional(st.db.pool())
                .await?;
            Ok::<_, ApiError>(row.map(Product::from))
        };
        // The product as the catalog's lookup shows it (its views are not counted here).
        let product = st
            .cache
            .read_through(&product_group(&id), "lookup", read)
            .await?;
        items.extend(product);
    }
    Ok(Json(serde_json::json!({ "items": items })))
}

async fn create(
    State(st): State<AppState>,
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
    let mut tx = st.db.write_tx().await?;
    let row: Row = tessera::store::query_as(&sql)
        .bind(&id)
        .bind(input.name.trim())
        .bind(input.description.trim())
        .bind(&input.category)
        .bind(input.price)
        .bind(&input.currency)
        .bind(unix_now() as i64)
        .fetch_one(&mut *tx)
        .await?;
    let product = Product::from(row);
    announce(&mut tx, "created", &id, &product).await?;
    tx.commit().await?;
    changed(&st, &id).await;
    tracing::info!(product = %id, by = %caller.id, "product created");
    Ok((StatusCode::CREATED, Json(product)).into_response())
}

/// After a change commits: wakes the outbox's relay (its event invalidates every replica's
/// cache) and invalidates this replica's cache at once, so that whoever made the change reads
/// it back at once from this replica (a failure here is left to the event).
async fn changed(st: &AppState, id: &str) {
    (st.wake)();
    st.cache.invalidate(&product_group(id)).await;
    st.cache.invalidate(LISTS).await;
}

/// Puts the event of a product's change in the outbox, in the change's transaction.
async fn announce(
    tx: &mut tessera::events::Tx,
    what: &str,
    id: &str,
    product: impl Serialize,
) -> Result<(), ApiError> {
    let event = Event::new(
        "/catalog",
        &format!("shop.catalog.product.{what}"),
        id,
        product,
    );
    tessera::events::outbox::add(tx, EVENTS, &event).await?;
    Ok(())
}

async fn replace(
    State(st): State<AppState>,
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
    let mut tx = st.db.write_tx().await?;
    let row: Option<Row> = tessera::store::query_as(&sql)
        .bind(id.to_string())
        .bind(input.name.trim())
        .bind(input.description.trim())
        .bind(&input.category)
        .bind(input.price)
        .bind(&input.currency)
        .fetch_optional(&mut *tx)
        .await?;
    let product = Product::from(row.ok_or_else(|| ApiError::not_found("no such product"))?);
    announce(&mut tx, "changed", &id.to_string(), &product).await?;
    tx.commit().await?;
    changed(&st, &id.to_string()).await;
    Ok(Json(product))
}

async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    caller.require_role("admin")?;
    let mut tx = st.db.write_tx().await?;
    let done = tessera::store::query("DELETE FROM products WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such product"));
    }
    let id = id.to_string();
    announce(&mut tx, "deleted", &id, serde_json::json!({ "id": id })).await?;
    tx.commit().await?;
    changed(&st, &id).await;
    tracing::info!(product = %id, by = %caller.id, "product deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tessera::testing::{ADMIN, ANN, ANYONE, App};

    use super::*;
    use crate::schema::MIGRATIONS;

    /// The router on a fresh database (with the demo catalog and the library's outbox), its
    /// cache in memory.
    async fn catalog() -> App {
        let migrations = [MIGRATIONS, tessera::events::MIGRATIONS].concat();
        App::new("catalog", &migrations, |db| {
            router(AppState {
                db,
                cache: Arc::new(Cache::local("catalog", std::time::Duration::from_secs(60))),
                wake: Arc::new(|| {}),
            })
        })
        .await
    }

    fn ids(page: &Value) -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn mug() -> Value {
        json!({ "name": " Mug ", "category": "home", "price": 1250, "currency": "EUR" })
    }

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

    #[tokio::test]
    async fn pages_cover_the_catalog_once_in_id_order() {
        let catalog = catalog().await;
        let (status, first) = catalog
            .call(ANYONE, "GET", "/api/catalog/products", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&first).len(), 20, "the default page");
        let cursor = first["nextCursor"].as_str().unwrap();
        let (_, rest) = catalog
            .call(
                ANYONE,
                "GET",
                &format!("/api/catalog/products?limit=100&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(rest["nextCursor"], Value::Null);
        let all: Vec<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            (all.len(), &all),
            (25, &sorted),
            "25 demo products, each once"
        );

        let (_, books) = catalog
            .call(ANYONE, "GET", "/api/catalog/products?category=books", None)
            .await;
        let books = books["items"].as_array().unwrap();
        assert_eq!(books.len(), 6);
        assert!(books.iter().all(|p| p["category"] == "books"));
        // An empty category is no category (and shares its cached page).
        let (_, empty) = catalog
            .call(
                ANYONE,
                "GET",
                "/api/catalog/products?limit=5&category=",
                None,
            )
            .await;
        assert_eq!(ids(&empty), ids(&first)[..5]);

        for (query, code) in [
            ("category=Books!", "invalid_category"),
            ("limit=0", "invalid_limit"),
            ("limit=101", "invalid_limit"),
            ("cursor=garbage", "invalid_cursor"),
            ("limit=-1", "invalid_query"),
        ] {
            let (status, body) = catalog
                .call(
                    ANYONE,
                    "GET",
                    &format!("/api/catalog/products?{query}"),
                    None,
                )
                .await;
            assert_eq!(
                (status, body["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{query}"
            );
        }
    }

    #[tokio::test]
    async fn only_admins_change_the_catalog() {
        let catalog = catalog().await;
        let product = "/api/catalog/products/0190f000-0000-7000-8000-000000000001";
        for (who, status, code) in [
            (ANYONE, StatusCode::UNAUTHORIZED, "unauthenticated"),
            (ANN, StatusCode::FORBIDDEN, "forbidden"),
        ] {
            for (method, uri, body) in [
                ("POST", "/api/catalog/products", Some(mug())),
                ("PUT", product, Some(mug())),
                ("DELETE", product, None),
            ] {
                let (got, answer) = catalog.call(who, method, uri, body).await;
                assert_eq!(
                    (got, answer["code"].as_str()),
                    (status, Some(code)),
                    "{method} {uri}"
                );
            }
        }
        let (_, keyboard) = catalog.call(ANYONE, "GET", product, None).await;
        assert_eq!(keyboard["name"], "Mechanical Keyboard", "unchanged");
    }

    #[tokio::test]
    async fn a_created_product_is_viewed_changed_and_deleted() {
        let catalog = catalog().await;
        let (status, created) = catalog
            .call(ADMIN, "POST", "/api/catalog/products", Some(mug()))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            created,
            json!({
                "id": created["id"], "name": "Mug", "description": "", "category": "home",
                "price": 1250, "currency": "EUR", "viewCount": 0,
            })
        );
        let uri = format!("/api/catalog/products/{}", created["id"].as_str().unwrap());

        // Each view counts; a lookup does not.
        for views in 1..=2 {
            let (status, seen) = catalog.call(ANYONE, "GET", &uri, None).await;
            assert_eq!(
                (status, &seen["viewCount"]),
                (StatusCode::OK, &json!(views))
            );
        }
        let (_, found) = catalog
            .call(
                ANYONE,
                "GET",
                &format!(
                    "/api/catalog/products/lookup?ids={},{}",
                    created["id"].as_str().unwrap(),
                    Uuid::now_v7()
                ),
                None,
            )
            .await;
        assert_eq!(
            found["items"].as_array().unwrap().len(),
            1,
            "unknown ids left out"
        );
        assert_eq!(found["items"][0]["viewCount"], 2);

        let mut change = mug();
        change["price"] = json!(990);
        let (status, changed) = catalog.call(ADMIN, "PUT", &uri, Some(change)).await;
        assert_eq!((status, &changed["price"]), (StatusCode::OK, &json!(990)));

        let (status, _) = catalog.call(ADMIN, "DELETE", &uri, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        for (method, body) in [("GET", None), ("PUT", Some(mug())), ("DELETE", None)] {
            let (status, answer) = catalog.call(ADMIN, method, &uri, body).await;
            assert_eq!(
                (status, &answer["code"]),
                (StatusCode::NOT_FOUND, &json!("not_found")),
                "{method}"
            );
        }
    }

    #[tokio::test]
    async fn bad_products_and_ids_are_refused() {
        let catalog = catalog().await;
        let with = |key: &str, value: Value| {
            let mut p = mug();
            p[key] = value;
            p
        };
        for (body, code) in [
            (with("name", json!("  ")), "invalid_name"),
            (with("name", json!("x".repeat(201))), "invalid_name"),
            (
                with("description", json!("x".repeat(2001))),
                "invalid_description",
            ),
            (with("category", json!("Home")), "invalid_category"),
            (with("price", json!(-1)), "invalid_price"),
            (with("price", json!(1_000_000_000_001i64)), "invalid_price"),
            (with("currency", json!("eur")), "invalid_currency"),
            (with("colour", json!("red")), "invalid_body"),
            (json!({ "name": "Mug" }), "invalid_body"),
        ] {
            let (status, answer) = catalog
                .call(ADMIN, "POST", "/api/catalog/products", Some(body.clone()))
                .await;
            assert_eq!(
                (status, answer["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{body}"
            );
        }
        let too_many: Vec<Uuid> = (0..101).map(|_| Uuid::now_v7()).collect();
        for (method, uri, body, code) in [
            ("GET", "/api/catalog/products/42", None, "invalid_path"),
            (
                "GET",
                "/api/catalog/products/lookup?ids=42",
                None,
                "invalid_id",
            ),
            (
                "POST",
                "/api/catalog/products/lookup",
                Some(json!({ "ids": too_many })),
                "too_many_ids",
            ),
        ] {
            let (status, answer) = catalog.call(ANYONE, method, uri, body).await;
            assert_eq!(
                (status, answer["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{method} {uri}"
            );
        }
    }
}
