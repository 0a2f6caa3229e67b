-- Mail waiting to go out, sent, or given up on: one row per cause (its key).
CREATE TABLE IF NOT EXISTS tessera_mail (
    id TEXT PRIMARY KEY,              -- the cause's key: one message per cause
    to_user TEXT NOT NULL,            -- whom: a user id, resolved to an address when sent
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,              -- pending | sent | dead
    attempts BIGINT NOT NULL,
    next_at BIGINT NOT NULL,          -- unix ms: not before
    claimed_until BIGINT NOT NULL,    -- unix ms: a sender has it until then
    claimed_by TEXT,                  -- which instance
    last_error TEXT,
    created BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX IF NOT EXISTS tessera_mail_due ON tessera_mail (state, next_at);
