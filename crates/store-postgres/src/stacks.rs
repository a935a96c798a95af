//! Stacks: creation (with the team cap), lookup filtered by `Access`, listing, deletion
//! requests, releases. Row decoders shared with `jobs` and `env` live here.

use crate::PgStore;
use crate::error::{
    Error, Result, col, corrupt, is_unique_violation, json_col, parsed, to_json_text,
};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::*;
use stackyard_core::store::{
    CreateStackError, IDEMPOTENCY_TTL, NewStack, StoreError, parse_stack_cursor, stack_cursor,
};
use stackyard_core::time::Millis;

/// The columns `stack_from_row` reads, for `concat!` into static SQL. `s` is the stacks alias.
macro_rules! stack_cols {
    () => {
        "s.id, s.slug, s.name, s.environment, s.team_id, s.tier, s.status, s.error, \
         s.env_version, s.release, s.op_generation, s.created_at, s.updated_at, s.expires_at"
    };
}
pub(crate) use stack_cols;

pub(crate) fn stack_from_row(row: &PgRow) -> Result<Stack> {
    let slug: String = col(row, "slug")?;
    let status: String = col(row, "status")?;
    let team_id: Option<i64> = col(row, "team_id")?;
    let expires_at: Option<i64> = col(row, "expires_at")?;
    Ok(Stack {
        id: StackId(col(row, "id")?),
        slug: parsed(StackSlug::parse(&slug).ok(), "stack slug")?,
        name: col(row, "name")?,
        environment: col(row, "environment")?,
        team_id: team_id.map(TeamId),
        tier: col(row, "tier")?,
        status: parsed(StackStatus::parse(&status), "stack status")?,
        error: col(row, "error")?,
        env_version: col(row, "env_version")?,
        release: col(row, "release")?,
        op_generation: col(row, "op_generation")?,
        created_at: Millis(col(row, "created_at")?),
        updated_at: Millis(col(row, "updated_at")?),
        expires_at: expires_at.map(Millis),
    })
}

/// A release row selected as `version, status, env_version, created_at`.
fn release_info_from_row(row: &PgRow) -> Result<ReleaseInfo> {
    let status: String = col(row, "status")?;
    Ok(ReleaseInfo {
        version: col(row, "version")?,
        status: parsed(ReleaseStatus::parse(&status), "release status")?,
        env_version: col(row, "env_version")?,
        created_at: Millis(col(row, "created_at")?),
    })
}

/// A release row with its spec selected as `spec::text AS spec`.
pub(crate) fn release_from_row(row: &PgRow) -> Result<Release> {
    Ok(Release {
        info: release_info_from_row(row)?,
        services: json_col(row, "spec")?,
    })
}

/// The services of a `get_stack` row, aggregated into parallel arrays in position order.
fn services_from_row(row: &PgRow) -> Result<Vec<Service>> {
    let names: Option<Vec<String>> = col(row, "svc_names")?;
    let Some(names) = names else {
        return Ok(Vec::new());
    };
    let statuses: Vec<String> = col(row, "svc_statuses")?;
    let exposes: Vec<bool> = col(row, "svc_exposes")?;
    let ports: Vec<i32> = col(row, "svc_ports")?;
    let urls: Vec<Option<String>> = col(row, "svc_urls")?;
    let errors: Vec<Option<String>> = col(row, "svc_errors")?;
    let n = names.len();
    if [
        statuses.len(),
        exposes.len(),
        ports.len(),
        urls.len(),
        errors.len(),
    ]
    .iter()
    .any(|&l| l != n)
    {
        return Err(corrupt("the service columns disagree in length"));
    }
    let mut out = Vec::with_capacity(n);
    for (((((name, status), expose), port), url), error) in names
        .into_iter()
        .zip(statuses)
        .zip(exposes)
        .zip(ports)
        .zip(urls)
        .zip(errors)
    {
        out.push(Service {
            name: parsed(ServiceName::parse(&name).ok(), "service name")?,
            status: parsed(ServiceStatus::parse(&status), "service status")?,
            expose,
            port: parsed(u16::try_from(port).ok(), "service port")?,
            url,
            error,
        });
    }
    Ok(out)
}

/// The `team_id` a caller may see: `IS NOT DISTINCT FROM` makes one statement serve team
/// callers (`= 7`) and anonymous ones (`IS NULL`).
pub(crate) fn access_team(access: Access) -> Option<i64> {
    match access {
        Access::Anonymous => None,
        Access::Team(t) => Some(t.0),
    }
}

/// The stack `slug` as `access` may see it, locked `FOR UPDATE` in the caller's transaction.
pub(crate) async fn lock_stack_by_slug(
    conn: &mut PgConnection,
    access: Access,
    slug: &StackSlug,
) -> Result<Option<Stack>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        stack_cols!(),
        " FROM stacks s WHERE s.slug = $1 AND s.team_id IS NOT DISTINCT FROM $2 FOR UPDATE"
    ))
    .bind(slug.as_str())
    .bind(access_team(access))
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(stack_from_row).transpose()
}

/// Makes the stack's service rows match `services` (a release's list): rows of services not in
/// it are deleted, the others inserted or updated in its order with `status`, its port and
/// expose flag, and no error. A kept row keeps its URL: the release that serves it now keeps
/// serving until the runtime reports the new one. The caller holds the stack's row lock.
pub(crate) async fn sync_services(
    conn: &mut PgConnection,
    stack: StackId,
    services: &[ReleaseService],
    status: ServiceStatus,
    now: Millis,
) -> Result<()> {
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let exposes: Vec<bool> = services.iter().map(|s| s.expose).collect();
    let ports: Vec<i32> = services.iter().map(|s| i32::from(s.port)).collect();
    // The DELETE and the upsert touch disjoint rows (names not in the list / in it).
    sqlx::query(
        "WITH del AS ( \
           DELETE FROM services WHERE stack_id = $1 AND name <> ALL($2::text[])) \
         INSERT INTO services (stack_id, name, position, status, expose, port, url, error, updated_at) \
         SELECT $1, v.name, (v.ord - 1)::int, $5, v.expose, v.port, NULL, NULL, $6 \
         FROM UNNEST($2::text[], $3::bool[], $4::int[]) WITH ORDINALITY AS v(name, expose, port, ord) \
         ON CONFLICT (stack_id, name) DO UPDATE SET position = EXCLUDED.position, \
           status = EXCLUDED.status, expose = EXCLUDED.expose, port = EXCLUDED.port, \
           error = NULL, updated_at = EXCLUDED.updated_at",
    )
    .bind(stack.0)
    .bind(&names)
    .bind(&exposes)
    .bind(&ports)
    .bind(status.as_str())
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn create_stack_impl(
        &self,
        new: NewStack,
    ) -> std::result::Result<Stack, CreateStackError> {
        let now = new.ctx.now;
        let mut tx = self.begin().await?;
        // Lock order: the team row first (only for a capped team), then nothing else: every
        // other row written here is new. The lock serialises a capped team's creates, and the
        // count runs in the INSERT statement below, whose snapshot is taken after the lock was
        // granted, so it sees every stack a concurrent creator committed before us.
        let mut max = None;
        if let Some(team) = new.team_id {
            let cap: Option<Option<i64>> =
                sqlx::query_scalar("SELECT max_stacks FROM teams WHERE id = $1")
                    .bind(team.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(Error::from)?;
            let Some(cap) = cap else {
                return Err(StoreError::Corrupt("the stack's team does not exist".into()).into());
            };
            if cap.is_some() {
                // Read again under the lock: the cap itself may have changed.
                max = sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT max_stacks FROM teams WHERE id = $1 FOR UPDATE",
                )
                .bind(team.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::from)?;
            }
        }

        let names: Vec<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
        let exposes: Vec<bool> = new.services.iter().map(|s| s.expose).collect();
        let ports: Vec<i32> = new.services.iter().map(|s| i32::from(s.port)).collect();
        let digests: Vec<&str> = new.artifacts.iter().map(|(d, _)| d.as_str()).collect();
        let sizes: Vec<i64> = new.artifacts.iter().map(|(_, s)| *s).collect();
        let spec = to_json_text(&new.services)?;
        let idem = new.idempotency.as_ref();
        let metadata = serde_json::json!({
            "name": new.name,
            "env": new.environment,
            "tier": new.tier,
            "services": names,
            "release": 1,
        });
        // One statement writes the whole stack: every CTE hangs off `s`, so when the cap
        // check leaves `s` empty nothing at all is written. Services keep the order of
        // `new.services` (WITH ORDINALITY gives the position).
        let row = sqlx::query(concat!(
            "WITH s AS ( \
               INSERT INTO stacks (slug, name, environment, team_id, fingerprint, tier, status, error, \
                 env, env_version, env_updated_at, release, op_generation, manifest, created_at, \
                 updated_at, expires_at) \
               SELECT $1, $2, $3, $4, $5, $6, 'building', NULL, '{}', 0, $7, 1, 1, $8, $7, $7, $9 \
               WHERE $10::bigint IS NULL OR (SELECT COUNT(*) FROM stacks \
                 WHERE team_id = $4 AND status <> 'deleting') < $10 \
               RETURNING *), \
             svc AS ( \
               INSERT INTO services (stack_id, name, position, status, expose, port, url, error, updated_at) \
               SELECT s.id, v.name, (v.ord - 1)::int, 'building', v.expose, v.port, NULL, NULL, $7 \
               FROM s, UNNEST($11::text[], $12::bool[], $13::int[]) WITH ORDINALITY AS v(name, expose, port, ord)), \
             art AS ( \
               INSERT INTO artifacts (digest, size, created_at) \
               SELECT a.digest, a.size, $7 FROM UNNEST($14::text[], $15::bigint[]) AS a(digest, size) \
               WHERE EXISTS (SELECT 1 FROM s) \
               ON CONFLICT (digest) DO NOTHING), \
             rel AS ( \
               INSERT INTO releases (stack_id, version, status, env_version, spec, env, created_at) \
               SELECT s.id, 1, 'pending', 0, $16::jsonb, '{}', $7 FROM s), \
             ver AS ( \
               INSERT INTO env_versions (stack_id, version, created_at, actor, set_keys, deleted_keys, changes, snapshot) \
               SELECT s.id, 0, $7, $17, '[]', '[]', '{}', '{}' FROM s), \
             job AS ( \
               INSERT INTO jobs (stack_id, stack_slug, kind, state, generation, release, attempts, \
                 run_after, created_at, updated_at) \
               SELECT s.id, s.slug, 'deploy', 'queued', 1, 1, 0, $7, $7, $7 FROM s), \
             aud AS ( \
               INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
               SELECT $7, s.team_id, $17, 'stack.created', s.slug, $18, $19 FROM s), \
             ev AS ( \
               INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) \
               SELECT s.id, s.slug, e.kind, e.data::jsonb, $7 FROM s, (VALUES \
                 (1, 'stack.status', '{\"status\":\"building\",\"error\":null}'), \
                 (2, 'release.created', '{\"release\":1,\"env_version\":0}')) AS e(ord, kind, data) \
               ORDER BY e.ord), \
             idem AS ( \
               INSERT INTO idempotency_keys (scope, key, request_hash, state, status, body, created_at, expires_at) \
               SELECT $20, $21, '', 'done', $22, $23, $7, $24 FROM s WHERE $20::text IS NOT NULL \
               ON CONFLICT (scope, key) DO UPDATE SET state = 'done', status = EXCLUDED.status, \
                 body = EXCLUDED.body) \
             SELECT ",
            stack_cols!(),
            " FROM s"
        ))
        .bind(new.slug.as_str())
        .bind(&new.name)
        .bind(&new.environment)
        .bind(new.team_id.map(|t| t.0))
        .bind(new.fingerprint.as_deref())
        .bind(&new.tier)
        .bind(now.0)
        .bind(&new.manifest)
        .bind(new.expires_at.map(|t| t.0))
        .bind(max)
        .bind(&names)
        .bind(&exposes)
        .bind(&ports)
        .bind(&digests)
        .bind(&sizes)
        .bind(&spec)
        .bind(&new.ctx.actor.0)
        .bind(new.ctx.request_id.as_deref())
        .bind(metadata)
        .bind(idem.map(|i| i.scope.as_str()))
        .bind(idem.map(|i| i.key.as_str()))
        .bind(idem.map(|i| i32::from(i.status)))
        .bind(idem.map(|i| i.body.as_str()))
        .bind(now.saturating_add_ms(crate::millis(IDEMPOTENCY_TTL)).0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| {
            let e = Error::from(e);
            if is_unique_violation(&e, "stacks_slug_key") {
                StoreError::Conflict("stack").into()
            } else {
                e
            }
        })?;
        let Some(row) = row else {
            tx.rollback().await.map_err(Error::from)?;
            // `s` is empty only when the cap check failed, which needs a cap.
            return Err(CreateStackError::LimitReached {
                max: max.unwrap_or_default(),
            });
        };
        let stack = stack_from_row(&row)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(stack)
    }

    pub(crate) async fn get_stack_impl(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> Result<Option<StackDetail>> {
        let (slug, team) = (slug.as_str(), access_team(access));
        // One statement, one snapshot: the stack, its services (aggregated in position order)
        // and its current release.
        let row = self
            .read(|mut c| async move {
                Ok(sqlx::query(concat!(
                    "SELECT ",
                    stack_cols!(),
                    ", r.version, r.status AS r_status, r.env_version AS r_env_version, \
                       r.created_at AS r_created_at, \
                       v.names AS svc_names, v.statuses AS svc_statuses, v.exposes AS svc_exposes, \
                       v.ports AS svc_ports, v.urls AS svc_urls, v.errors AS svc_errors \
                     FROM stacks s \
                     LEFT JOIN releases r ON r.stack_id = s.id AND r.version = s.release \
                     LEFT JOIN LATERAL ( \
                       SELECT array_agg(name ORDER BY position) AS names, \
                              array_agg(status ORDER BY position) AS statuses, \
                              array_agg(expose ORDER BY position) AS exposes, \
                              array_agg(port ORDER BY position) AS ports, \
                              array_agg(url ORDER BY position) AS urls, \
                              array_agg(error ORDER BY position) AS errors \
                       FROM services WHERE stack_id = s.id) v ON true \
                     WHERE s.slug = $1 AND s.team_id IS NOT DISTINCT FROM $2"
                ))
                .bind(slug)
                .bind(team)
                .fetch_optional(&mut *c)
                .await?)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stack = stack_from_row(&row)?;
        let version: Option<i64> = col(&row, "version")?;
        let release = match version {
            None => None,
            Some(version) => {
                let status: String = col(&row, "r_status")?;
                Some(ReleaseInfo {
                    version,
                    status: parsed(ReleaseStatus::parse(&status), "release status")?,
                    env_version: col(&row, "r_env_version")?,
                    created_at: Millis(col(&row, "r_created_at")?),
                })
            }
        };
        Ok(Some(StackDetail {
            services: services_from_row(&row)?,
            stack,
            release,
        }))
    }

    pub(crate) async fn list_stacks_impl(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Stack>> {
        let limit = limit.max(1);
        let (before_at, before_id) = parse_stack_cursor(cursor);
        // One statement, so the page and `total` agree; the extra row tells whether another
        // page exists.
        let (rows, total) = self
            .read(|mut c| async move {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    stack_cols!(),
                    ", (SELECT COUNT(*) FROM stacks WHERE team_id = $1) AS total \
                     FROM stacks s \
                     WHERE s.team_id = $1 AND (s.created_at, s.id) < ($2, $3) \
                     ORDER BY s.created_at DESC, s.id DESC LIMIT $4"
                ))
                .bind(team.0)
                .bind(before_at)
                .bind(before_id)
                .bind(limit.saturating_add(1))
                .fetch_all(&mut *c)
                .await?;
                let total: i64 = match rows.first() {
                    Some(r) => col(r, "total")?,
                    None => {
                        sqlx::query_scalar("SELECT COUNT(*) FROM stacks WHERE team_id = $1")
                            .bind(team.0)
                            .fetch_one(&mut *c)
                            .await?
                    }
                };
                Ok((rows, total))
            })
            .await?;
        let items = rows
            .iter()
            .map(stack_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, limit, total, stack_cursor))
    }

    pub(crate) async fn count_stacks_impl(&self, team: TeamId) -> Result<i64> {
        self.read(|mut c| async move {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM stacks WHERE team_id = $1 AND status <> 'deleting'",
            )
            .bind(team.0)
            .fetch_one(&mut *c)
            .await?)
        })
        .await
    }

    pub(crate) async fn request_deletion_impl(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> Result<Option<Stack>> {
        // Lock order: the stack row, then its queued job rows (taken by the UPDATE). The
        // `deleting` decision, the generation bump, superseding queued jobs, the teardown job
        // and the audit row are all made under the stack lock, so no env write or second
        // deletion can interleave.
        let mut tx = self.begin().await?;
        let Some(stack) = lock_stack_by_slug(&mut tx, access, slug).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        if stack.status == StackStatus::Deleting {
            tx.rollback().await?;
            return Ok(Some(stack));
        }
        // The teardown carries the release it tears down, so deploy_context works for it too.
        // The supersede UPDATE runs on the statement's snapshot, so it cannot see (and
        // supersede) the teardown inserted next to it.
        let row = sqlx::query(concat!(
            "WITH s AS ( \
               UPDATE stacks SET status = 'deleting', op_generation = op_generation + 1, updated_at = $2 \
               WHERE id = $1 RETURNING *), \
             sup AS ( \
               UPDATE jobs SET state = 'superseded', updated_at = $2 \
               WHERE stack_id = $1 AND state = 'queued'), \
             job AS ( \
               INSERT INTO jobs (stack_id, stack_slug, kind, state, generation, release, attempts, \
                 run_after, created_at, updated_at) \
               SELECT s.id, s.slug, 'teardown', 'queued', s.op_generation, s.release, 0, $2, $2, $2 \
               FROM s), \
             aud AS ( \
               INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
               SELECT $2, s.team_id, $3, 'stack.deletion_requested', s.slug, $4, $5 FROM s), \
             ev AS ( \
               INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) \
               SELECT s.id, s.slug, 'stack.status', \
                 jsonb_build_object('status', s.status, 'error', s.error), $2 FROM s) \
             SELECT ",
            stack_cols!(),
            " FROM s"
        ))
        .bind(stack.id.0)
        .bind(ctx.now.0)
        .bind(&ctx.actor.0)
        .bind(ctx.request_id.as_deref())
        .bind(serde_json::json!({ "previous_status": stack.status.as_str() }))
        .fetch_one(&mut *tx)
        .await?;
        let updated = stack_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(updated))
    }

    pub(crate) async fn list_releases_impl(&self, stack: StackId) -> Result<Vec<Release>> {
        let rows = self
            .read(|mut c| async move {
                Ok(sqlx::query(
                    "SELECT version, status, env_version, created_at, spec::text AS spec \
                     FROM releases WHERE stack_id = $1 ORDER BY version DESC",
                )
                .bind(stack.0)
                .fetch_all(&mut *c)
                .await?)
            })
            .await?;
        rows.iter().map(release_from_row).collect()
    }
}
