//! The notification service's database: the messages recorded per order and kind
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
    Migration {
        version: 3,
        description: "by created, for the live feed",
        sqlite: include_str!("../migrations/0003_by_created.sql"),
        postgres: Some(include_str!("../migrations/0003_by_created.sql")),
    },
];

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use tessera::Db;
    use tessera::store::{query, query_as};
    use tessera::testing::TempDb;

    #[tokio::test]
    async fn notifications_survive_the_move_to_without_rowid() {
        let before = TempDb::new("notification", &MIGRATIONS[..1]).await;
        query(
            "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
             VALUES ('n1', 'o1', 'u1', 'order_confirmed', 'log', 's', 'b', 9)",
        )
        .execute(before.pool())
        .await
        .unwrap();
        before.close().await;

        let db = Db::open(before.url(), MIGRATIONS).await.unwrap();
        let row: (String, String, i64) =
            query_as("SELECT id, body, created FROM notifications WHERE user_id = 'u1'")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(row, ("n1".into(), "b".into(), 9));
        // One notification per order and kind, still.
        assert!(
            query(
                "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
                 VALUES ('n2', 'o1', 'u1', 'order_confirmed', 'log', 's', 'b', 10)",
            )
            .execute(db.pool())
            .await
            .is_err()
        );
        db.close().await;
    }
}
