-- Notifications keyed by their id alone (WITHOUT ROWID): the table and its key index were two
-- b-trees, each written by every insert (docs/BENCHMARKS.md §3); now one, beside the
-- (order_id, kind) and by-user indexes.
CREATE TABLE notifications_new (
    id       TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    kind     TEXT NOT NULL,          -- order_confirmed | order_rejected
    channel  TEXT NOT NULL,          -- how it was sent
    subject  TEXT NOT NULL,
    body     TEXT NOT NULL,
    created  INTEGER NOT NULL,
    UNIQUE (order_id, kind)
) WITHOUT ROWID;
INSERT INTO notifications_new SELECT id, order_id, user_id, kind, channel, subject, body, created FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_new RENAME TO notifications;
CREATE INDEX notifications_by_user ON notifications (user_id, created);
