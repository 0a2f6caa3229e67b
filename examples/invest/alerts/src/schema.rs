//! The alerts' database (`migrations/`).

use tessera::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sqlite: include_str!("../migrations/0001_init.sql"),
        postgres: Some(include_str!("../migrations/0001_init.sql")),
    },
    Migration {
        version: 2,
        description: "by created, for the live feed",
        sqlite: include_str!("../migrations/0002_by_created.sql"),
        postgres: Some(include_str!("../migrations/0002_by_created.sql")),
    },
];
