-- The tessera library's own tables, in every service database.

-- Events written in the same transaction as the state change they announce; the relay
-- publishes them after commit and deletes them once the log has them.
CREATE TABLE IF NOT EXISTS tessera_outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    event   TEXT NOT NULL,
    created INTEGER NOT NULL
);

-- Events a consumer group has handled: written in the handler's transaction, so a
-- redelivered event has no second effect.
CREATE TABLE IF NOT EXISTS tessera_inbox (
    grp      TEXT NOT NULL,
    event_id TEXT NOT NULL,
    handled  INTEGER NOT NULL,
    PRIMARY KEY (grp, event_id)
);

-- Leases among replicas sharing a database (one outbox relay at a time).
CREATE TABLE IF NOT EXISTS tessera_leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  INTEGER NOT NULL
);
