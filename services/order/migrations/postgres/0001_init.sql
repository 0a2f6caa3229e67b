-- The event store: the Order aggregate is its events. (order_id, version) is the optimistic
-- concurrency check: two writers of the same version cannot both commit.
CREATE TABLE order_events (
    order_id TEXT NOT NULL,
    version  BIGINT NOT NULL,
    type     TEXT NOT NULL,
    data     TEXT NOT NULL,
    at       BIGINT NOT NULL,          -- unix ms
    PRIMARY KEY (order_id, version)
);

-- Read models: projections of the events, rebuildable from them at any time.
CREATE TABLE order_details (
    order_id   TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    stage      TEXT NOT NULL,
    items      TEXT NOT NULL,
    total      BIGINT NOT NULL,
    currency   TEXT NOT NULL,
    reason     TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version    BIGINT NOT NULL
);

CREATE TABLE order_list (
    user_id    TEXT NOT NULL,
    order_id   TEXT NOT NULL,
    status     TEXT NOT NULL,
    total      BIGINT NOT NULL,
    currency   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, order_id)
);

-- Idempotency-Key → the order it created, per user.
CREATE TABLE idempotency (
    user_id  TEXT NOT NULL,
    key      TEXT NOT NULL,
    order_id TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
