-- The inbox and the saga table keyed by their primary key alone (WITHOUT ROWID): one b-tree
-- each instead of a table plus a separate key index, so each insert writes half the pages.
CREATE TABLE tessera_inbox_new (
    grp      TEXT NOT NULL,
    event_id TEXT NOT NULL,
    handled  INTEGER NOT NULL,
    PRIMARY KEY (grp, event_id)
) WITHOUT ROWID;
INSERT INTO tessera_inbox_new (grp, event_id, handled) SELECT grp, event_id, handled FROM tessera_inbox;
DROP TABLE tessera_inbox;
ALTER TABLE tessera_inbox_new RENAME TO tessera_inbox;

CREATE TABLE tessera_sagas_new (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    step     INTEGER NOT NULL,
    status   TEXT NOT NULL,          -- running | completed | failed
    data     TEXT NOT NULL,          -- JSON object, grows with the steps' replies
    deadline INTEGER NOT NULL,       -- unix ms: the current step times out then
    reason   TEXT,
    updated  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO tessera_sagas_new SELECT id, name, step, status, data, deadline, reason, updated FROM tessera_sagas;
DROP TABLE tessera_sagas;
ALTER TABLE tessera_sagas_new RENAME TO tessera_sagas;
CREATE INDEX IF NOT EXISTS tessera_sagas_due ON tessera_sagas (status, deadline);
