//! The live feed: `GET /api/notifications/live`, a WebSocket on which a signed-in customer
//! receives each new message the moment it is recorded, so that a page needs no polling. The
//! platform's feed (`tessera::feed`: protocol, polling, overlap) over the notifications table.

use tessera::events::BoxFuture;
use tessera::feed::{self, Row, Rows};
use tessera::{Db, DbError};

use crate::http::View;

/// The feed of this replica.
pub type Feed = feed::Feed<Notifications>;

/// How the recorded messages are read, by (created, id); `created` is in seconds.
pub struct Notifications;

impl Rows for Notifications {
    type Item = View;
    const KIND: &'static str = "notification";
    const OVERLAP: i64 = 5;

    fn page<'a>(
        &'a self,
        db: &'a Db,
        created: i64,
        id: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Row<View>>, DbError>> {
        Box::pin(async move {
            let rows: Vec<(String, String, String, String, String, String, i64)> =
                tessera::store::query_as(
                    "SELECT user_id, id, order_id, kind, subject, body, created FROM notifications
                 WHERE created >= $1 AND NOT (created = $1 AND id <= $2)
                 ORDER BY created, id LIMIT $3",
                )
                .bind(created)
                .bind(id)
                .bind(limit)
                .fetch_all(db.pool())
                .await?;
            Ok(rows
                .into_iter()
                .map(|(user, id, order_id, kind, subject, body, created)| Row {
                    user,
                    created,
                    id: id.clone(),
                    item: View::from((id, order_id, kind, subject, body, created)),
                })
                .collect())
        })
    }

    fn now(&self) -> i64 {
        tessera::unix_now() as i64
    }
}

#[cfg(test)]
mod tests {
    use tessera::store::query;
    use tessera::testing::TempDb;

    use std::time::Duration;

    use tessera::feed::POLL;

    use super::*;
    use crate::schema::MIGRATIONS;

    #[tokio::test]
    async fn a_burst_larger_than_a_page_reaches_the_feed_whole_and_once() {
        let db = TempDb::new("notification", MIGRATIONS).await;
        let feed = Feed::start((*db).clone(), Notifications);
        let mut rx = feed.subscribe();
        tokio::time::sleep(POLL * 2).await; // the feed is listening from here
        // 1100 messages in one second (more than two pages of 500, and more than a read of
        // 1000 took before), in one transaction.
        let mut tx = db.write_tx().await.unwrap();
        for i in 0..1100 {
            query(
                "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
                 VALUES ($1, $2, $3, 'order_confirmed', 'recorded', 's', 'b', $4)",
            )
            .bind(format!("n{i:04}"))
            .bind(format!("o{i}"))
            .bind(if i % 2 == 0 { "ann" } else { "bob" })
            .bind(Notifications.now())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let mut ids = std::collections::HashSet::new();
        while ids.len() < 1100 {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of 1100 came", ids.len()))
                .unwrap();
            assert!(ids.insert(got.id.clone()), "{} came twice", got.id);
        }
        // Nothing more: the overlap of later reads sends none of them again.
        tokio::time::sleep(POLL * 3).await;
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_users_socket_hears_only_their_rows_however_many_others_come() {
        let db = TempDb::new("notification", MIGRATIONS).await;
        let feed = Feed::start((*db).clone(), Notifications);
        let mut ann = feed.subscribe_user("ann");
        tokio::time::sleep(POLL * 2).await;
        // Bob's 5,000 (more than any channel holds), then one of Ann's.
        let mut tx = db.write_tx().await.unwrap();
        for i in 0..5001 {
            query(
                "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
                 VALUES ($1, $2, $3, 'order_confirmed', 'recorded', 's', 'b', $4)",
            )
            .bind(format!("n{i:05}"))
            .bind(format!("o{i}"))
            .bind(if i == 5000 { "ann" } else { "bob" })
            .bind(Notifications.now())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ann.recv())
            .await
            .expect("Ann's row comes")
            .expect("not lagged: Bob's rows never went to Ann's channel");
        assert_eq!(got.id, "n05000");
        drop(ann);
        // Nobody listens any more: the user's channel is gone with the last socket.
        assert!(!feed.anyone_listening());
    }
}
