//! The auth service's database: users, signing keys, sessions, refresh tokens and
//! revocations (`migrations/sqlite/`, applied in order at start).

use tessera::Migration;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "init",
    sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
    postgres: Some(include_str!("../migrations/postgres/0001_init.sql")),
}];
