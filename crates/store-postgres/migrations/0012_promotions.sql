-- Promote approvals (environments.md): a promote to an env of `--approval-envs` is recorded
-- `pending` until another token of the team approves or rejects it; an approved one executes
-- once, by a promote naming it (`executed`, with the target it produced).
CREATE TABLE promotions (
    id            TEXT PRIMARY KEY,
    team_id       BIGINT NOT NULL REFERENCES teams(id),
    source_slug   TEXT NOT NULL,
    from_env      TEXT NOT NULL,
    to_env        TEXT NOT NULL,
    name          TEXT,
    copy_vault    BIGINT NOT NULL,
    requested_by  BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    decided_by    BIGINT,
    decided_at    BIGINT,
    target_slug   TEXT
);
CREATE INDEX promotions_team ON promotions(team_id, status, created_at DESC);
