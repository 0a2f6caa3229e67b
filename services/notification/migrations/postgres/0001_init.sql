-- Every message sent, one per order outcome.
CREATE TABLE notifications (
    id       TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    kind     TEXT NOT NULL,          -- order_confirmed | order_rejected
    channel  TEXT NOT NULL,          -- how it was sent
    subject  TEXT NOT NULL,
    body     TEXT NOT NULL,
    created  BIGINT NOT NULL,
    UNIQUE (order_id, kind)
);
CREATE INDEX notifications_by_user ON notifications (user_id, created);
