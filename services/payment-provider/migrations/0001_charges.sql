-- One row per idempotency key: retrying a charge never charges twice.
CREATE TABLE charges (
    key       TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    amount    INTEGER NOT NULL,
    currency  TEXT NOT NULL,
    status    TEXT NOT NULL,          -- captured | declined | voided
    created   INTEGER NOT NULL
);
