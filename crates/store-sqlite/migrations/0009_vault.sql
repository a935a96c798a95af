-- The team vault: one row per version of a (team, env, key), the value sealed under the
-- team vault's data key (`crypto::ValueAd` binds owner, "<env>/<key>" and version), with its
-- keyed digest and plaintext length; no plaintext column. `vault_heads` holds each key's
-- version counter: a write bumps it (an upsert that locks the row until commit), so
-- concurrent writers to one key queue and versions are never reused, even after a delete.
-- `release_vault_refs`: the (key, version) each `vault://KEY` of a release resolved to, so a
-- restart or a recovery reproduces the same values after a rotation.
-- The same statements run on both stores; this file differs from its twin only in
-- the type of the byte columns (crates/store-{sqlite,postgres}/migrations).
CREATE TABLE vault_heads (
    team_id     BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    env         TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    PRIMARY KEY (team_id, env, key)
);

CREATE TABLE vault_values (
    team_id     BIGINT NOT NULL,
    env         TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    sealed      BLOB NOT NULL,
    digest      BLOB NOT NULL,
    length      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (team_id, env, key, version),
    FOREIGN KEY (team_id, env, key) REFERENCES vault_heads(team_id, env, key) ON DELETE CASCADE
);

CREATE TABLE release_vault_refs (
    stack_id    BIGINT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    release     BIGINT NOT NULL,
    env         TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    PRIMARY KEY (stack_id, release, key)
);
