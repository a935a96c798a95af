-- The supervisor: how often a service of the live release was restarted and how its process
-- last ended. Mirrors crates/store-postgres/migrations/0003.
ALTER TABLE services ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN last_exit TEXT;
