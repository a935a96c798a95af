//! New releases of existing stacks (redeploys) and the live releases a restarted runtime brings
//! back up.

use crate::PgStore;
use crate::error::{Error, Result, col, corrupt, json_col, to_json_text};
use crate::events::{self, Event};
use crate::jobs::release_with_env;
use crate::stacks::{lock_stack_by_slug, stack_cols, stack_from_row, sync_services};
use stackyard_core::env::EnvMap;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::*;
use stackyard_core::store::{IDEMPOTENCY_TTL, NewRelease, ReleaseError};

impl From<Error> for ReleaseError {
    fn from(e: Error) -> Self {
        ReleaseError::Store(e.into())
    }
}

impl PgStore {
    pub(crate) async fn create_release_impl(
        &self,
        access: Access,
        slug: &StackSlug,
        new: NewRelease,
    ) -> std::result::Result<(Stack, ReleaseInfo), ReleaseError> {
        let now = new.ctx.now;
        // Lock order: the stack row, then its job rows (superseded, inserted), then rows that
        // hang off the stack (releases, services) and the idempotency record. The `deleting`
        // decision, the release (with the env map of this moment), the generation bump and the
        // events are all made under the stack lock, so no deletion or env write can land
        // between them, and event ids follow commit order.
        let mut tx = self.begin().await?;
        let Some(stack) = lock_stack_by_slug(&mut tx, access, slug).await? else {
            tx.rollback().await.map_err(Error::from)?;
            return Err(ReleaseError::NotFound);
        };
        if stack.status == StackStatus::Deleting {
            tx.rollback().await.map_err(Error::from)?;
            return Err(ReleaseError::Deleting);
        }
        let services = match new.services {
            Some(services) => services,
            None => {
                let row = sqlx::query(
                    "SELECT spec::text AS spec FROM releases WHERE stack_id = $1 AND version = $2",
                )
                .bind(stack.id.0)
                .bind(stack.release)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::from)?;
                let Some(row) = row else {
                    return Err(corrupt("the stack's newest release does not exist").into());
                };
                json_col::<Vec<ReleaseService>>(&row, "spec")?
            }
        };
        let spec = to_json_text(&services)?;
        let version = stack.release + 1;

        // The stack and its jobs in one statement. The supersede UPDATE runs on the
        // statement's snapshot, so it cannot see (and supersede) the job inserted next to it.
        let row = sqlx::query(concat!(
            "WITH s AS ( \
               UPDATE stacks SET release = $2, op_generation = op_generation + 1, \
                 status = 'building', error = NULL, updated_at = $3, \
                 manifest = COALESCE($4, manifest) \
               WHERE id = $1 RETURNING *), \
             sup AS ( \
               UPDATE jobs SET state = 'superseded', updated_at = $3 \
               WHERE stack_id = $1 AND state = 'queued'), \
             job AS ( \
               INSERT INTO jobs (stack_id, stack_slug, kind, state, generation, release, attempts, \
                 run_after, created_at, updated_at) \
               SELECT s.id, s.slug, 'deploy', 'queued', s.op_generation, $2, 0, $3, $3, $3 FROM s) \
             SELECT ",
            stack_cols!(),
            " FROM s"
        ))
        .bind(stack.id.0)
        .bind(version)
        .bind(now.0)
        .bind(new.manifest.as_deref())
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::from)?;
        let updated = stack_from_row(&row)?;

        // Older releases still pending can never go live now: their deploys were superseded
        // above or belong to a generation that no longer owns the stack. The new release
        // copies the env map inside the database (it is never decoded here); the supersede
        // runs on the statement's snapshot, which does not hold the new release. Artifacts go
        // in digest order, so two redeploys sharing new digests wait on them in one order.
        let digests: Vec<&str> = new.artifacts.iter().map(|(d, _)| d.as_str()).collect();
        let sizes: Vec<i64> = new.artifacts.iter().map(|(_, s)| *s).collect();
        let idem = new.idempotency.as_ref();
        let info = ReleaseInfo {
            version,
            status: ReleaseStatus::Pending,
            env_version: updated.env_version,
            created_at: now,
        };
        let body = idem.map(|_| (new.render)(&updated.slug, &info, &new.note));
        let mut superseded: Vec<i64> = sqlx::query_scalar(
            "WITH rel AS ( \
               INSERT INTO releases (stack_id, version, status, env_version, spec, env, created_at) \
               SELECT id, $2, 'pending', env_version, $3::jsonb, env, $4 FROM stacks WHERE id = $1), \
             art AS ( \
               INSERT INTO artifacts (digest, size, created_at) \
               SELECT a.digest, a.size, $4 FROM UNNEST($5::text[], $6::bigint[]) AS a(digest, size) \
               ORDER BY a.digest \
               ON CONFLICT (digest) DO NOTHING), \
             aud AS ( \
               INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
               VALUES ($4, $7, $8, 'stack.redeploy_requested', $9, $10, $11)), \
             idem AS ( \
               INSERT INTO idempotency_keys (scope, key, request_hash, state, status, body, created_at, expires_at) \
               SELECT $12, $13, '', 'done', $14, $15, $4, $16 WHERE $12::text IS NOT NULL \
               ON CONFLICT (scope, key) DO UPDATE SET state = 'done', status = EXCLUDED.status, \
                 body = EXCLUDED.body) \
             UPDATE releases SET status = 'superseded' \
             WHERE stack_id = $1 AND status = 'pending' RETURNING version",
        )
        .bind(stack.id.0)
        .bind(version)
        .bind(&spec)
        .bind(now.0)
        .bind(&digests)
        .bind(&sizes)
        .bind(updated.team_id.map(|t| t.0))
        .bind(&new.ctx.actor.0)
        .bind(updated.slug.as_str())
        .bind(new.ctx.request_id.as_deref())
        .bind(serde_json::json!({ "release": version, "from_release": stack.release }))
        .bind(idem.map(|i| i.scope.as_str()))
        .bind(idem.map(|i| i.key.as_str()))
        .bind(idem.map(|_| 202i32))
        .bind(body.as_deref())
        .bind(now.saturating_add_ms(crate::millis(IDEMPOTENCY_TTL)).0)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::from)?;
        superseded.sort_unstable();
        sync_services(&mut tx, stack.id, &services, ServiceStatus::Building, now).await?;
        let mut out: Vec<Event> = superseded
            .into_iter()
            .map(|v| Event::release_status(v, ReleaseStatus::Superseded, None))
            .collect();
        out.push(Event::release_created(version, updated.env_version));
        out.push(Event::stack_status(StackStatus::Building, None));
        events::insert(&mut tx, updated.id, updated.slug.as_str(), now, &out).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok((updated, info))
    }

    pub(crate) async fn running_stacks_impl(&self) -> Result<Vec<(Stack, Release, EnvMap)>> {
        // One statement, one snapshot. At most one release of a stack is live (finish_deploy
        // supersedes the others in the transaction that makes one live).
        let rows = self
            .read(|mut c| async move {
                Ok(sqlx::query(concat!(
                    "SELECT ",
                    stack_cols!(),
                    ", r.version AS r_version, r.status AS r_status, \
                       r.env_version AS r_env_version, r.created_at AS r_created_at, \
                       r.spec::text AS spec, r.env::text AS env \
                     FROM stacks s JOIN releases r ON r.stack_id = s.id AND r.status = 'live' \
                     WHERE s.status <> 'deleting' ORDER BY s.id"
                ))
                .fetch_all(&mut *c)
                .await?)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let (release, env) = release_with_env(row, col(row, "r_version")?)?;
            out.push((stack_from_row(row)?, release, env));
        }
        Ok(out)
    }
}
