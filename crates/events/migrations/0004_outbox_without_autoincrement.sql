-- The outbox without AUTOINCREMENT: with it, every insert also rewrote the row of the table in
-- `sqlite_sequence`, one more page in every commit that announces an event. Ids still never
-- go back: SQLite gives a new row the highest id plus one, and the relay never deletes the
-- row with the highest id (once published, it empties it instead: a row with an empty topic
-- is a tombstone the relay skips). The highest id handed out so far is kept the same way, so
-- a relay that remembers an id from before this migration is not fooled either.
CREATE TABLE tessera_outbox_new (
    id      INTEGER PRIMARY KEY,
    topic   TEXT NOT NULL,          -- '' for a tombstone
    event   TEXT NOT NULL,
    created INTEGER NOT NULL
);
INSERT INTO tessera_outbox_new (id, topic, event, created)
    SELECT id, topic, event, created FROM tessera_outbox;
INSERT INTO tessera_outbox_new (id, topic, event, created)
    SELECT seq, '', '', 0 FROM sqlite_sequence
    WHERE name = 'tessera_outbox' AND seq > COALESCE((SELECT MAX(id) FROM tessera_outbox), 0);
DROP TABLE tessera_outbox;
ALTER TABLE tessera_outbox_new RENAME TO tessera_outbox;
