CREATE TABLE products (
    id          TEXT PRIMARY KEY,        -- UUIDv7: ordered by creation, the pagination key
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    category    TEXT NOT NULL,
    price       INTEGER NOT NULL,        -- minor units
    currency    TEXT NOT NULL,
    view_count  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE INDEX products_by_category ON products (category, id);
