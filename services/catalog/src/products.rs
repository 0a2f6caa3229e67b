//! A product: how it is stored and shown, and what a new or changed one must be.

use serde::{Deserialize, Serialize};
use tessera::ApiError;

/// A product as the API shows it (price in minor units).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    id: String,
    name: String,
    description: String,
    category: String,
    price: i64,
    currency: String,
    view_count: i64,
}

/// A product as `SELECT {COLUMNS}` reads it.
pub type Row = (String, String, String, String, i64, String, i64);

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

/// The columns a [`Row`] is read from, in its order.
pub const COLUMNS: &str = "id, name, description, category, price, currency, view_count";

/// The body that creates or replaces a product.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub category: String,
    /// Minor units.
    pub price: i64,
    /// ISO 4217.
    pub currency: String,
}

impl ProductInput {
    /// 400, with the field's code, unless the product may be stored.
    pub fn validate(&self) -> Result<(), ApiError> {
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
        if !valid_category(&self.category) {
            return Err(invalid_category());
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

/// 1 to 50 of a-z, 0-9 and '-'.
pub fn valid_category(category: &str) -> bool {
    (1..=50).contains(&category.len())
        && category
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub fn invalid_category() -> ApiError {
    ApiError::bad_request(
        "invalid_category",
        "category must be 1 to 50 of a-z, 0-9 and '-'",
    )
}
