//! Schema migrations of a PostgreSQL database: each in its own transaction, recorded in
//! `tessera_migrations`, under a session advisory lock so that replicas starting together
//! migrate once (the second waits for the first, then finds nothing left to do).

use deadpool_postgres::Object;

use crate::{DbError, Migration, StoreError};

/// The advisory lock every migrating process of a database takes (any fixed number would
/// do; this one is "tessera" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6573_7365_7261;

/// Applies what `migrations` has that the database has not, each in its own transaction.
pub(super) async fn migrate(conn: Object, migrations: &[Migration]) -> Result<(), StoreError> {
    // A migration with no PostgreSQL text is a schema that exists only embedded.
    if let Some(m) = migrations.iter().find(|m| m.postgres.is_none()) {
        return Err(StoreError::Migrate {
            version: m.version,
            description: m.description,
            error: DbError::Unsupported("this schema has no PostgreSQL version".into()),
        });
    }
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await
        .map_err(DbError::postgres)?;
    let done = apply(&conn, migrations).await;
    let unlocked = conn
        .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await;
    if done.is_err() || unlocked.is_err() {
        // A connection left in doubt (inside a transaction, or still holding the lock) is
        // closed rather than pooled: closing ends both.
        drop(Object::take(conn));
    }
    done
}

async fn apply(conn: &Object, migrations: &[Migration]) -> Result<(), StoreError> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS tessera_migrations (
             version BIGINT PRIMARY KEY,
             description TEXT NOT NULL,
             installed BIGINT NOT NULL
         )",
    )
    .await
    .map_err(DbError::postgres)?;
    let applied: Vec<i64> = conn
        .query("SELECT version FROM tessera_migrations", &[])
        .await
        .map_err(DbError::postgres)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |e: tokio_postgres::Error| StoreError::Migrate {
            version: m.version,
            description: m.description,
            error: DbError::postgres(e),
        };
        let sql = m.postgres.unwrap_or_default();
        let installed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        conn.batch_execute("BEGIN").await.map_err(failed)?;
        let done = async {
            conn.batch_execute(sql).await?;
            conn.execute(
                "INSERT INTO tessera_migrations (version, description, installed) VALUES ($1, $2, $3)",
                &[&m.version, &m.description, &installed],
            )
            .await?;
            conn.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = done {
            let _ = conn.batch_execute("ROLLBACK").await;
            return Err(failed(e));
        }
    }
    Ok(())
}
