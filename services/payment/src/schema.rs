//! The payment service's database: a payment per order, and where it stands
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
        description: "payments by user",
        sqlite: include_str!("../migrations/0002_payments_by_user.sql"),
        postgres: Some(include_str!("../migrations/0002_payments_by_user.sql")),
    },
];
