-- The supervisor: how often a service of the live release was restarted and how its process
-- last ended. Mirrors crates/store-sqlite/migrations/0003.
ALTER TABLE services ADD COLUMN restarts BIGINT NOT NULL DEFAULT 0,
                     ADD COLUMN last_exit TEXT;
