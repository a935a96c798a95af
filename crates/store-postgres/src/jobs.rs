//! Durable jobs (deploy, teardown), shared by every server on the database: claiming with
//! `FOR UPDATE SKIP LOCKED` and a lease, fencing every later write by the claim, and the
//! stack/release/service transitions a finished job makes.
//!
//! Fencing: each write a worker makes after claiming carries `WHERE id = $ AND claim = $ AND
//! state = 'running'`; when that matches nothing the claim was lost (the lease expired and the
//! job was claimed again) and the whole transaction is rolled back.
//!
//! Lock order in every transaction here: the stack row (when the job's outcome touches the
//! stack), then the job row — the same order as `request_deletion` (stack, then its queued
//! jobs), so a finishing worker and a deletion request cannot deadlock.

use crate::audit::{self, AuditRow};
use crate::error::{Result, col, corrupt, is_unique_violation, json_col, parsed};
use crate::stacks::{stack_cols, stack_from_row};
use crate::{PgStore, millis};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::*;
use stackyard_core::store::{DeployResult, StoreError};
use stackyard_core::time::Millis;
use std::time::Duration;

/// Job-driven changes are made by the server itself.
fn system() -> String {
    Actor::system().0
}

/// A new claim token: 128 random bits, hex.
fn new_claim() -> Result<String> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf).map_err(|_| {
        StoreError::Unavailable("the operating system's random generator failed".into())
    })?;
    Ok(hex::encode(buf))
}

fn job_from_row(row: &PgRow) -> Result<Job> {
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

/// What a finishing job needs of its stack, read under the stack's row lock.
struct StackHead {
    generation: i64,
    status: String,
    team_id: Option<TeamId>,
    slug: String,
}

/// Locks the stack row (if it still exists) and reads its head.
async fn lock_stack_head(conn: &mut PgConnection, stack: StackId) -> Result<Option<StackHead>> {
    let row = sqlx::query(
        "SELECT op_generation, status, team_id, slug FROM stacks WHERE id = $1 FOR UPDATE",
    )
    .bind(stack.0)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let team_id: Option<i64> = col(&row, "team_id")?;
    Ok(Some(StackHead {
        generation: col(&row, "op_generation")?,
        status: col(&row, "status")?,
        team_id: team_id.map(TeamId),
        slug: col(&row, "slug")?,
    }))
}

/// Closes a fenced job with `state`; false when the claim was lost.
async fn close_job(
    conn: &mut PgConnection,
    job: &Job,
    state: JobState,
    now: Millis,
) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE jobs SET state = $3, lease_until = NULL, updated_at = $4 \
         WHERE id = $1 AND claim = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(&job.claim)
    .bind(state.as_str())
    .bind(now.0)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// A deploy that ended badly: its release, its unfinished services and the stack are failed,
/// with audit `stack.deploy_failed`, in one statement. The caller holds the stack lock and has
/// checked the generation.
async fn fail_deploy(
    conn: &mut PgConnection,
    job: &Job,
    head: &StackHead,
    error: Option<&str>,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "WITH rel AS ( \
           UPDATE releases SET status = 'failed' WHERE stack_id = $1 AND version = $2), \
         svc AS ( \
           UPDATE services SET status = 'failed', error = COALESCE(error, $3), updated_at = $4 \
           WHERE stack_id = $1 AND status <> 'healthy'), \
         stk AS ( \
           UPDATE stacks SET status = 'failed', error = $3, updated_at = $4 WHERE id = $1) \
         INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
         VALUES ($4, $5, $6, 'stack.deploy_failed', $7, NULL, $8)",
    )
    .bind(job.stack_id.0)
    .bind(job.release)
    .bind(error)
    .bind(now.0)
    .bind(head.team_id.map(|t| t.0))
    .bind(system())
    .bind(&head.slug)
    .bind(serde_json::json!({ "release": job.release, "error": error }))
    .execute(conn)
    .await?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn claim_job_impl(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let claim = new_claim()?;
        // Locks: one job row, picked with SKIP LOCKED so concurrent claimers (in this server
        // or another) never wait on each other and never get the same row. No stack lock: the
        // partial unique index jobs_one_running_per_stack is what keeps a second job of one
        // stack from running; if a concurrent claim of the same stack wins, our UPDATE fails
        // on it and the worker simply polls again.
        //
        // A queued job waits while its stack has any running job; an expired running job is
        // itself the candidate (its worker died), so it does not block itself.
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "WITH c AS ( \
               SELECT j.id FROM jobs j \
               WHERE ((j.state = 'queued' AND j.run_after <= $1) \
                      OR (j.state = 'running' AND j.lease_until < $1)) \
                 AND NOT EXISTS (SELECT 1 FROM jobs r \
                                 WHERE r.stack_id = j.stack_id AND r.state = 'running' AND r.id <> j.id) \
               ORDER BY j.id LIMIT 1 \
               FOR UPDATE SKIP LOCKED) \
             UPDATE jobs SET state = 'running', claim = $2, claimed_by = $3, lease_until = $4, \
               attempts = attempts + 1, updated_at = $1 \
             FROM c WHERE jobs.id = c.id \
             RETURNING jobs.id, jobs.stack_id, jobs.stack_slug, jobs.kind, jobs.generation, \
               jobs.release, jobs.attempts, jobs.claim",
        )
        .bind(now.0)
        .bind(&claim)
        .bind(worker)
        .bind(now.saturating_add_ms(millis(lease)).0)
        .fetch_optional(&mut *tx)
        .await;
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                let e = e.into();
                if is_unique_violation(&e, "jobs_one_running_per_stack") {
                    tx.rollback().await?;
                    return Ok(None);
                }
                return Err(e);
            }
        };
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(job))
    }

    pub(crate) async fn renew_job_lease_impl(
        &self,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> Result<bool> {
        // Lock: the job row only (fenced UPDATE).
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE jobs SET lease_until = $3, updated_at = $4 \
             WHERE id = $1 AND claim = $2 AND state = 'running'",
        )
        .bind(job.id)
        .bind(&job.claim)
        .bind(now.saturating_add_ms(millis(lease)).0)
        .bind(now.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    pub(crate) async fn requeue_running_jobs_impl(&self) -> Result<u64> {
        // Locks: every running job row. Only for a store no other server shares (never called
        // by a server on PostgreSQL, where `is_shared()` is true); kept for the trait.
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE jobs SET state = 'queued', claim = NULL, lease_until = NULL WHERE state = 'running'",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    pub(crate) async fn deploy_context_impl(
        &self,
        job: &Job,
    ) -> Result<Option<(Stack, Release, EnvMap)>> {
        let (stack_id, release) = (job.stack_id.0, job.release);
        // One statement, one snapshot: the stack, the job's release (the current one when the
        // job names none) and the env map.
        let row = self
            .read(|mut c| async move {
                Ok(sqlx::query(concat!(
                    "SELECT ",
                    stack_cols!(),
                    ", s.env::text AS env, r.version, r.status AS r_status, \
                       r.env_version AS r_env_version, r.created_at AS r_created_at, \
                       r.spec::text AS spec \
                     FROM stacks s \
                     LEFT JOIN releases r ON r.stack_id = s.id \
                       AND r.version = CASE WHEN $2 > 0 THEN $2 ELSE s.release END \
                     WHERE s.id = $1"
                ))
                .bind(stack_id)
                .bind(release)
                .fetch_optional(&mut *c)
                .await?)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stack = stack_from_row(&row)?;
        let version: Option<i64> = col(&row, "version")?;
        let Some(version) = version else {
            return Err(corrupt("the job's release does not exist"));
        };
        let status: String = col(&row, "r_status")?;
        let release = Release {
            info: ReleaseInfo {
                version,
                status: parsed(ReleaseStatus::parse(&status), "release status")?,
                env_version: col(&row, "r_env_version")?,
                created_at: Millis(col(&row, "r_created_at")?),
            },
            services: json_col(&row, "spec")?,
        };
        let env: String = col(&row, "env")?;
        let env =
            EnvMap::from_json(&env).map_err(|_| corrupt("the stored env map is not valid"))?;
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
    ) -> Result<bool> {
        // Lock: the stack row, before the generation check, so a deletion (which bumps the
        // generation under the same lock) cannot slip in between the check and the write.
        let mut tx = self.begin().await?;
        let head = lock_stack_head(&mut tx, job.stack_id).await?;
        let current = head.is_some_and(|h| {
            h.generation == job.generation && h.status != StackStatus::Deleting.as_str()
        });
        if !current {
            tx.rollback().await?;
            return Ok(false);
        }
        let n = sqlx::query(
            "UPDATE services SET status = $3, url = $4, error = $5, updated_at = $6 \
             WHERE stack_id = $1 AND name = $2",
        )
        .bind(job.stack_id.0)
        .bind(service.as_str())
        .bind(status.as_str())
        .bind(url)
        .bind(error)
        .bind(now.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let rows =
            sqlx::query("SELECT status, error FROM services WHERE stack_id = $1 ORDER BY position")
                .bind(job.stack_id.0)
                .fetch_all(&mut *tx)
                .await?;
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
            .bind(failure)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn finish_deploy_impl(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool> {
        // Lock order: the stack row, then the job row (fence). The fence, the release/stack
        // transition and the audit row are one step.
        let mut tx = self.begin().await?;
        let head = lock_stack_head(&mut tx, job.stack_id).await?;
        if !close_job(&mut tx, job, JobState::Done, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        let Some(head) = head.filter(|h| h.generation == job.generation) else {
            // A newer operation (or the teardown) owns the stack: only the job is closed.
            tx.commit().await?;
            return Ok(true);
        };
        if result.ok {
            sqlx::query(
                "WITH sup AS ( \
                   UPDATE releases SET status = 'superseded' \
                   WHERE stack_id = $1 AND status = 'live' AND version <> $2), \
                 live AS ( \
                   UPDATE releases SET status = 'live' WHERE stack_id = $1 AND version = $2), \
                 stk AS ( \
                   UPDATE stacks SET status = 'healthy', error = NULL, updated_at = $3 WHERE id = $1) \
                 INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
                 VALUES ($3, $4, $5, 'stack.deployed', $6, NULL, $7)",
            )
            .bind(job.stack_id.0)
            .bind(job.release)
            .bind(now.0)
            .bind(head.team_id.map(|t| t.0))
            .bind(system())
            .bind(&head.slug)
            .bind(serde_json::json!({ "release": job.release }))
            .execute(&mut *tx)
            .await?;
        } else {
            fail_deploy(&mut tx, job, &head, result.error.as_deref(), now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn finish_teardown_impl(&self, job: &Job, now: Millis) -> Result<bool> {
        // Lock order: the stack row, then the job row (fence). The delete cascades to
        // services, releases and env versions; audit rows and job rows have no foreign key and
        // stay.
        let mut tx = self.begin().await?;
        let head = lock_stack_head(&mut tx, job.stack_id).await?;
        if !close_job(&mut tx, job, JobState::Done, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(head) = head {
            sqlx::query("DELETE FROM stacks WHERE id = $1")
                .bind(job.stack_id.0)
                .execute(&mut *tx)
                .await?;
            audit::insert(
                &mut tx,
                AuditRow {
                    at: now,
                    team_id: head.team_id,
                    actor: &system(),
                    kind: "stack.deleted",
                    stack_slug: Some(&head.slug),
                    request_id: None,
                    metadata: serde_json::json!({}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn retry_job_impl(
        &self,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> Result<bool> {
        // The trait gives no separate `now`: the caller's `run_after` stamps updated_at (and
        // the audit row when giving up, where it is "now" by construction).
        let now = run_after;
        let fails_stack = give_up && job.kind == JobKind::Deploy;
        // Lock order: the stack row (only when giving up a deploy, which fails the stack),
        // then the job row (fence).
        let mut tx = self.begin().await?;
        let head = if fails_stack {
            lock_stack_head(&mut tx, job.stack_id).await?
        } else {
            None
        };
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
            .await?
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
            .await?
        }
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(head) = head.filter(|h| h.generation == job.generation) {
            fail_deploy(&mut tx, job, &head, Some(error), now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
