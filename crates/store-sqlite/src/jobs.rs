//! Durable jobs (deploy, teardown): claiming with a lease, fencing every later write by the
//! claim, and the stack/release/service transitions a finished job makes.
//!
//! Fencing: each write a worker makes after claiming carries `WHERE id = $ AND claim = $ AND
//! state = 'running'`; when that matches nothing the claim was lost (lease expired and the job
//! was claimed again) and the whole transaction is rolled back.

use crate::audit::{self, AuditRow};
use crate::error::{col, db_err, is_unique_violation, json_col, parsed};
use crate::events::{self, Event};
use crate::stacks::{release_from_row, stack_by_id, sync_services};
use crate::{SqliteStore, millis};
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug, random_hex};
use stackyard_core::model::*;
use stackyard_core::store::{DeployResult, StoreError};
use stackyard_core::time::Millis;
use std::time::Duration;

/// Writes a job-driven audit row: the server itself is the actor, no request is behind it.
async fn audit_job(
    conn: &mut SqliteConnection,
    head: &StackHead,
    now: Millis,
    kind: &str,
    metadata: serde_json::Value,
) -> Result<(), StoreError> {
    audit::insert(
        conn,
        AuditRow {
            at: now,
            team_id: head.team_id,
            actor: &Actor::system().0,
            kind,
            stack_slug: Some(&head.slug),
            request_id: None,
            metadata,
        },
    )
    .await
}

/// The `service.status` event of a service row (`name, status, url, error`).
fn service_event(row: &SqliteRow) -> Result<Event, StoreError> {
    let name: String = col(row, "name")?;
    let status: String = col(row, "status")?;
    let url: Option<String> = col(row, "url")?;
    let error: Option<String> = col(row, "error")?;
    Ok(Event::service_status(
        &name,
        &status,
        url.as_deref(),
        error.as_deref(),
    ))
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let slug: String = col(row, "stack_slug")?;
    let kind: String = col(row, "kind")?;
    let claim: Option<String> = col(row, "claim")?;
    Ok(Job {
        id: col(row, "id")?,
        stack_id: StackId(col(row, "stack_id")?),
        slug: parsed(StackSlug::parse(&slug).ok(), "job stack slug")?,
        kind: parsed(JobKind::parse(&kind), "job kind")?,
        generation: col(row, "generation")?,
        release: col(row, "release")?,
        attempts: col(row, "attempts")?,
        claim: parsed(claim, "job claim")?,
    })
}

/// Closes a fenced job with `state`; false when the claim was lost.
async fn close_job(
    conn: &mut SqliteConnection,
    job: &Job,
    state: JobState,
    now: Millis,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE jobs SET state = $3, lease_until = NULL, updated_at = $4 \
         WHERE id = $1 AND claim = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(&job.claim)
    .bind(state.as_str())
    .bind(now.0)
    .execute(conn)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(n > 0)
}

/// The stack's generation, status, error, team and slug, if it still exists.
struct StackHead {
    id: StackId,
    generation: i64,
    status: String,
    error: Option<String>,
    team_id: Option<TeamId>,
    slug: String,
}

async fn stack_head(
    conn: &mut SqliteConnection,
    stack: StackId,
) -> Result<Option<StackHead>, StoreError> {
    let row =
        sqlx::query("SELECT op_generation, status, error, team_id, slug FROM stacks WHERE id = $1")
            .bind(stack.0)
            .fetch_optional(conn)
            .await
            .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let team_id: Option<i64> = col(&row, "team_id")?;
    Ok(Some(StackHead {
        id: stack,
        generation: col(&row, "op_generation")?,
        status: col(&row, "status")?,
        error: col(&row, "error")?,
        team_id: team_id.map(TeamId),
        slug: col(&row, "slug")?,
    }))
}

/// A current deploy that failed (the runtime said so, or the worker gave up). Caller holds the
/// write lock, has closed the job and checked the generation.
async fn end_failed_deploy(
    conn: &mut SqliteConnection,
    job: &Job,
    head: &StackHead,
    error: Option<&str>,
    now: Millis,
) -> Result<(), StoreError> {
    let live: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM releases WHERE stack_id = $1 AND status = 'live' AND version <> $2 \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(head.id.0)
    .bind(job.release)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    sqlx::query("UPDATE releases SET status = 'failed' WHERE stack_id = $1 AND version = $2")
        .bind(head.id.0)
        .bind(job.release)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    match live {
        Some(live) => keep_serving(conn, job, head, live, error, now).await,
        None => fail_stack(conn, job, head, error, now).await,
    }
}

/// Nothing else is live: the stack and its unfinished services are failed, with audit
/// `stack.deploy_failed`.
async fn fail_stack(
    conn: &mut SqliteConnection,
    job: &Job,
    head: &StackHead,
    error: Option<&str>,
    now: Millis,
) -> Result<(), StoreError> {
    // Only rows that change: unfinished services, and failed ones still without an error.
    let rows = sqlx::query(
        "UPDATE services SET status = 'failed', error = COALESCE(error, $2), updated_at = $3 \
         WHERE stack_id = $1 AND status <> 'healthy' \
           AND (status <> 'failed' OR (error IS NULL AND $2 IS NOT NULL)) \
         RETURNING position, name, status, url, error",
    )
    .bind(head.id.0)
    .bind(error)
    .bind(now.0)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let mut changed = Vec::with_capacity(rows.len());
    for row in &rows {
        changed.push((col::<i64>(row, "position")?, service_event(row)?));
    }
    changed.sort_by_key(|(position, _)| *position);
    sqlx::query("UPDATE stacks SET status = 'failed', error = $2, updated_at = $3 WHERE id = $1")
        .bind(head.id.0)
        .bind(error)
        .bind(now.0)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    audit_job(
        conn,
        head,
        now,
        "stack.deploy_failed",
        serde_json::json!({ "release": job.release, "error": error }),
    )
    .await?;
    let mut out = vec![Event::release_status(
        job.release,
        ReleaseStatus::Failed,
        error,
    )];
    out.extend(changed.into_iter().map(|(_, e)| e));
    out.push(Event::stack_status(StackStatus::Failed, error));
    events::insert(conn, head.id, &head.slug, now, &out).await
}

/// A rolling redeploy failed while release `live` still serves (the runtime keeps it): the
/// service rows go back to that release's services, healthy, and the stack stays healthy with
/// the failure as its error.
async fn keep_serving(
    conn: &mut SqliteConnection,
    job: &Job,
    head: &StackHead,
    live: i64,
    error: Option<&str>,
    now: Millis,
) -> Result<(), StoreError> {
    let row = sqlx::query("SELECT spec FROM releases WHERE stack_id = $1 AND version = $2")
        .bind(head.id.0)
        .bind(live)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    let services: Vec<ReleaseService> = json_col(&row, "spec")?;
    sync_services(conn, head.id, &services, ServiceStatus::Healthy, now).await?;
    let message = failed_release_message(job.release, error);
    sqlx::query("UPDATE stacks SET status = 'healthy', error = $2, updated_at = $3 WHERE id = $1")
        .bind(head.id.0)
        .bind(&message)
        .bind(now.0)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    audit_job(
        conn,
        head,
        now,
        "stack.deploy_failed",
        serde_json::json!({
            "release": job.release,
            "error": error,
            "still_serving": live,
        }),
    )
    .await?;
    let rows = sqlx::query(
        "SELECT name, status, url, error FROM services WHERE stack_id = $1 ORDER BY position",
    )
    .bind(head.id.0)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    let mut out = vec![Event::release_status(
        job.release,
        ReleaseStatus::Failed,
        error,
    )];
    for row in &rows {
        out.push(service_event(row)?);
    }
    out.push(Event::stack_status(StackStatus::Healthy, Some(&message)));
    events::insert(conn, head.id, &head.slug, now, &out).await
}

impl SqliteStore {
    pub(crate) async fn claim_job_impl(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        // A new claim token: 128 random bits.
        let claim = random_hex(16);
        // Write lock before picking: no other claimer can pick the same job or start another
        // job of the same stack between our SELECT and UPDATE.
        let mut tx = self.write_tx().await?;
        // A queued job waits while its stack has any running job; an expired running job is
        // itself the candidate (its worker died), so it is not blocked by itself.
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j \
             WHERE ((j.state = 'queued' AND j.run_after <= $1) OR (j.state = 'running' AND j.lease_until < $1)) \
               AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.stack_id = j.stack_id AND r.state = 'running' AND r.id <> j.id) \
             ORDER BY j.id LIMIT 1",
        )
        .bind(now.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(id) = id else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(None);
        };
        let row = sqlx::query(
            "UPDATE jobs SET state = 'running', claim = $2, claimed_by = $3, lease_until = $4, \
               attempts = attempts + 1, updated_at = $5 \
             WHERE id = $1 \
             RETURNING id, stack_id, stack_slug, kind, generation, release, attempts, claim",
        )
        .bind(id)
        .bind(&claim)
        .bind(worker)
        .bind(now.saturating_add_ms(millis(lease)).0)
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await;
        let row = match row {
            Ok(row) => row,
            // Another job of the stack is running after all: let the worker poll again.
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await.map_err(db_err)?;
                return Ok(None);
            }
            Err(e) => return Err(db_err(e)),
        };
        let job = job_from_row(&row)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(job))
    }

    pub(crate) async fn renew_job_lease_impl(
        &self,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        // One fenced statement, atomic on its own; on the writer so it queues behind writes.
        let n = sqlx::query(
            "UPDATE jobs SET lease_until = $3, updated_at = $4 WHERE id = $1 AND claim = $2 AND state = 'running'",
        )
        .bind(job.id)
        .bind(&job.claim)
        .bind(now.saturating_add_ms(millis(lease)).0)
        .bind(now.0)
        .execute(&self.writer)
        .await
        .map_err(crate::writer_err)?
        .rows_affected();
        Ok(n > 0)
    }

    pub(crate) async fn requeue_running_jobs_impl(&self) -> Result<u64, StoreError> {
        // One statement; only called at start-up of the process that owns the file.
        let n = sqlx::query("UPDATE jobs SET state = 'queued', claim = NULL, lease_until = NULL WHERE state = 'running'")
            .execute(&self.writer)
            .await
            .map_err(crate::writer_err)?
            .rows_affected();
        Ok(n)
    }

    pub(crate) async fn deploy_context_impl(
        &self,
        job: &Job,
    ) -> Result<Option<(Stack, Release, EnvMap)>, StoreError> {
        // Read-only: one snapshot of the stack and its release (with the env it recorded).
        let mut tx = self.read_tx().await?;
        let Some(stack) = stack_by_id(&mut tx, job.stack_id).await? else {
            return Ok(None);
        };
        let version = if job.release > 0 {
            job.release
        } else {
            stack.release
        };
        let row = sqlx::query(
            "SELECT version, status, env_version, created_at, spec, env FROM releases \
             WHERE stack_id = $1 AND version = $2",
        )
        .bind(stack.id.0)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let Some(row) = row else {
            return Err(StoreError::Corrupt(
                "the job's release does not exist".into(),
            ));
        };
        let release = release_from_row(&row)?;
        let env = release_env(&row)?;
        Ok(Some((stack, release, env)))
    }

    pub(crate) async fn record_service_status_impl(
        &self,
        job: &Job,
        service: &ServiceName,
        status: ServiceStatus,
        url: Option<&str>,
        error: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        // Write lock before the generation check, so a deletion or a redeploy cannot slip in
        // between the check and the status write.
        let mut tx = self.write_tx().await?;
        let head = stack_head(&mut tx, job.stack_id).await?;
        let Some(head) = head.filter(|h| {
            h.generation == job.generation && h.status != StackStatus::Deleting.as_str()
        }) else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        };
        let before = sqlx::query(
            "SELECT status, url, error FROM services WHERE stack_id = $1 AND name = $2",
        )
        .bind(job.stack_id.0)
        .bind(service.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(before) = before else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        };
        let service_changed = col::<String>(&before, "status")? != status.as_str()
            || col::<Option<String>>(&before, "url")?.as_deref() != url
            || col::<Option<String>>(&before, "error")?.as_deref() != error;
        sqlx::query(
            "UPDATE services SET status = $3, url = $4, error = $5, updated_at = $6 WHERE stack_id = $1 AND name = $2",
        )
        .bind(job.stack_id.0)
        .bind(service.as_str())
        .bind(status.as_str())
        .bind(url)
        .bind(error)
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let rows =
            sqlx::query("SELECT status, error FROM services WHERE stack_id = $1 ORDER BY position")
                .bind(job.stack_id.0)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let mut statuses = Vec::with_capacity(rows.len());
        let mut failure: Option<String> = None;
        for row in &rows {
            let s: String = col(row, "status")?;
            let s = parsed(ServiceStatus::parse(&s), "service status")?;
            if s == ServiceStatus::Failed && failure.is_none() {
                failure = col(row, "error")?;
            }
            statuses.push(s);
        }
        let stack_status = StackStatus::from_services(&statuses);
        sqlx::query("UPDATE stacks SET status = $2, error = $3, updated_at = $4 WHERE id = $1")
            .bind(job.stack_id.0)
            .bind(stack_status.as_str())
            .bind(failure.as_deref())
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let mut out = Vec::new();
        if service_changed {
            out.push(Event::service_status(
                service.as_str(),
                status.as_str(),
                url,
                error,
            ));
        }
        if head.status != stack_status.as_str() || head.error != failure {
            out.push(Event::stack_status(stack_status, failure.as_deref()));
        }
        events::insert(&mut tx, head.id, &head.slug, now, &out).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    pub(crate) async fn finish_deploy_impl(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool, StoreError> {
        // Write lock: the fence, the release/stack transition, the audit row and the events are
        // one step.
        let mut tx = self.write_tx().await?;
        if !close_job(&mut tx, job, JobState::Done, now).await? {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        let head = stack_head(&mut tx, job.stack_id).await?;
        let Some(head) = head.filter(|h| h.generation == job.generation) else {
            // A newer operation (or the teardown) owns the stack: only the job is closed.
            tx.commit().await.map_err(db_err)?;
            return Ok(true);
        };
        if result.ok {
            let mut superseded: Vec<i64> = sqlx::query_scalar(
                "UPDATE releases SET status = 'superseded' \
                 WHERE stack_id = $1 AND status = 'live' AND version <> $2 RETURNING version",
            )
            .bind(job.stack_id.0)
            .bind(job.release)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            superseded.sort_unstable();
            sqlx::query("UPDATE releases SET status = 'live' WHERE stack_id = $1 AND version = $2")
                .bind(job.stack_id.0)
                .bind(job.release)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query(
                "UPDATE stacks SET status = 'healthy', error = NULL, updated_at = $2 WHERE id = $1",
            )
            .bind(job.stack_id.0)
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            audit_job(
                &mut tx,
                &head,
                now,
                "stack.deployed",
                serde_json::json!({ "release": job.release }),
            )
            .await?;
            let mut out: Vec<Event> = superseded
                .into_iter()
                .map(|v| Event::release_status(v, ReleaseStatus::Superseded, None))
                .collect();
            out.push(Event::release_status(
                job.release,
                ReleaseStatus::Live,
                None,
            ));
            out.push(Event::stack_status(StackStatus::Healthy, None));
            events::insert(&mut tx, head.id, &head.slug, now, &out).await?;
        } else {
            end_failed_deploy(&mut tx, job, &head, result.error.as_deref(), now).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    pub(crate) async fn finish_teardown_impl(
        &self,
        job: &Job,
        now: Millis,
    ) -> Result<bool, StoreError> {
        // Write lock: the fence, the delete (cascading to services, releases, env versions),
        // the audit row and the final event are one step. Audit, job and event rows have no
        // foreign key and stay.
        let mut tx = self.write_tx().await?;
        if !close_job(&mut tx, job, JobState::Done, now).await? {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        if let Some(head) = stack_head(&mut tx, job.stack_id).await? {
            sqlx::query("DELETE FROM stacks WHERE id = $1")
                .bind(job.stack_id.0)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            audit_job(&mut tx, &head, now, "stack.deleted", serde_json::json!({})).await?;
            let deleted = Event::stack_deleted();
            events::insert(&mut tx, head.id, &head.slug, now, &[deleted]).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    pub(crate) async fn retry_job_impl(
        &self,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> Result<bool, StoreError> {
        // The trait gives no separate `now`: the caller's `run_after` stamps updated_at (and
        // the audit row when giving up, where it is "now" by construction).
        let now = run_after;
        // Write lock: the fence and, when giving up, the failure transition are one step.
        let mut tx = self.write_tx().await?;
        let n = if give_up {
            sqlx::query(
                "UPDATE jobs SET state = 'failed', last_error = $3, lease_until = NULL, updated_at = $4 \
                 WHERE id = $1 AND claim = $2 AND state = 'running'",
            )
            .bind(job.id)
            .bind(&job.claim)
            .bind(error)
            .bind(now.0)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE jobs SET state = 'queued', run_after = $4, last_error = $3, claim = NULL, \
                   claimed_by = NULL, lease_until = NULL, updated_at = $4 \
                 WHERE id = $1 AND claim = $2 AND state = 'running'",
            )
            .bind(job.id)
            .bind(&job.claim)
            .bind(error)
            .bind(run_after.0)
            .execute(&mut *tx)
            .await
        }
        .map_err(db_err)?
        .rows_affected();
        if n == 0 {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        if give_up
            && job.kind == JobKind::Deploy
            && let Some(head) = stack_head(&mut tx, job.stack_id)
                .await?
                .filter(|h| h.generation == job.generation)
        {
            end_failed_deploy(&mut tx, job, &head, Some(error), now).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }
}

/// The env map a release recorded (its `env` column).
pub(crate) fn release_env(row: &SqliteRow) -> Result<EnvMap, StoreError> {
    let env: String = col(row, "env")?;
    // serde_json's message could quote a value: keep only that it failed.
    EnvMap::from_json(&env)
        .map_err(|_| StoreError::Corrupt("a release's env map is not valid".into()))
}
