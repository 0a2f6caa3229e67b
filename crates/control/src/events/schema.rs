//! The log's SQLite schema: its migrations in order (the SQL is in `crates/control/migrations`),
//! with the test that a log written by an older schema reads on after upgrading.

use tessera::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "log",
        sqlite: include_str!("../../migrations/0001_log.sql"),
        // The embedded log is SQLite only: beyond one machine, events go to NATS JetStream.
        postgres: None,
    },
    Migration {
        version: 2,
        description: "events in append order",
        sqlite: include_str!("../../migrations/0002_events_in_append_order.sql"),
        // The embedded log is SQLite only: beyond one machine, events go to NATS JetStream.
        postgres: None,
    },
    Migration {
        version: 3,
        description: "each event's producer",
        sqlite: include_str!("../../migrations/0003_producer.sql"),
        // The embedded log is SQLite only: beyond one machine, events go to NATS JetStream.
        postgres: None,
    },
];

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera::Db;

    use super::super::config::LogConfig;
    use super::super::log::EventLog;
    use super::super::testing::{event, temp_dir};
    use super::super::topic::partition_of;
    use super::*;

    #[tokio::test]
    async fn a_log_written_by_the_first_schema_reads_on_after_the_migration() {
        let dir = temp_dir();
        // The log as the first schema stored it: events keyed by topic, partition and offset,
        // written out of append order (partition 1 before partition 0), and a commit.
        let old = Db::open(&Db::default_url(&dir, "log"), &MIGRATIONS[..1])
            .await
            .unwrap();
        tessera::store::query("INSERT INTO topics (name, partitions) VALUES ('orders', 2)")
            .execute(old.pool())
            .await
            .unwrap();
        for (partition, offset, appended) in
            [(1, 0, 10), (1, 1, 11), (0, 0, 12), (0, 1, 13), (0, 2, 14)]
        {
            tessera::store::query(
                r#"INSERT INTO events (topic, partition, "offset", key, event, appended) VALUES ('orders', $1, $2, 'k', $3, $4)"#,
            )
            .bind(partition)
            .bind(offset)
            .bind(event(&format!("p{partition}o{offset}"), "k").get().to_string())
            .bind(appended)
            .execute(old.pool())
            .await
            .unwrap();
        }
        tessera::store::query(
            "INSERT INTO offsets (grp, topic, partition, committed) VALUES ('g', 'orders', 0, 1)",
        )
        .execute(old.pool())
        .await
        .unwrap();
        old.close().await;

        let log = EventLog::open(&dir, LogConfig::default()).await.unwrap();
        let mut read = std::collections::BTreeMap::new();
        for part in log
            .fetch_parts("orders", "g", "c1", 100, Duration::ZERO, true)
            .await
            .unwrap()
        {
            read.insert(part.0, part.1.iter().map(|s| s.offset).collect::<Vec<_>>());
        }
        // Partition 0 from its commit, partition 1 from its start, each in offset order.
        assert_eq!(read.get(&0), Some(&vec![1, 2]));
        assert_eq!(read.get(&1), Some(&vec![0, 1]));
        // Appends continue each partition's offsets.
        let keyed_to_0 = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| partition_of(k, 2) == 0)
            .unwrap();
        let next = log
            .publish("orders", vec![event("new", &keyed_to_0)])
            .await
            .unwrap();
        assert_eq!(next, [(0, 3)]);
        // Stored in append order: the migrated events by their append time, then the new one.
        let order: Vec<String> = tessera::store::query_scalar(
            r#"SELECT partition || ':' || "offset" FROM events ORDER BY seq"#,
        )
        .fetch_all(log.inner.db.pool())
        .await
        .unwrap();
        assert_eq!(order, ["1:0", "1:1", "0:0", "0:1", "0:2", "0:3"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
