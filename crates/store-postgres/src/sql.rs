//! Every statement the shared operations (`stackyard_store_sql::Ops`) run, in PostgreSQL's
//! dialect. The `lock_*` statements take row locks (`FOR UPDATE`) inside a transaction whose
//! waits are bounded by `lock_timeout`; `jsonb` columns are selected `::text` and written from
//! text parameters cast `::jsonb`; `IS NOT DISTINCT FROM $2` matches NULL with NULL, so one
//! statement serves team callers and anonymous ones.
//!
//! Global lock order, which every transaction follows: a team row, then a stack row, then job
//! rows, then the rows hanging off the stack and idempotency records.

use sqlx::Postgres;
use stackyard_store_sql::Ops;
use stackyard_store_sql::sql::Sql;

/// The shared operations on this store's statements.
pub(crate) const OPS: Ops<Postgres> = Ops::new(&SQL);

macro_rules! stack_cols {
    () => {
        "s.id, s.slug, s.name, s.environment, s.team_id, s.tier, s.status, s.error, \
         s.env_version, s.release, s.op_generation, s.created_at, s.updated_at, s.expires_at"
    };
}

macro_rules! release_cols {
    () => {
        "r.version AS r_version, r.status AS r_status, r.env_version AS r_env_version, \
         r.created_at AS r_created_at, r.spec::text AS r_spec"
    };
}

macro_rules! env_head_cols {
    () => {
        "status, env::text AS env, env_version, env_updated_at, team_id, slug, data_key"
    };
}

pub(crate) static SQL: Sql = Sql {
    lock_stack_by_slug: concat!(
        "SELECT ",
        stack_cols!(),
        " FROM stacks s WHERE s.slug = $1 AND s.team_id IS NOT DISTINCT FROM $2 FOR UPDATE"
    ),
    lock_stack_by_id: concat!(
        "SELECT ",
        stack_cols!(),
        " FROM stacks s WHERE s.id = $1 FOR UPDATE"
    ),
    stack_by_id: concat!("SELECT ", stack_cols!(), " FROM stacks s WHERE s.id = $1"),
    services_of: "SELECT name, status, expose, port, url, error, restarts, last_exit FROM services \
                  WHERE stack_id = $1 ORDER BY position",
    open_releases: concat!(
        "SELECT ",
        release_cols!(),
        " FROM releases r WHERE r.stack_id = $1 AND (r.version = $2 OR r.status IN ('pending', 'live')) \
         ORDER BY r.version"
    ),

    team_cap: "SELECT max_stacks FROM teams WHERE id = $1",
    lock_team_cap: "SELECT max_stacks FROM teams WHERE id = $1 FOR UPDATE",
    count_team_stacks: "SELECT COUNT(*) FROM stacks WHERE team_id = $1 AND status <> 'deleting'",

    insert_stack: "INSERT INTO stacks (slug, name, environment, team_id, fingerprint, tier, status, \
                     error, env, env_version, env_updated_at, release, op_generation, manifest, \
                     created_at, updated_at, expires_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '{}', 0, $12, $9, $10, $11, $12, $13, $14) \
                   RETURNING id",
    update_stack: "UPDATE stacks SET status = $2, error = $3, release = $4, op_generation = $5, \
                     updated_at = $6, manifest = COALESCE($7, manifest) WHERE id = $1",
    delete_stack: "DELETE FROM stacks WHERE id = $1",
    put_service: "INSERT INTO services (stack_id, name, position, status, expose, port, url, error, \
                    restarts, last_exit, updated_at) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                  ON CONFLICT (stack_id, name) DO UPDATE SET position = EXCLUDED.position, \
                    status = EXCLUDED.status, expose = EXCLUDED.expose, port = EXCLUDED.port, \
                    url = EXCLUDED.url, error = EXCLUDED.error, restarts = EXCLUDED.restarts, \
                    last_exit = EXCLUDED.last_exit, updated_at = EXCLUDED.updated_at",
    remove_service: "DELETE FROM services WHERE stack_id = $1 AND name = $2",
    insert_release: "INSERT INTO releases (stack_id, version, status, env_version, spec, env, created_at) \
                     SELECT id, $2, 'pending', env_version, $3::jsonb, env, $4 FROM stacks WHERE id = $1",
    set_release_status: "UPDATE releases SET status = $3 WHERE stack_id = $1 AND version = $2",
    insert_env_version_zero: "INSERT INTO env_versions (stack_id, version, created_at, actor, set_keys, \
                                deleted_keys, changes, snapshot) \
                              VALUES ($1, 0, $2, $3, '[]', '[]', '{}', '{}')",
    supersede_queued_jobs: "UPDATE jobs SET state = 'superseded', updated_at = $2 \
                            WHERE stack_id = $1 AND state = 'queued'",
    queue_job: "INSERT INTO jobs (stack_id, stack_slug, kind, state, generation, release, attempts, \
                  run_after, created_at, updated_at, service) \
                VALUES ($1, $2, $3, 'queued', $4, $5, 0, $6, $6, $6, $7)",
    insert_artifact: "INSERT INTO artifacts (digest, size, created_at) VALUES ($1, $2, $3) \
                      ON CONFLICT (digest) DO UPDATE SET size = EXCLUDED.size",
    insert_release_artifact: "INSERT INTO release_artifacts (stack_id, version, digest) \
                              VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    insert_audit: "INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
    insert_event: "INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) \
                   VALUES ($1, $2, $3, $4::jsonb, $5)",
    complete_idempotency: "INSERT INTO idempotency_keys (scope, key, request_hash, state, status, body, \
                             created_at, expires_at) \
                           VALUES ($1, $2, '', 'done', $3, $4, $5, $6) \
                           ON CONFLICT (scope, key) DO UPDATE SET state = 'done', \
                             status = EXCLUDED.status, body = EXCLUDED.body",

    close_job: "UPDATE jobs SET state = 'done', lease_until = NULL, updated_at = $3 \
                WHERE id = $1 AND claim = $2 AND state = 'running' RETURNING id",
    requeue_job: "UPDATE jobs SET state = 'queued', run_after = $4, last_error = $3, claim = NULL, \
                    claimed_by = NULL, lease_until = NULL, updated_at = $4 \
                  WHERE id = $1 AND claim = $2 AND state = 'running' RETURNING id",
    fail_job: "UPDATE jobs SET state = 'failed', last_error = $3, lease_until = NULL, updated_at = $4 \
               WHERE id = $1 AND claim = $2 AND state = 'running' RETURNING id",
    renew_job_lease: "UPDATE jobs SET lease_until = $3, updated_at = $4 \
                      WHERE id = $1 AND claim = $2 AND state = 'running' RETURNING id",
    requeue_running_jobs: "UPDATE jobs SET state = 'queued', claim = NULL, lease_until = NULL \
                           WHERE state = 'running' RETURNING id",

    get_stack: concat!(
        "SELECT ",
        stack_cols!(),
        ", r.version AS r_version, r.status AS r_status, r.env_version AS r_env_version, \
           r.created_at AS r_created_at, \
           COALESCE((SELECT json_agg(json_build_array(name, status, expose, port, url, error, restarts, last_exit) \
                                     ORDER BY position) \
                     FROM services WHERE stack_id = s.id), '[]')::text AS services \
         FROM stacks s LEFT JOIN releases r ON r.stack_id = s.id AND r.version = s.release \
         WHERE s.slug = $1 AND s.team_id IS NOT DISTINCT FROM $2"
    ),
    deploy_context: concat!(
        "SELECT ",
        stack_cols!(),
        ", ",
        release_cols!(),
        ", r.env::text AS r_env, s.data_key AS data_key FROM stacks s JOIN releases r ON r.stack_id = s.id \
           AND r.version = CASE WHEN $2 > 0 THEN $2 ELSE s.release END \
         WHERE s.id = $1"
    ),
    running_stacks: concat!(
        "SELECT ",
        stack_cols!(),
        ", ",
        release_cols!(),
        ", r.env::text AS r_env, s.data_key AS data_key FROM stacks s JOIN releases r ON r.stack_id = s.id AND r.status = 'live' \
         WHERE s.status <> 'deleting' ORDER BY s.id"
    ),
    list_releases: concat!(
        "SELECT ",
        release_cols!(),
        " FROM releases r WHERE r.stack_id = $1 ORDER BY r.version DESC"
    ),
    list_stacks: concat!(
        "SELECT ",
        stack_cols!(),
        ", (SELECT COUNT(*) FROM stacks WHERE team_id = $1 \
            AND ($5::text IS NULL OR status = $5) AND ($6::text IS NULL OR environment = $6)) AS total \
         FROM stacks s \
         WHERE s.team_id = $1 AND (s.created_at, s.id) < ($2, $3) \
           AND ($5::text IS NULL OR s.status = $5) AND ($6::text IS NULL OR s.environment = $6) \
         ORDER BY s.created_at DESC, s.id DESC LIMIT $4"
    ),
    count_all_team_stacks: "SELECT COUNT(*) FROM stacks WHERE team_id = $1 \
                            AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR environment = $3)",
    expired_stacks: "SELECT slug FROM stacks \
                     WHERE team_id IS NULL AND expires_at <= $1 AND status <> 'deleting' \
                     ORDER BY expires_at, id LIMIT $2",
    list_events: "SELECT id, at, kind, data::text AS data FROM stack_events \
                  WHERE stack_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    list_audit: "SELECT id, at, actor, kind, stack_slug, request_id, metadata::text AS metadata, \
                   (SELECT COUNT(*) FROM audit_log WHERE team_id = $1 \
                      AND ($2::text IS NULL OR stack_slug = $2) AND ($3::text IS NULL OR kind = $3)) AS total \
                 FROM audit_log \
                 WHERE team_id = $1 AND ($2::text IS NULL OR stack_slug = $2) \
                   AND ($3::text IS NULL OR kind = $3) AND id < $4 \
                 ORDER BY id DESC LIMIT $5",
    count_audit: "SELECT COUNT(*) FROM audit_log WHERE team_id = $1 \
                  AND ($2::text IS NULL OR stack_slug = $2) AND ($3::text IS NULL OR kind = $3)",
    env_head: concat!("SELECT ", env_head_cols!(), " FROM stacks WHERE id = $1"),
    lock_env_head: concat!(
        "SELECT ",
        env_head_cols!(),
        " FROM stacks WHERE id = $1 FOR UPDATE"
    ),
    list_env_versions: "SELECT version, created_at, actor, set_keys::text AS set_keys, \
                          deleted_keys::text AS deleted_keys, \
                          (SELECT COUNT(*) FROM env_versions WHERE stack_id = $1 AND version >= 1) AS total \
                        FROM env_versions WHERE stack_id = $1 AND version >= 1 AND version < $2 \
                        ORDER BY version DESC LIMIT $3",
    count_env_versions: "SELECT COUNT(*) FROM env_versions WHERE stack_id = $1 AND version >= 1",
    env_snapshot_at: "SELECT version, snapshot::text AS snapshot FROM env_versions \
                      WHERE stack_id = $1 AND version <= $2 AND snapshot IS NOT NULL \
                      ORDER BY version DESC LIMIT 1",
    env_changes_between: "SELECT changes::text AS changes FROM env_versions \
                          WHERE stack_id = $1 AND version > $2 AND version <= $3 ORDER BY version",

    seal_stack_head: "UPDATE stacks SET env = $2::jsonb, data_key = $3 WHERE id = $1",
    env_rows_of: "SELECT version, changes::text, snapshot::text FROM env_versions WHERE stack_id = $1 \
                  ORDER BY version",
    seal_env_row: "UPDATE env_versions SET changes = $3::jsonb, snapshot = $4::jsonb \
                   WHERE stack_id = $1 AND version = $2",
    release_envs_of: "SELECT version, env_version, env::text FROM releases WHERE stack_id = $1 \
                      ORDER BY version",
    seal_release_env: "UPDATE releases SET env = $3::jsonb WHERE stack_id = $1 AND version = $2",
    lock_promotion: concat!(
        "SELECT ",
        stackyard_store_sql::approval_cols!(),
        " FROM promotions WHERE id = $1 AND team_id = $2 FOR UPDATE"
    ),
    keyring_canary_shared: "SELECT canary FROM keyring WHERE id = 1 FOR SHARE",

    any_team: "SELECT id FROM teams LIMIT 1",
    insert_team: "INSERT INTO teams (name, tier, max_stacks, created_at) VALUES ($1, 'team', $2, $3) \
                  ON CONFLICT (name) DO NOTHING RETURNING id, name, tier, max_stacks, created_at",
    team_exists: "SELECT id FROM teams WHERE id = $1",
    insert_token: "INSERT INTO tokens (team_id, name, digest, created_at) VALUES ($1, $2, $3, $4) \
                   RETURNING id",
    authenticate: "SELECT t.id, t.name, t.tier, t.max_stacks, t.created_at, k.id AS token_id, \
                     k.team_id, k.name AS token_name, k.created_at AS token_created_at \
                   FROM tokens k JOIN teams t ON t.id = k.team_id \
                   WHERE k.digest = $1 AND k.revoked_at IS NULL",
    list_tokens: "SELECT id AS token_id, team_id, name AS token_name, created_at AS token_created_at \
                  FROM tokens WHERE team_id = $1 AND revoked_at IS NULL ORDER BY id",
    revoke_token: "UPDATE tokens SET revoked_at = $3 \
                   WHERE id = $1 AND team_id = $2 AND revoked_at IS NULL RETURNING id",
    insert_session: "INSERT INTO dashboard_sessions (digest, token_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4)",
    session_principal: "SELECT t.id, t.name, t.tier, t.max_stacks, t.created_at, k.id AS token_id, \
                          k.team_id, k.name AS token_name, k.created_at AS token_created_at \
                        FROM dashboard_sessions s JOIN tokens k ON k.id = s.token_id \
                          JOIN teams t ON t.id = k.team_id \
                        WHERE s.digest = $1 AND s.expires_at > $2 AND k.revoked_at IS NULL",
    delete_session: "DELETE FROM dashboard_sessions WHERE digest = $1 RETURNING digest",

    artifacts_of_stack: "SELECT DISTINCT digest FROM release_artifacts WHERE stack_id = $1 \
                         ORDER BY digest",
    lock_artifact: "SELECT digest FROM artifacts WHERE digest = $1 FOR UPDATE",
    artifact_in_use: "SELECT 1 FROM release_artifacts WHERE digest = $1 LIMIT 1",
    delete_artifact: "DELETE FROM artifacts WHERE digest = $1",
    unused_artifacts: "SELECT digest FROM artifacts a WHERE NOT EXISTS \
                         (SELECT 1 FROM release_artifacts r WHERE r.digest = a.digest) ORDER BY digest",
    used_artifacts: "SELECT DISTINCT digest FROM release_artifacts",

    abandon_idempotency: "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 'pending'",
    count_anonymous_create: "INSERT INTO rate_counters AS r (fingerprint, day, count) VALUES ($1, $2, 1) \
                             ON CONFLICT (fingerprint, day) DO UPDATE SET count = r.count + 1 \
                             RETURNING count",
};
