-- Log records as the collector received them (OTLP), one row each, numbered in arrival order
-- (a live tail asks for what came after the last it saw).
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    service TEXT NOT NULL,
    instance TEXT,
    severity INTEGER NOT NULL,
    level TEXT NOT NULL,
    body TEXT NOT NULL,
    trace_id TEXT,
    span_id TEXT,
    attributes TEXT NOT NULL
);
CREATE INDEX logs_by_time ON logs (ts_ns);
CREATE INDEX logs_by_trace ON logs (trace_id) WHERE trace_id IS NOT NULL;
