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
use crate::events::{self, Event};
use crate::stacks::{stack_cols, stack_from_row, sync_services};
use crate::{PgStore, millis};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug, random_hex};
use stackyard_core::model::*;
use stackyard_core::store::DeployResult;
use stackyard_core::time::Millis;
use std::time::Duration;

/// Job-driven changes are made by the server itself.
fn system() -> String {
    Actor::system().0
}

/// The `service.status` event of a service row (`name, status, url, error`).
fn service_event(row: &PgRow) -> Result<Event> {
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
    id: StackId,
    generation: i64,
    status: String,
    error: Option<String>,
    team_id: Option<TeamId>,
    slug: String,
}

/// Locks the stack row (if it still exists) and reads its head.
async fn lock_stack_head(conn: &mut PgConnection, stack: StackId) -> Result<Option<StackHead>> {
    let row = sqlx::query(
        "SELECT op_generation, status, error, team_id, slug FROM stacks WHERE id = $1 FOR UPDATE",
    )
    .bind(stack.0)
    .fetch_optional(conn)
    .await?;
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

/// A current deploy that failed (the runtime said so, or the worker gave up). The caller holds
/// the stack's row lock, has closed the job and checked the generation.
async fn end_failed_deploy(
    conn: &mut PgConnection,
    job: &Job,
    head: &StackHead,
    error: Option<&str>,
    now: Millis,
) -> Result<()> {
    // The failed release, and which other release (if any) is live, in one statement.
    let live: Option<i64> = sqlx::query_scalar(
        "WITH rel AS ( \
           UPDATE releases SET status = 'failed' WHERE stack_id = $1 AND version = $2) \
         SELECT MAX(version) FROM releases WHERE stack_id = $1 AND status = 'live' AND version <> $2",
    )
    .bind(head.id.0)
    .bind(job.release)
    .fetch_one(&mut *conn)
    .await?;
    match live {
        Some(live) => keep_serving(conn, job, head, live, error, now).await,
        None => fail_stack(conn, job, head, error, now).await,
    }
}

/// Nothing else is live: the stack and its unfinished services are failed, with audit
/// `stack.deploy_failed`.
async fn fail_stack(
    conn: &mut PgConnection,
    job: &Job,
    head: &StackHead,
    error: Option<&str>,
    now: Millis,
) -> Result<()> {
    // Only rows that change: unfinished services, and failed ones still without an error.
    let rows = sqlx::query(
        "WITH stk AS ( \
           UPDATE stacks SET status = 'failed', error = $2, updated_at = $3 WHERE id = $1), \
         aud AS ( \
           INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
           VALUES ($3, $4, $5, 'stack.deploy_failed', $6, NULL, $7)) \
         UPDATE services SET status = 'failed', error = COALESCE(error, $2), updated_at = $3 \
         WHERE stack_id = $1 AND status <> 'healthy' \
           AND (status <> 'failed' OR (error IS NULL AND $2::text IS NOT NULL)) \
         RETURNING position, name, status, url, error",
    )
    .bind(head.id.0)
    .bind(error)
    .bind(now.0)
    .bind(head.team_id.map(|t| t.0))
    .bind(system())
    .bind(&head.slug)
    .bind(serde_json::json!({ "release": job.release, "error": error }))
    .fetch_all(&mut *conn)
    .await?;
    let mut changed = Vec::with_capacity(rows.len());
    for row in &rows {
        changed.push((col::<i32>(row, "position")?, service_event(row)?));
    }
    changed.sort_by_key(|(position, _)| *position);
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
    conn: &mut PgConnection,
    job: &Job,
    head: &StackHead,
    live: i64,
    error: Option<&str>,
    now: Millis,
) -> Result<()> {
    let row =
        sqlx::query("SELECT spec::text AS spec FROM releases WHERE stack_id = $1 AND version = $2")
            .bind(head.id.0)
            .bind(live)
            .fetch_one(&mut *conn)
            .await?;
    let services: Vec<ReleaseService> = json_col(&row, "spec")?;
    sync_services(conn, head.id, &services, ServiceStatus::Healthy, now).await?;
    let message = failed_release_message(job.release, error);
    // The services as they are now (the statement after the sync sees its rows).
    let rows = sqlx::query(
        "WITH stk AS ( \
           UPDATE stacks SET status = 'healthy', error = $2, updated_at = $3 WHERE id = $1), \
         aud AS ( \
           INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
           VALUES ($3, $4, $5, 'stack.deploy_failed', $6, NULL, $7)) \
         SELECT name, status, url, error FROM services WHERE stack_id = $1 ORDER BY position",
    )
    .bind(head.id.0)
    .bind(&message)
    .bind(now.0)
    .bind(head.team_id.map(|t| t.0))
    .bind(system())
    .bind(&head.slug)
    .bind(serde_json::json!({
        "release": job.release,
        "error": error,
        "still_serving": live,
    }))
    .fetch_all(&mut *conn)
    .await?;
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

impl PgStore {
    pub(crate) async fn claim_job_impl(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Job>> {
        // A new claim token: 128 random bits.
        let claim = random_hex(16);
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
        // One statement, one snapshot: the stack and the job's release (the current one when
        // the job names none) with the env map that release recorded.
        let row = self
            .read(|mut c| async move {
                Ok(sqlx::query(concat!(
                    "SELECT ",
                    stack_cols!(),
                    ", r.version, r.status AS r_status, r.env_version AS r_env_version, \
                       r.created_at AS r_created_at, r.spec::text AS spec, r.env::text AS env \
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
        let release = release_with_env(&row, version)?;
        Ok(Some((stack, release.0, release.1)))
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
        // Lock: the stack row, before the generation check, so a deletion or a redeploy (which
        // bump the generation under the same lock) cannot slip in between the check and the
        // write.
        let mut tx = self.begin().await?;
        let head = lock_stack_head(&mut tx, job.stack_id).await?;
        let Some(head) = head.filter(|h| {
            h.generation == job.generation && h.status != StackStatus::Deleting.as_str()
        }) else {
            tx.rollback().await?;
            return Ok(false);
        };
        // The row before the write (a self-join on the row being updated: the FROM side reads
        // the statement's snapshot, i.e. the old values), then every service after it.
        let before = sqlx::query(
            "UPDATE services n SET status = $3, url = $4, error = $5, updated_at = $6 \
             FROM services o WHERE n.stack_id = $1 AND n.name = $2 \
               AND o.stack_id = n.stack_id AND o.name = n.name \
             RETURNING o.status, o.url, o.error",
        )
        .bind(job.stack_id.0)
        .bind(service.as_str())
        .bind(status.as_str())
        .bind(url)
        .bind(error)
        .bind(now.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = before else {
            tx.rollback().await?;
            return Ok(false);
        };
        let service_changed = col::<String>(&before, "status")? != status.as_str()
            || col::<Option<String>>(&before, "url")?.as_deref() != url
            || col::<Option<String>>(&before, "error")?.as_deref() != error;
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
            .bind(failure.as_deref())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
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
        // transition, the audit row and the events are one step.
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
            let mut superseded: Vec<i64> = sqlx::query_scalar(
                "WITH live AS ( \
                   UPDATE releases SET status = 'live' WHERE stack_id = $1 AND version = $2), \
                 stk AS ( \
                   UPDATE stacks SET status = 'healthy', error = NULL, updated_at = $3 WHERE id = $1), \
                 aud AS ( \
                   INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
                   VALUES ($3, $4, $5, 'stack.deployed', $6, NULL, $7)) \
                 UPDATE releases SET status = 'superseded' \
                 WHERE stack_id = $1 AND status = 'live' AND version <> $2 RETURNING version",
            )
            .bind(job.stack_id.0)
            .bind(job.release)
            .bind(now.0)
            .bind(head.team_id.map(|t| t.0))
            .bind(system())
            .bind(&head.slug)
            .bind(serde_json::json!({ "release": job.release }))
            .fetch_all(&mut *tx)
            .await?;
            superseded.sort_unstable();
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
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn finish_teardown_impl(&self, job: &Job, now: Millis) -> Result<bool> {
        // Lock order: the stack row, then the job row (fence). The delete cascades to
        // services, releases and env versions; audit, job and event rows have no foreign key
        // and stay.
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
            let deleted = Event::stack_deleted();
            events::insert(&mut tx, head.id, &head.slug, now, &[deleted]).await?;
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
        // Lock order: the stack row (only when giving up a deploy, which ends the stack's
        // operation), then the job row (fence).
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
            end_failed_deploy(&mut tx, job, &head, Some(error), now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// A release selected as `version` (given), `r_status`, `r_env_version`, `r_created_at`,
/// `spec::text AS spec` and `env::text AS env`, with the env map it recorded.
pub(crate) fn release_with_env(row: &PgRow, version: i64) -> Result<(Release, EnvMap)> {
    let status: String = col(row, "r_status")?;
    let release = Release {
        info: ReleaseInfo {
            version,
            status: parsed(ReleaseStatus::parse(&status), "release status")?,
            env_version: col(row, "r_env_version")?,
            created_at: Millis(col(row, "r_created_at")?),
        },
        services: json_col(row, "spec")?,
    };
    let env: String = col(row, "env")?;
    // serde_json's message could quote a value: keep only that it failed.
    let env = EnvMap::from_json(&env).map_err(|_| corrupt("a release's env map is not valid"))?;
    Ok((release, env))
}
