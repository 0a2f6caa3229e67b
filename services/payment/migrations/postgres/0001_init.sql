-- One row per order. The provider is called by a worker, never inside a transaction; the
-- order id is the provider's idempotency key, so a retried call cannot charge twice.
CREATE TABLE payments (
    order_id  TEXT PRIMARY KEY,
    user_id   TEXT NOT NULL,
    amount    BIGINT NOT NULL,
    currency  TEXT NOT NULL,
    -- pending: to charge | authorized | declined | voiding: to void at the provider | voided
    -- | cancelled: cancelled before anything was asked of the provider
    status    TEXT NOT NULL,
    reason    TEXT,
    attempts  BIGINT NOT NULL DEFAULT 0,
    next_try  BIGINT NOT NULL,       -- unix ms
    command   TEXT NOT NULL,          -- the authorize command, to reply to
    updated   BIGINT NOT NULL
);
CREATE INDEX payments_due ON payments (status, next_try);
