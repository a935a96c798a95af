-- Stackyard schema, PostgreSQL edition. crates/store-sqlite/migrations mirrors it: the same
-- tables, columns and indexes (INTEGER / TEXT there where this file has BIGINT / JSONB /
-- BOOLEAN). All times are BIGINT milliseconds since the epoch, supplied by the caller, never
-- by the database's clock.

CREATE TABLE teams (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    tier        TEXT   NOT NULL DEFAULT 'team',
    max_stacks  BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    id          BIGSERIAL PRIMARY KEY,
    team_id     BIGINT NOT NULL REFERENCES teams(id),
    name        TEXT   NOT NULL,
    digest      TEXT   NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE stacks (
    id              BIGSERIAL PRIMARY KEY,
    slug            TEXT   NOT NULL UNIQUE,
    name            TEXT   NOT NULL,
    environment     TEXT   NOT NULL,
    team_id         BIGINT REFERENCES teams(id),
    fingerprint     TEXT,
    tier            TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    error           TEXT,
    env             JSONB  NOT NULL DEFAULT '{}',
    env_version     BIGINT NOT NULL DEFAULT 0,
    env_updated_at  BIGINT NOT NULL,
    release         BIGINT NOT NULL DEFAULT 0,
    op_generation   BIGINT NOT NULL DEFAULT 1,
    manifest        TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    expires_at      BIGINT
);
-- The env map is rewritten whole by every env batch; compressing a map of random-looking
-- values mostly fails and costs CPU on every write (measured ~17% with a 20 KiB map), so it is
-- stored out of line uncompressed. The 64 KiB size rule is enforced in-process by the planner.
ALTER TABLE stacks ALTER COLUMN env SET STORAGE EXTERNAL;

CREATE INDEX stacks_team_created ON stacks(team_id, created_at DESC, id DESC);
CREATE INDEX stacks_expires ON stacks(expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE services (
    stack_id    BIGINT  NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    position    INT     NOT NULL,
    status      TEXT    NOT NULL,
    expose      BOOLEAN NOT NULL,
    port        INT     NOT NULL,
    url         TEXT,
    error       TEXT,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (stack_id, name)
);

CREATE TABLE artifacts (
    digest      TEXT   PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE releases (
    stack_id     BIGINT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    version      BIGINT NOT NULL,
    status       TEXT   NOT NULL,
    env_version  BIGINT NOT NULL,
    spec         JSONB  NOT NULL, -- serde_json of Vec<ReleaseService>
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (stack_id, version)
);

CREATE TABLE env_versions (
    stack_id      BIGINT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    version       BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    actor         TEXT   NOT NULL,
    set_keys      JSONB  NOT NULL, -- array of key names
    deleted_keys  JSONB  NOT NULL, -- array of key names
    changes       JSONB  NOT NULL, -- envlog::ChangeValues
    snapshot      JSONB,           -- the full map, every envlog::SNAPSHOT_EVERY versions
    PRIMARY KEY (stack_id, version)
);

-- No foreign keys: audit rows outlive the team or stack they describe.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    team_id     BIGINT,
    actor       TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    stack_slug  TEXT,
    request_id  TEXT,
    metadata    JSONB  NOT NULL -- key names and counts only, never env values
);

CREATE INDEX audit_team ON audit_log(team_id, id DESC);
CREATE INDEX audit_stack ON audit_log(stack_slug, id DESC);

-- No foreign key: job history outlives the stack.
CREATE TABLE jobs (
    id           BIGSERIAL PRIMARY KEY,
    stack_id     BIGINT NOT NULL,
    stack_slug   TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    state        TEXT   NOT NULL,
    generation   BIGINT NOT NULL,
    release      BIGINT NOT NULL DEFAULT 0,
    attempts     BIGINT NOT NULL DEFAULT 0,
    run_after    BIGINT NOT NULL,
    claim        TEXT,
    claimed_by   TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE INDEX jobs_runnable ON jobs(state, run_after, id);
-- The backstop of "one operation per stack at a time": a claim that would make a second job of
-- a stack running fails here, whatever the claiming query saw.
CREATE UNIQUE INDEX jobs_one_running_per_stack ON jobs(stack_id) WHERE state = 'running';
-- Beyond the shared contract (as in SQLite): request_deletion supersedes a stack's queued jobs
-- and claim_job checks a stack's running job; without this both scan the whole job history.
CREATE INDEX jobs_stack_state ON jobs(stack_id, state);

CREATE TABLE idempotency_keys (
    scope         TEXT   NOT NULL,
    key           TEXT   NOT NULL,
    request_hash  TEXT   NOT NULL,
    state         TEXT   NOT NULL, -- pending | done
    status        INT,
    body          TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
