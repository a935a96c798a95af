-- The local-runtime issue: releases carry the env map they deploy, status events, the
-- database-backed anonymous rate limit. Mirrors crates/store-postgres/migrations/0002.

-- The stack env map as it was when the release was created (what its deploy applies).
ALTER TABLE releases ADD COLUMN env TEXT NOT NULL DEFAULT '{}';

-- Recovery after a restart looks up each stack's live release.
CREATE INDEX releases_live ON releases(stack_id) WHERE status = 'live';

-- Status changes for GET /stacks/:slug/events, written in the transaction of the change.
-- No foreign key: the events of a torn-down stack stay (the last is `stack.deleted`) until
-- pruned by age. Ids follow commit order per stack (every writer holds the write lock), and
-- AUTOINCREMENT never reuses one, even after pruning removed the newest rows, so a client's
-- Last-Event-ID always means the same event.
CREATE TABLE stack_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stack_id    INTEGER NOT NULL,
    stack_slug  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    data        TEXT    NOT NULL, -- JSON; statuses, versions and key names, never env values
    at          INTEGER NOT NULL
) STRICT;

CREATE INDEX stack_events_stack ON stack_events(stack_id, id);
CREATE INDEX stack_events_at ON stack_events(at);

-- Anonymous creates per client fingerprint per UTC day (days since the epoch).
CREATE TABLE rate_counters (
    fingerprint  TEXT    NOT NULL,
    day          INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, day)
) STRICT;

CREATE INDEX rate_counters_day ON rate_counters(day);

-- Pruning expired idempotency records without scanning them all.
CREATE INDEX idempotency_expires ON idempotency_keys(expires_at);
