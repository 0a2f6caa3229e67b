-- The simulated market: its tickers and their last price, its clock, candles, and news.
-- (One file for both engines: the types are spelled as PostgreSQL spells them.)
CREATE TABLE tickers (
    ticker TEXT PRIMARY KEY,
    sector TEXT NOT NULL,
    name TEXT NOT NULL,
    price BIGINT NOT NULL,      -- cents
    open BIGINT NOT NULL        -- the first price of the simulation, for the day's change
);

CREATE TABLE clock (
    id INTEGER PRIMARY KEY,
    tick BIGINT NOT NULL
);

CREATE TABLE candles (
    ticker TEXT NOT NULL,
    width BIGINT NOT NULL,      -- seconds: 1 or 60
    start BIGINT NOT NULL,      -- unix ms
    open BIGINT NOT NULL,
    high BIGINT NOT NULL,
    low BIGINT NOT NULL,
    close BIGINT NOT NULL,
    PRIMARY KEY (ticker, width, start)
);

CREATE TABLE news (
    id TEXT PRIMARY KEY,
    sector TEXT NOT NULL,
    headline TEXT NOT NULL,
    sentiment DOUBLE PRECISION NOT NULL,
    published BIGINT NOT NULL   -- unix ms
);
CREATE INDEX news_by_published ON news (published);
CREATE INDEX news_by_sector ON news (sector, published);
