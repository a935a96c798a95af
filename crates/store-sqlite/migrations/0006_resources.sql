-- Resources (POST /db/new, /cache/new): one row per PostgreSQL database or Redis ACL user
-- provisioned for a caller. The row is written `provisioning` before any DDL and removed only
-- after the drop, so it always names what may exist in the resource server. `id` is the
-- random hex the server-side names derive from (`sy_<id>`, key prefix `sy:<id>:`).
-- `connection_url` holds the password, unencrypted until encryption at rest lands.
-- The same statement runs on both stores (their tables are identical), so this file is the
-- same in crates/store-sqlite/migrations and crates/store-postgres/migrations.
CREATE TABLE resources (
    token           TEXT   PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    kind            TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    team_id         BIGINT REFERENCES teams(id),
    fingerprint     TEXT,
    tier            TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    connection_url  TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT
);

CREATE INDEX resources_team_created ON resources(team_id, created_at DESC, token DESC);
CREATE INDEX resources_expires ON resources(expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX resources_status ON resources(status) WHERE status <> 'ready';
