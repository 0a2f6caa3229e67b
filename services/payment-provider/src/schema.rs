//! The simulator's database: every charge by its idempotency key (`migrations/`).

use tessera::Migration;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "charges",
    sqlite: include_str!("../migrations/0001_charges.sql"),
    postgres: Some(include_str!("../migrations/postgres/0001_charges.sql")),
}];
