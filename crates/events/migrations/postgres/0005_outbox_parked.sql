-- Outbox events the log refused for what they are (not a CloudEvent, larger than the log
-- takes, a topic the service may not publish to): parked here with the reason, never dropped,
-- until an operator requeues them (`outbox::requeue`). `id` is the row's id in the outbox.
CREATE TABLE tessera_outbox_parked (
    id      BIGINT PRIMARY KEY,
    topic   TEXT NOT NULL,
    event   TEXT NOT NULL,
    created BIGINT NOT NULL,       -- unix s, when the event was written
    reason  TEXT NOT NULL,
    parked  BIGINT NOT NULL        -- unix ms
);
