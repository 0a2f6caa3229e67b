-- Members' accounts, holdings, trades and the tickers they follow.
-- (One file for both engines: the types are spelled as PostgreSQL spells them.)
CREATE TABLE accounts (
    member_id TEXT PRIMARY KEY,
    cash BIGINT NOT NULL,             -- cents, never below 0
    realized BIGINT NOT NULL,         -- profit and loss of what was sold, cents
    style TEXT NOT NULL,              -- conservative | balanced | aggressive
    opened BIGINT NOT NULL            -- unix ms
);

CREATE TABLE holdings (
    member_id TEXT NOT NULL,
    ticker TEXT NOT NULL,
    sector TEXT NOT NULL,
    quantity BIGINT NOT NULL,         -- never below 0
    cost BIGINT NOT NULL,             -- what the quantity held cost, cents
    removed BIGINT NOT NULL,          -- the cost the last sale took out (for realized P&L)
    version BIGINT NOT NULL,          -- +1 per change: consumers keep the newest
    PRIMARY KEY (member_id, ticker)
);

CREATE TABLE trades (
    id TEXT PRIMARY KEY,
    member_id TEXT NOT NULL,
    idempotency_key TEXT,
    ticker TEXT NOT NULL,
    side TEXT NOT NULL,               -- buy | sell
    quantity BIGINT NOT NULL,
    price BIGINT NOT NULL,            -- cents
    at BIGINT NOT NULL                -- unix ms
);
CREATE UNIQUE INDEX trades_by_key ON trades (member_id, idempotency_key);
CREATE INDEX trades_by_member ON trades (member_id, at);

CREATE TABLE follows (
    member_id TEXT NOT NULL,
    ticker TEXT NOT NULL,
    version BIGINT NOT NULL,
    following BOOLEAN NOT NULL,
    PRIMARY KEY (member_id, ticker)
);
