-- The embedded event log: append-only topics split into partitions, and consumer groups'
-- committed offsets.
CREATE TABLE topics (
    name       TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);

CREATE TABLE events (
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset"  INTEGER NOT NULL,
    key       TEXT NOT NULL,
    event     TEXT NOT NULL,          -- the CloudEvent, JSON, as published
    appended  INTEGER NOT NULL,       -- unix ms
    PRIMARY KEY (topic, partition, "offset")
) WITHOUT ROWID;

CREATE TABLE offsets (
    grp       TEXT NOT NULL,
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed INTEGER NOT NULL,       -- the next offset the group will read
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
