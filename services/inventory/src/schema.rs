//! The inventory's database: stock per product and a reservation per order
//! (`migrations/`, applied in order at start). The demo products start with 100 units.

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

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use tessera::Db;
    use tessera::store::{query, query_as};
    use tessera::testing::TempDb;

    #[tokio::test]
    async fn stock_and_reservations_survive_the_move_to_without_rowid() {
        let before = TempDb::new("inventory", &MIGRATIONS[..1]).await;
        query("UPDATE stock SET available = 7, reserved = 3 WHERE product_id = '0190f000-0000-7000-8000-000000000001'")
            .execute(before.pool())
            .await
            .unwrap();
        query("INSERT INTO reservations (order_id, status, items, updated) VALUES ('o1', 'reserved', '[]', 5)")
            .execute(before.pool())
            .await
            .unwrap();
        before.close().await;

        let db = Db::open(before.url(), MIGRATIONS).await.unwrap();
        let stock: (i64, i64) = query_as(
            "SELECT available, reserved FROM stock WHERE product_id = '0190f000-0000-7000-8000-000000000001'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(stock, (7, 3));
        let reservation: (String, String, i64) =
            query_as("SELECT status, items, updated FROM reservations WHERE order_id = 'o1'")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(reservation, ("reserved".into(), "[]".into(), 5));
        // The constraints came along.
        assert!(
            query("UPDATE stock SET available = -1 WHERE product_id = '0190f000-0000-7000-8000-000000000001'")
                .execute(db.pool())
                .await
                .is_err()
        );
        db.close().await;
    }
}
