-- Saga instances of an orchestrating service.
CREATE TABLE IF NOT EXISTS tessera_sagas (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    step     BIGINT NOT NULL,
    status   TEXT NOT NULL,          -- running | completed | failed
    data     TEXT NOT NULL,          -- JSON object, grows with the steps' replies
    deadline BIGINT NOT NULL,       -- unix ms: the current step times out then
    reason   TEXT,
    updated  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS tessera_sagas_due ON tessera_sagas (status, deadline);
