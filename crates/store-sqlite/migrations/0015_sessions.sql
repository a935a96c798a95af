-- Dashboard sessions (dashboard.md): a browser signed in with a team token holds a random
-- session id in a cookie; only its SHA-256 is stored, like a token's. Revoking the token ends
-- its sessions (the lookup joins a live token); expired rows are pruned by `expires_at`.
-- SQLite edition: INTEGER for BIGINT.
CREATE TABLE dashboard_sessions (
    digest      TEXT    PRIMARY KEY,
    token_id    INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions(expires_at);
