//! The order service's database: the event store, its read models and the idempotency keys
//! (`migrations/`, applied in order at start).

use tessera::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sqlite: include_str!("../migrations/0001_init.sql"),
        postgres: Some(include_str!("../migrations/postgres/0001_init.sql")),
    },
    Migration {
        version: 2,
        description: "tables without rowid",
        sqlite: include_str!("../migrations/0002_without_rowid.sql"),
        postgres: Some(include_str!(
            "../migrations/postgres/0002_without_rowid.sql"
        )),
    },
];
