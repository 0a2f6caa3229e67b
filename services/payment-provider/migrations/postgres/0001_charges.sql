-- One row per idempotency key: retrying a charge never charges twice.
CREATE TABLE charges (
    key       TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    amount    BIGINT NOT NULL,
    currency  TEXT NOT NULL,
    status    TEXT NOT NULL,          -- captured | declined | voided
    created   BIGINT NOT NULL
);
