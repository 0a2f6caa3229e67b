-- The live feed reads every member's new alerts by (created, id), five times a second while
-- anyone listens: by an index, not a scan.
CREATE INDEX alerts_by_created ON alerts (created, id);
