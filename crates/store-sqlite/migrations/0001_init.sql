-- Stackyard schema, SQLite edition. Mirrors crates/store-postgres/migrations: the same tables,
-- columns and indexes; INTEGER PRIMARY KEY AUTOINCREMENT for BIGSERIAL, TEXT for JSONB,
-- INTEGER 0/1 for BOOLEAN. Tables are STRICT so a type bug fails loudly instead of storing a
-- value of the wrong type. All times are INTEGER milliseconds since the epoch, supplied by the
-- caller, never by SQLite's clock.

CREATE TABLE teams (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    tier        TEXT    NOT NULL DEFAULT 'team',
    max_stacks  INTEGER,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id     INTEGER NOT NULL REFERENCES teams(id),
    name        TEXT    NOT NULL,
    digest      TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;

CREATE TABLE stacks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    slug            TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    environment     TEXT    NOT NULL,
    team_id         INTEGER REFERENCES teams(id),
    fingerprint     TEXT,
    tier            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    error           TEXT,
    env             TEXT    NOT NULL DEFAULT '{}',
    env_version     INTEGER NOT NULL DEFAULT 0,
    env_updated_at  INTEGER NOT NULL,
    release         INTEGER NOT NULL DEFAULT 0,
    op_generation   INTEGER NOT NULL DEFAULT 1,
    manifest        TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER
) STRICT;

CREATE INDEX stacks_team_created ON stacks(team_id, created_at DESC, id DESC);
CREATE INDEX stacks_expires ON stacks(expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE services (
    stack_id    INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    expose      INTEGER NOT NULL CHECK (expose IN (0, 1)),
    port        INTEGER NOT NULL,
    url         TEXT,
    error       TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (stack_id, name)
) STRICT;

CREATE TABLE artifacts (
    digest      TEXT    PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE releases (
    stack_id     INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    env_version  INTEGER NOT NULL,
    spec         TEXT    NOT NULL, -- serde_json of Vec<ReleaseService>
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (stack_id, version)
) STRICT;

CREATE TABLE env_versions (
    stack_id      INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    actor         TEXT    NOT NULL,
    set_keys      TEXT    NOT NULL, -- JSON array of key names
    deleted_keys  TEXT    NOT NULL, -- JSON array of key names
    changes       TEXT    NOT NULL, -- JSON envlog::ChangeValues
    snapshot      TEXT,             -- JSON full map, every envlog::SNAPSHOT_EVERY versions
    PRIMARY KEY (stack_id, version)
) STRICT;

-- No foreign keys: audit rows outlive the team or stack they describe.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    team_id     INTEGER,
    actor       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    stack_slug  TEXT,
    request_id  TEXT,
    metadata    TEXT    NOT NULL -- JSON, key names and counts only, never env values
) STRICT;

CREATE INDEX audit_team ON audit_log(team_id, id DESC);
CREATE INDEX audit_stack ON audit_log(stack_slug, id DESC);

-- No foreign key: job history outlives the stack.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    stack_id     INTEGER NOT NULL,
    stack_slug   TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    generation   INTEGER NOT NULL,
    release      INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    run_after    INTEGER NOT NULL,
    claim        TEXT,
    claimed_by   TEXT,
    lease_until  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX jobs_runnable ON jobs(state, run_after, id);
CREATE UNIQUE INDEX jobs_one_running_per_stack ON jobs(stack_id) WHERE state = 'running';
-- Beyond the shared contract: request_deletion supersedes a stack's queued jobs and claim_job
-- checks a stack's running job; without this both scan the whole job history.
CREATE INDEX jobs_stack_state ON jobs(stack_id, state);

CREATE TABLE idempotency_keys (
    scope         TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    state         TEXT    NOT NULL, -- pending | done
    status        INTEGER,
    body          TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;
