-- Promote approvals (environments.md): a promote to an env of `--approval-envs` is recorded
-- `pending` until another token of the team approves or rejects it; an approved one executes
-- once, by a promote naming it (`executed`, with the target it produced). SQLite edition:
-- INTEGER for BIGINT.
CREATE TABLE promotions (
    id            TEXT PRIMARY KEY,
    team_id       INTEGER NOT NULL REFERENCES teams(id),
    source_slug   TEXT NOT NULL,
    from_env      TEXT NOT NULL,
    to_env        TEXT NOT NULL,
    name          TEXT,
    copy_vault    INTEGER NOT NULL,
    requested_by  INTEGER NOT NULL,
    status        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    decided_by    INTEGER,
    decided_at    INTEGER,
    target_slug   TEXT
) STRICT;
CREATE INDEX promotions_team ON promotions(team_id, status, created_at DESC);
