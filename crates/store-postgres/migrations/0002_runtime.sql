-- The local-runtime issue: releases carry the env map they deploy, status events, the
-- database-backed anonymous rate limit. crates/store-sqlite/migrations/0002 mirrors it.

-- The stack env map as it was when the release was created (what its deploy applies).
-- Stored like stacks.env (uncompressed, out of line), for the same reason.
ALTER TABLE releases ADD COLUMN env JSONB NOT NULL DEFAULT '{}';
ALTER TABLE releases ALTER COLUMN env SET STORAGE EXTERNAL;

-- Recovery after a restart looks up each stack's live release.
CREATE INDEX releases_live ON releases(stack_id) WHERE status = 'live';

-- Status changes for GET /stacks/:slug/events, written in the transaction of the change.
-- No foreign key: the events of a torn-down stack stay (the last is `stack.deleted`) until
-- pruned by age. Every writer holds the stack's row lock when it takes an id, so ids follow
-- commit order per stack, across every server sharing the database; a sequence never hands
-- an id out twice, so a client's Last-Event-ID always means the same event.
CREATE TABLE stack_events (
    id          BIGSERIAL PRIMARY KEY,
    stack_id    BIGINT NOT NULL,
    stack_slug  TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    data        JSONB  NOT NULL, -- statuses, versions and key names, never env values
    at          BIGINT NOT NULL
);

CREATE INDEX stack_events_stack ON stack_events(stack_id, id);
CREATE INDEX stack_events_at ON stack_events(at);

-- Anonymous creates per client fingerprint per UTC day (days since the epoch).
CREATE TABLE rate_counters (
    fingerprint  TEXT   NOT NULL,
    day          BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (fingerprint, day)
);

CREATE INDEX rate_counters_day ON rate_counters(day);

-- Pruning expired idempotency records without scanning them all.
CREATE INDEX idempotency_expires ON idempotency_keys(expires_at);
