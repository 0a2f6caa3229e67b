-- Every replica's outbox relay listens on `tessera_outbox`: a transaction that adds events
-- wakes them at its commit, so no relay polls the table for another replica's events.
CREATE FUNCTION tessera_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tessera_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER tessera_outbox_notify AFTER INSERT ON tessera_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_outbox_notify();
