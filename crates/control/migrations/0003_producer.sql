-- Who published each event, as the log authenticated them (`service:<name>`). Handed to
-- consumers beside the event, never inside it: the event's JSON is its publisher's to write.
-- NULL for events stored before the log authenticated publishers.
ALTER TABLE events ADD COLUMN producer TEXT;
