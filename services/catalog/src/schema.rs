//! The catalog's database: the products table, and the demo catalog a newcomer sees on
//! first start (`migrations/sqlite/`, applied in order at start).

use tessera::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: Some(include_str!("../migrations/postgres/0001_init.sql")),
    },
    Migration {
        version: 2,
        description: "demo catalog",
        sqlite: include_str!("../migrations/sqlite/0002_demo_catalog.sql"),
        postgres: Some(include_str!("../migrations/sqlite/0002_demo_catalog.sql")),
    },
];
