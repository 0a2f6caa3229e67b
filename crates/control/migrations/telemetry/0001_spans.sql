-- Spans as the collector received them (OTLP), one row each, in arrival order (so that the
-- oldest rows share pages, and deleting them frees whole pages); ids in lowercase hex. A span
-- is its service's: the same ids from two services are two rows (one cannot replace the
-- other's).
CREATE TABLE spans (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    service TEXT NOT NULL,
    instance TEXT,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    error INTEGER NOT NULL,
    status_message TEXT,
    http_route TEXT,
    http_status INTEGER,
    attributes TEXT NOT NULL
);
CREATE UNIQUE INDEX spans_by_trace ON spans (trace_id, span_id, service);
CREATE INDEX spans_by_start ON spans (start_ns);
