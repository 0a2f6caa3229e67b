-- Who holds and follows what (from portfolio.events), and the alerts made for members.
-- (One file for both engines: the types are spelled as PostgreSQL spells them.)
CREATE TABLE holders (
    member_id TEXT NOT NULL,
    ticker TEXT NOT NULL,
    sector TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (member_id, ticker)
);
CREATE INDEX holders_by_sector ON holders (sector, member_id);
CREATE INDEX holders_by_ticker ON holders (ticker, member_id);

CREATE TABLE followers (
    member_id TEXT NOT NULL,
    ticker TEXT NOT NULL,
    following BOOLEAN NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (member_id, ticker)
);
CREATE INDEX followers_by_ticker ON followers (ticker, member_id);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,              -- kind:source:member: one alert per member and cause
    member_id TEXT NOT NULL,
    kind TEXT NOT NULL,               -- news | signal
    source TEXT NOT NULL,             -- the news item's id, or the signal event's
    ticker TEXT,
    sector TEXT,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created BIGINT NOT NULL           -- unix ms
);
CREATE INDEX alerts_by_member ON alerts (member_id, created);
CREATE INDEX alerts_by_source ON alerts (kind, source);
