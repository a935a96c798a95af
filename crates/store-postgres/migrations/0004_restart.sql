-- Restarts: a `restart` job may name the one service it restarts (NULL: every service of the
-- release). Mirrors crates/store-sqlite/migrations/0004.
ALTER TABLE jobs ADD COLUMN service TEXT;
