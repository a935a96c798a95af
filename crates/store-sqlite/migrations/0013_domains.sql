-- Custom domains (environments.md): a stack's hostname, unique across every team, with the
-- TXT value that proves ownership and the state of its last check. Removed with the stack.
-- SQLite edition: INTEGER for BIGINT.
CREATE TABLE domains (
    id              TEXT PRIMARY KEY,
    team_id         INTEGER NOT NULL REFERENCES teams(id),
    stack_id        INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    hostname        TEXT NOT NULL UNIQUE,
    token           TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    verified_at     INTEGER,
    last_check_at   INTEGER,
    last_check_err  TEXT,
    missing_since   INTEGER
) STRICT;
CREATE INDEX domains_stack ON domains(stack_id, created_at);
CREATE INDEX domains_team ON domains(team_id);
