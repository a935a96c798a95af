//! New releases of existing stacks (redeploys) and the live releases a restarted runtime brings
//! back up.

use crate::audit::{self, AuditRow};
use crate::error::{col, db_err, json_col, parsed};
use crate::events::{self, Event};
use crate::jobs::release_env;
use crate::stacks::{
    insert_artifacts, replace_queued_jobs, stack_by_slug, stack_cols, stack_from_row, sync_services,
};
use crate::{SqliteStore, idempotency};
use stackyard_core::env::EnvMap;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::*;
use stackyard_core::store::{NewRelease, ReleaseError, StoreError};
use stackyard_core::time::Millis;

impl SqliteStore {
    pub(crate) async fn create_release_impl(
        &self,
        access: Access,
        slug: &StackSlug,
        new: NewRelease,
    ) -> Result<(Stack, ReleaseInfo), ReleaseError> {
        let now = new.ctx.now;
        // Write lock before reading the status: the `deleting` decision, the release (with the
        // env map of this moment), the generation bump, the job swap and the events are one
        // atomic step, so no deletion or env write can land between them.
        let mut tx = self.write_tx().await?;
        let Some(stack) = stack_by_slug(&mut tx, access, slug).await? else {
            tx.rollback().await.map_err(db_err)?;
            return Err(ReleaseError::NotFound);
        };
        if stack.status == StackStatus::Deleting {
            tx.rollback().await.map_err(db_err)?;
            return Err(ReleaseError::Deleting);
        }
        let services = match new.services {
            Some(services) => services,
            None => {
                let row =
                    sqlx::query("SELECT spec FROM releases WHERE stack_id = $1 AND version = $2")
                        .bind(stack.id.0)
                        .bind(stack.release)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                let Some(row) = row else {
                    return Err(StoreError::Corrupt(
                        "the stack's newest release does not exist".into(),
                    )
                    .into());
                };
                json_col::<Vec<ReleaseService>>(&row, "spec")?
            }
        };
        let spec = serde_json::to_string(&services)
            .map_err(|_| StoreError::Corrupt("the release spec could not be encoded".into()))?;
        let version = stack.release + 1;

        let row = sqlx::query(concat!(
            "UPDATE stacks SET release = $2, op_generation = op_generation + 1, status = 'building', \
               error = NULL, updated_at = $3, manifest = COALESCE($4, manifest) \
             WHERE id = $1 RETURNING ",
            stack_cols!()
        ))
        .bind(stack.id.0)
        .bind(version)
        .bind(now.0)
        .bind(new.manifest.as_deref())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let updated = stack_from_row(&row)?;
        replace_queued_jobs(&mut tx, &updated, JobKind::Deploy, now).await?;
        // Older releases still pending can never go live now: their deploys were superseded
        // above or belong to a generation that no longer owns the stack.
        let mut superseded: Vec<i64> = sqlx::query_scalar(
            "UPDATE releases SET status = 'superseded' WHERE stack_id = $1 AND status = 'pending' \
             RETURNING version",
        )
        .bind(stack.id.0)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        superseded.sort_unstable();
        // The env map is copied inside the database: it is never decoded here.
        sqlx::query(
            "INSERT INTO releases (stack_id, version, status, env_version, spec, env, created_at) \
             SELECT id, $2, 'pending', env_version, $3, env, $4 FROM stacks WHERE id = $1",
        )
        .bind(stack.id.0)
        .bind(version)
        .bind(&spec)
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sync_services(&mut tx, stack.id, &services, ServiceStatus::Building, now).await?;
        insert_artifacts(&mut tx, &new.artifacts, now).await?;
        audit::insert(
            &mut tx,
            AuditRow {
                at: now,
                team_id: updated.team_id,
                actor: &new.ctx.actor.0,
                kind: "stack.redeploy_requested",
                stack_slug: Some(updated.slug.as_str()),
                request_id: new.ctx.request_id.as_deref(),
                metadata: serde_json::json!({ "release": version, "from_release": stack.release }),
            },
        )
        .await?;
        let mut out: Vec<Event> = superseded
            .into_iter()
            .map(|v| Event::release_status(v, ReleaseStatus::Superseded, None))
            .collect();
        out.push(Event::release_created(version, updated.env_version));
        out.push(Event::stack_status(StackStatus::Building, None));
        events::insert(&mut tx, updated.id, updated.slug.as_str(), now, &out).await?;
        let info = ReleaseInfo {
            version,
            status: ReleaseStatus::Pending,
            env_version: updated.env_version,
            created_at: now,
        };
        if let Some(idem) = &new.idempotency {
            let body = (new.render)(&updated.slug, &info, &new.note);
            idempotency::complete(&mut tx, &idem.scope, &idem.key, 202, &body, now).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok((updated, info))
    }

    pub(crate) async fn running_stacks_impl(
        &self,
    ) -> Result<Vec<(Stack, Release, EnvMap)>, StoreError> {
        // One statement, one snapshot. At most one release of a stack is live (finish_deploy
        // supersedes the others in the transaction that makes one live).
        let rows = sqlx::query(
            "SELECT s.id, s.slug, s.name, s.environment, s.team_id, s.tier, s.status, s.error, \
               s.env_version, s.release, s.op_generation, s.created_at, s.updated_at, s.expires_at, \
               r.version AS r_version, r.status AS r_status, r.env_version AS r_env_version, \
               r.created_at AS r_created_at, r.spec AS spec, r.env AS env \
             FROM stacks s JOIN releases r ON r.stack_id = s.id AND r.status = 'live' \
             WHERE s.status <> 'deleting' ORDER BY s.id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let status: String = col(row, "r_status")?;
            let release = Release {
                info: ReleaseInfo {
                    version: col(row, "r_version")?,
                    status: parsed(ReleaseStatus::parse(&status), "release status")?,
                    env_version: col(row, "r_env_version")?,
                    created_at: Millis(col(row, "r_created_at")?),
                },
                services: json_col(row, "spec")?,
            };
            out.push((stack_from_row(row)?, release, release_env(row)?));
        }
        Ok(out)
    }
}
