//! Stacks: creation (with the team cap), lookup filtered by `Access`, listing, deletion
//! requests, releases. Row decoders shared with `jobs` and `env` live here.

use crate::audit::{self, AuditRow};
use crate::error::{col, db_err, is_unique_violation, json_col, parsed};
use crate::events::{self, Event};
use crate::{SqliteStore, idempotency};
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::*;
use stackyard_core::store::{
    CreateStackError, NewStack, StoreError, parse_stack_cursor, stack_cursor,
};
use stackyard_core::time::Millis;

/// The columns `stack_from_row` reads, for `concat!` into static SQL.
macro_rules! stack_cols {
    () => {
        "id, slug, name, environment, team_id, tier, status, error, env_version, release, \
         op_generation, created_at, updated_at, expires_at"
    };
}
pub(crate) use stack_cols;

pub(crate) fn stack_from_row(row: &SqliteRow) -> Result<Stack, StoreError> {
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

fn service_from_row(row: &SqliteRow) -> Result<Service, StoreError> {
    let name: String = col(row, "name")?;
    let status: String = col(row, "status")?;
    let port: i64 = col(row, "port")?;
    Ok(Service {
        name: parsed(ServiceName::parse(&name).ok(), "service name")?,
        status: parsed(ServiceStatus::parse(&status), "service status")?,
        expose: col(row, "expose")?,
        port: parsed(u16::try_from(port).ok(), "service port")?,
        url: col(row, "url")?,
        error: col(row, "error")?,
    })
}

fn release_info_from_row(row: &SqliteRow) -> Result<ReleaseInfo, StoreError> {
    let status: String = col(row, "status")?;
    Ok(ReleaseInfo {
        version: col(row, "version")?,
        status: parsed(ReleaseStatus::parse(&status), "release status")?,
        env_version: col(row, "env_version")?,
        created_at: Millis(col(row, "created_at")?),
    })
}

/// A release row with its `spec` column decoded.
pub(crate) fn release_from_row(row: &SqliteRow) -> Result<Release, StoreError> {
    Ok(Release {
        info: release_info_from_row(row)?,
        services: json_col(row, "spec")?,
    })
}

/// The `team_id` predicate of an `Access`: SQLite's `IS` compares NULL with NULL as equal, so
/// one statement serves both team callers (`team_id IS 7`) and anonymous ones (`IS NULL`).
fn access_team(access: Access) -> Option<i64> {
    match access {
        Access::Anonymous => None,
        Access::Team(t) => Some(t.0),
    }
}

/// The stack `slug` as `access` may see it, inside the caller's transaction.
pub(crate) async fn stack_by_slug(
    conn: &mut SqliteConnection,
    access: Access,
    slug: &StackSlug,
) -> Result<Option<Stack>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        stack_cols!(),
        " FROM stacks WHERE slug = $1 AND team_id IS $2"
    ))
    .bind(slug.as_str())
    .bind(access_team(access))
    .fetch_optional(conn)
    .await
    .map_err(db_err)?;
    row.as_ref().map(stack_from_row).transpose()
}

/// The stack with id `id`, inside the caller's transaction.
pub(crate) async fn stack_by_id(
    conn: &mut SqliteConnection,
    id: StackId,
) -> Result<Option<Stack>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        stack_cols!(),
        " FROM stacks WHERE id = $1"
    ))
    .bind(id.0)
    .fetch_optional(conn)
    .await
    .map_err(db_err)?;
    row.as_ref().map(stack_from_row).transpose()
}

/// Makes the stack's service rows match `services` (a release's list): rows of services not in
/// it are deleted, the others inserted or updated in its order with `status`, its port and
/// expose flag, and no error. A kept row keeps its URL: the release that serves it now keeps
/// serving until the runtime reports the new one. Inside the caller's write transaction.
pub(crate) async fn sync_services(
    conn: &mut SqliteConnection,
    stack: StackId,
    services: &[ReleaseService],
    status: ServiceStatus,
    now: Millis,
) -> Result<(), StoreError> {
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let names = serde_json::to_string(&names)
        .map_err(|_| StoreError::Corrupt("service names could not be encoded".into()))?;
    sqlx::query(
        "DELETE FROM services WHERE stack_id = $1 AND name NOT IN (SELECT value FROM json_each($2))",
    )
    .bind(stack.0)
    .bind(names)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    for (position, svc) in services.iter().enumerate() {
        sqlx::query(
            "INSERT INTO services (stack_id, name, position, status, expose, port, url, error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7) \
             ON CONFLICT (stack_id, name) DO UPDATE SET position = excluded.position, \
               status = excluded.status, expose = excluded.expose, port = excluded.port, \
               error = NULL, updated_at = excluded.updated_at",
        )
        .bind(stack.0)
        .bind(svc.name.as_str())
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(status.as_str())
        .bind(svc.expose)
        .bind(i64::from(svc.port))
        .bind(now.0)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// Records `(digest, size)` artifact rows (already-known digests are kept), inside the
/// caller's write transaction.
pub(crate) async fn insert_artifacts(
    conn: &mut SqliteConnection,
    artifacts: &[(String, i64)],
    now: Millis,
) -> Result<(), StoreError> {
    for (digest, size) in artifacts {
        sqlx::query(
            "INSERT INTO artifacts (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(size)
        .bind(now.0)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// Supersedes the stack's queued jobs and queues one `kind` job for `stack`'s (already bumped)
/// operation generation and release, inside the caller's write transaction.
pub(crate) async fn replace_queued_jobs(
    conn: &mut SqliteConnection,
    stack: &Stack,
    kind: JobKind,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE jobs SET state = 'superseded', updated_at = $2 WHERE stack_id = $1 AND state = 'queued'",
    )
    .bind(stack.id.0)
    .bind(now.0)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    sqlx::query(
        "INSERT INTO jobs (stack_id, stack_slug, kind, state, generation, release, attempts, run_after, \
           created_at, updated_at) VALUES ($1, $2, $3, 'queued', $4, $5, 0, $6, $6, $6)",
    )
    .bind(stack.id.0)
    .bind(stack.slug.as_str())
    .bind(kind.as_str())
    .bind(stack.op_generation)
    .bind(stack.release)
    .bind(now.0)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn create_stack_impl(&self, new: NewStack) -> Result<Stack, CreateStackError> {
        let now = new.ctx.now;
        // Write lock first: it serialises creates, so the team-cap count below cannot be raced
        // (SQLite's stand-in for PostgreSQL's `SELECT … FROM teams … FOR UPDATE`).
        let mut tx = self.write_tx().await?;
        if let Some(team) = new.team_id {
            let max: Option<Option<i64>> =
                sqlx::query_scalar("SELECT max_stacks FROM teams WHERE id = $1")
                    .bind(team.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?;
            let Some(max) = max else {
                return Err(StoreError::Corrupt("the stack's team does not exist".into()).into());
            };
            if let Some(max) = max {
                let count: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM stacks WHERE team_id = $1 AND status <> 'deleting'",
                )
                .bind(team.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
                if count >= max {
                    tx.rollback().await.map_err(db_err)?;
                    return Err(CreateStackError::LimitReached { max });
                }
            }
        }

        let row = sqlx::query(concat!(
            "INSERT INTO stacks (slug, name, environment, team_id, fingerprint, tier, status, error, env, \
               env_version, env_updated_at, release, op_generation, manifest, created_at, updated_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'building', NULL, '{}', 0, $7, 1, 1, $8, $7, $7, $9) RETURNING ",
            stack_cols!()
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
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("stack") } else { db_err(e) })?;
        let stack = stack_from_row(&row)?;

        sync_services(
            &mut tx,
            stack.id,
            &new.services,
            ServiceStatus::Building,
            now,
        )
        .await?;
        insert_artifacts(&mut tx, &new.artifacts, now).await?;
        let spec = serde_json::to_string(&new.services)
            .map_err(|_| StoreError::Corrupt("the release spec could not be encoded".into()))?;
        sqlx::query(
            "INSERT INTO releases (stack_id, version, status, env_version, spec, env, created_at) \
             VALUES ($1, 1, 'pending', 0, $2, '{}', $3)",
        )
        .bind(stack.id.0)
        .bind(spec)
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO env_versions (stack_id, version, created_at, actor, set_keys, deleted_keys, changes, snapshot) \
             VALUES ($1, 0, $2, $3, '[]', '[]', '{}', '{}')",
        )
        .bind(stack.id.0)
        .bind(now.0)
        .bind(&new.ctx.actor.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO jobs (stack_id, stack_slug, kind, state, generation, release, attempts, run_after, \
               created_at, updated_at) VALUES ($1, $2, 'deploy', 'queued', 1, 1, 0, $3, $3, $3)",
        )
        .bind(stack.id.0)
        .bind(stack.slug.as_str())
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let services: Vec<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
        audit::insert(
            &mut tx,
            AuditRow {
                at: now,
                team_id: stack.team_id,
                actor: &new.ctx.actor.0,
                kind: "stack.created",
                stack_slug: Some(stack.slug.as_str()),
                request_id: new.ctx.request_id.as_deref(),
                metadata: serde_json::json!({
                    "name": stack.name,
                    "env": stack.environment,
                    "tier": stack.tier,
                    "services": services,
                    "release": 1,
                }),
            },
        )
        .await?;
        events::insert(
            &mut tx,
            stack.id,
            stack.slug.as_str(),
            now,
            &[
                Event::stack_status(StackStatus::Building, None),
                Event::release_created(1, 0),
            ],
        )
        .await?;
        if let Some(idem) = &new.idempotency {
            idempotency::complete(
                &mut tx,
                &idem.scope,
                &idem.key,
                idem.status,
                &idem.body,
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(stack)
    }

    pub(crate) async fn get_stack_impl(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> Result<Option<StackDetail>, StoreError> {
        // Read-only: one snapshot for the stack, its services and its release.
        let mut tx = self.read_tx().await?;
        let Some(stack) = stack_by_slug(&mut tx, access, slug).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT name, status, expose, port, url, error FROM services WHERE stack_id = $1 ORDER BY position",
        )
        .bind(stack.id.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let services = rows
            .iter()
            .map(service_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let release = sqlx::query(
            "SELECT version, status, env_version, created_at FROM releases WHERE stack_id = $1 AND version = $2",
        )
        .bind(stack.id.0)
        .bind(stack.release)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let release = release.as_ref().map(release_info_from_row).transpose()?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(StackDetail {
            stack,
            services,
            release,
        }))
    }

    pub(crate) async fn list_stacks_impl(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Stack>, StoreError> {
        let limit = limit.max(1);
        let (before_at, before_id) = parse_stack_cursor(cursor);
        // Read-only: one snapshot so that `total` and the page agree.
        let mut tx = self.read_tx().await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stacks WHERE team_id = $1")
            .bind(team.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            stack_cols!(),
            " FROM stacks WHERE team_id = $1 AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(team.0)
        .bind(before_at)
        .bind(before_id)
        .bind(limit.saturating_add(1))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let items = rows
            .iter()
            .map(stack_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, total, stack_cursor))
    }

    pub(crate) async fn count_stacks_impl(&self, team: TeamId) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM stacks WHERE team_id = $1 AND status <> 'deleting'",
        )
        .bind(team.0)
        .fetch_one(&self.reader)
        .await
        .map_err(db_err)
    }

    pub(crate) async fn request_deletion_impl(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> Result<Option<Stack>, StoreError> {
        // Write lock before reading the status: the `deleting` decision, the generation bump,
        // superseding queued jobs and the teardown job are one atomic step.
        let mut tx = self.write_tx().await?;
        let Some(stack) = stack_by_slug(&mut tx, access, slug).await? else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(None);
        };
        if stack.status == StackStatus::Deleting {
            tx.rollback().await.map_err(db_err)?;
            return Ok(Some(stack));
        }
        let row = sqlx::query(concat!(
            "UPDATE stacks SET status = 'deleting', op_generation = op_generation + 1, updated_at = $2 \
             WHERE id = $1 RETURNING ",
            stack_cols!()
        ))
        .bind(stack.id.0)
        .bind(ctx.now.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let updated = stack_from_row(&row)?;
        // The teardown carries the release it tears down, so deploy_context works for it too.
        replace_queued_jobs(&mut tx, &updated, JobKind::Teardown, ctx.now).await?;
        audit::insert(
            &mut tx,
            AuditRow {
                at: ctx.now,
                team_id: updated.team_id,
                actor: &ctx.actor.0,
                kind: "stack.deletion_requested",
                stack_slug: Some(updated.slug.as_str()),
                request_id: ctx.request_id.as_deref(),
                metadata: serde_json::json!({ "previous_status": stack.status.as_str() }),
            },
        )
        .await?;
        events::insert(
            &mut tx,
            updated.id,
            updated.slug.as_str(),
            ctx.now,
            &[Event::stack_status(
                StackStatus::Deleting,
                updated.error.as_deref(),
            )],
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(updated))
    }

    pub(crate) async fn list_releases_impl(
        &self,
        stack: StackId,
    ) -> Result<Vec<Release>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, status, env_version, created_at, spec FROM releases \
             WHERE stack_id = $1 ORDER BY version DESC",
        )
        .bind(stack.0)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.iter().map(release_from_row).collect()
    }
}
