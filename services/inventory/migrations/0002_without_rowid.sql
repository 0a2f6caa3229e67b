-- Stock and reservations keyed by their primary key alone (WITHOUT ROWID): one b-tree each
-- instead of a table plus a separate key index. A reservation's insert or status change
-- wrote a page of each (docs/BENCHMARKS.md §3: 2.7 of an inventory commit's 5.8 pages).
CREATE TABLE stock_new (
    product_id TEXT PRIMARY KEY,
    available  INTEGER NOT NULL CHECK (available >= 0),
    reserved   INTEGER NOT NULL CHECK (reserved >= 0)
) WITHOUT ROWID;
INSERT INTO stock_new SELECT product_id, available, reserved FROM stock;
DROP TABLE stock;
ALTER TABLE stock_new RENAME TO stock;

CREATE TABLE reservations_new (
    order_id TEXT PRIMARY KEY,
    status   TEXT NOT NULL,           -- reserved | released | committed | rejected
    items    TEXT NOT NULL,           -- JSON [{productId, quantity}]
    updated  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO reservations_new SELECT order_id, status, items, updated FROM reservations;
DROP TABLE reservations;
ALTER TABLE reservations_new RENAME TO reservations;
