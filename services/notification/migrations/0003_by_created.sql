-- The live feed reads what was recorded since it last looked, for every customer at once.
CREATE INDEX notifications_by_created ON notifications (created, id);
