-- Encryption at rest: the canary that proves the master key at start-up (one row, written by
-- the first start, replaced by `admin rotate-master-key`). The master key itself is never
-- stored. Mirrors crates/store-sqlite/migrations/0007.
CREATE TABLE keyring (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    canary      BYTEA    NOT NULL, -- crypto::MasterKey::seal_canary
    updated_at  BIGINT   NOT NULL
);
