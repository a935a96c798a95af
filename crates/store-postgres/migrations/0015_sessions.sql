-- Dashboard sessions (dashboard.md): a browser signed in with a team token holds a random
-- session id in a cookie; only its SHA-256 is stored, like a token's. Revoking the token ends
-- its sessions (the lookup joins a live token); expired rows are pruned by `expires_at`.
CREATE TABLE dashboard_sessions (
    digest      TEXT   PRIMARY KEY,
    token_id    BIGINT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions(expires_at);
