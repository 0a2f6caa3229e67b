-- What happened to each saga, for its operators: one JSON object per line (a step's command,
-- its outcome, a timeout, each compensation sent, an operator's action), appended in the
-- transaction of each move; and when it started. Listed newest first by state.
ALTER TABLE tessera_sagas ADD COLUMN history TEXT NOT NULL DEFAULT '';
ALTER TABLE tessera_sagas ADD COLUMN started BIGINT;
CREATE INDEX IF NOT EXISTS tessera_sagas_by_state ON tessera_sagas (status, updated);
