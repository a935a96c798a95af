//! `JobStore` on PostgreSQL, shared by every server on the database: claims with
//! `FOR UPDATE SKIP LOCKED` and a lease, and the fenced writes of a running job (each carries
//! `WHERE id = … AND claim = … AND state = 'running'`; when that matches nothing the claim was
//! lost and the transaction changes nothing). Lock order: the stack row (when the job's
//! outcome touches the stack), then the job row — the same order as a deletion request, so a
//! finishing worker and a deletion cannot deadlock.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, random_hex};
use stackyard_core::lifecycle::status::Supervised;
use stackyard_core::model::*;
use stackyard_core::store::{DeployResult, JobStore, StoreError};
use stackyard_core::time::Millis;
use stackyard_store_sql::error::{Error, is_unique_violation};
use stackyard_store_sql::ops::millis;
use stackyard_store_sql::rows::JobRow;
use std::time::Duration;

/// Picks and claims one runnable job in one statement. A queued job waits while its stack has
/// any running job; an expired running job is itself the candidate (its worker died), so it
/// does not block itself.
const CLAIM: &str = "\
WITH c AS ( \
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
RETURNING jobs.id, jobs.stack_id, jobs.stack_slug, jobs.kind, jobs.generation, jobs.release, \
  jobs.service, jobs.attempts, jobs.claim";

impl JobStore for PgStore {
    async fn claim_job(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        // A new claim token: 128 random bits.
        let claim = random_hex(16);
        // Locks: one job row, picked with SKIP LOCKED so concurrent claimers (in this server
        // or another) never wait on each other and never get the same row. No stack lock: the
        // partial unique index jobs_one_running_per_stack keeps a second job of one stack
        // from running; if a concurrent claim of the same stack wins, our UPDATE fails on it
        // and the worker simply polls again.
        let mut tx = self.begin().await?;
        let row: Result<Option<JobRow>, Error> = sqlx::query_as(CLAIM)
            .bind(now.0)
            .bind(&claim)
            .bind(worker)
            .bind(now.saturating_add_ms(millis(lease)).0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::from);
        let row = match row {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            Err(e) if is_unique_violation(&e, "jobs_one_running_per_stack") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let job = Job::try_from(row)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Some(job))
    }

    async fn renew_job_lease(
        &self,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        // In a transaction so that the wait for the job row is bounded.
        Ok(OPS
            .renew_job_lease(self.begin().await?, job, now, lease)
            .await?)
    }

    async fn requeue_running_jobs(&self) -> Result<u64, StoreError> {
        // Only for a store no other server shares: never called by a server on PostgreSQL
        // (`is_shared()` is true); kept for the trait.
        Ok(OPS.requeue_running_jobs(self.begin().await?).await?)
    }

    async fn deploy_context(
        &self,
        job: &Job,
    ) -> Result<Option<(Stack, Release, EnvMap)>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.deploy_context(&mut c, job, keyring).await
        };
        Ok(self.read(read).await?)
    }

    async fn record_service_status(
        &self,
        job: &Job,
        service: &ServiceName,
        status: ServiceStatus,
        url: Option<&str>,
        error: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let tx = self.begin().await?;
        let done = OPS.record_service_status(tx, job, service, status, url, error, now);
        Ok(done.await?)
    }

    async fn record_job_event(
        &self,
        job: &Job,
        event: NewEvent,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let tx = self.begin().await?;
        Ok(OPS.record_job_event(tx, job, event, now).await?)
    }

    async fn record_supervised_status(
        &self,
        stack: StackId,
        report: Supervised<'_>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let tx = self.begin().await?;
        Ok(OPS.record_supervised_status(tx, stack, report, now).await?)
    }

    async fn finish_deploy(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .finish_deploy(self.begin().await?, job, result, now)
            .await?)
    }

    async fn finish_teardown(
        &self,
        job: &Job,
        now: Millis,
    ) -> Result<Option<Vec<String>>, StoreError> {
        Ok(OPS.finish_teardown(self.begin().await?, job, now).await?)
    }

    async fn retry_job(
        &self,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .retry_job(self.begin().await?, job, error, run_after, give_up)
            .await?)
    }

    async fn finish_restart(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .finish_restart(self.begin().await?, job, result, now)
            .await?)
    }
}
