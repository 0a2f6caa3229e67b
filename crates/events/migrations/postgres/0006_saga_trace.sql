-- The trace a saga started in: its timeouts' compensations carry it (the ticker works
-- outside any request).
ALTER TABLE tessera_sagas ADD COLUMN traceparent TEXT;
