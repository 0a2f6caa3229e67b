-- A user's payments, newest first, without scanning everyone's.
CREATE INDEX payments_by_user ON payments (user_id, updated);
