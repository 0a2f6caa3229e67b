-- The event store and the read models keyed by their primary key alone (WITHOUT ROWID): one
-- b-tree each instead of a table plus a separate key index, so each write touches half the
-- pages.
CREATE TABLE order_events_new (
    order_id TEXT NOT NULL,
    version  INTEGER NOT NULL,
    type     TEXT NOT NULL,
    data     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (order_id, version)
) WITHOUT ROWID;
INSERT INTO order_events_new SELECT order_id, version, type, data, at FROM order_events;
DROP TABLE order_events;
ALTER TABLE order_events_new RENAME TO order_events;

CREATE TABLE order_details_new (
    order_id   TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    stage      TEXT NOT NULL,
    items      TEXT NOT NULL,
    total      INTEGER NOT NULL,
    currency   TEXT NOT NULL,
    reason     TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version    INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO order_details_new SELECT order_id, user_id, status, stage, items, total, currency, reason, created_at, updated_at, version FROM order_details;
DROP TABLE order_details;
ALTER TABLE order_details_new RENAME TO order_details;

CREATE TABLE order_list_new (
    user_id    TEXT NOT NULL,
    order_id   TEXT NOT NULL,
    status     TEXT NOT NULL,
    total      INTEGER NOT NULL,
    currency   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, order_id)
) WITHOUT ROWID;
INSERT INTO order_list_new SELECT user_id, order_id, status, total, currency, created_at FROM order_list;
DROP TABLE order_list;
ALTER TABLE order_list_new RENAME TO order_list;
