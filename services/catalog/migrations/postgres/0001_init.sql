CREATE TABLE products (
    id          TEXT PRIMARY KEY,        -- UUIDv7: ordered by creation, the pagination key
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    category    TEXT NOT NULL,
    price       BIGINT NOT NULL,        -- minor units
    currency    TEXT NOT NULL,
    view_count  BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);
CREATE INDEX products_by_category ON products (category, id);
