//! The portfolio's database (`migrations/`).

use tessera::Migration;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "init",
    sqlite: include_str!("../migrations/0001_init.sql"),
    postgres: Some(include_str!("../migrations/0001_init.sql")),
}];
