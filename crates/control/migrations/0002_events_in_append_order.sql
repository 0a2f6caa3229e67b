-- Events kept in the order they were appended (the rowid), and found by topic, partition and
-- offset through an index. Keyed by (topic, partition, offset) alone, every partition had its
-- own tail in the middle of one b-tree, so an append rewrote its partition's last leaf and,
-- every few events, split it in place (SQLite then rebalances three neighbouring leaves and
-- their parent): about 3.4 pages written per event. Appended at the end of the table, events
-- of every partition share the last leaf and a full one is simply followed by a new one; the
-- index's entries are small, so its leaves rarely split. This copies the log once (about 3 s
-- for 500,000 events); the old table's pages go to the free list for later appends.
CREATE TABLE events_by_append (
    seq       INTEGER PRIMARY KEY,    -- append order
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset"  INTEGER NOT NULL,
    key       TEXT NOT NULL,
    event     TEXT NOT NULL,          -- the CloudEvent, JSON, as published
    appended  INTEGER NOT NULL        -- unix ms
);
INSERT INTO events_by_append (topic, partition, "offset", key, event, appended)
    SELECT topic, partition, "offset", key, event, appended FROM events ORDER BY appended, topic, partition, "offset";
DROP TABLE events;
ALTER TABLE events_by_append RENAME TO events;
CREATE UNIQUE INDEX events_at ON events (topic, partition, "offset");
