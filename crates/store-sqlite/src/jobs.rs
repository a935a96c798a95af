//! `JobStore` on SQLite: claims with a lease, and the fenced writes of a running job (each
//! carries `WHERE id = … AND claim = … AND state = 'running'`; when that matches nothing the
//! claim was lost and the transaction changes nothing).

use crate::SqliteStore;
use crate::sql::OPS;
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

impl JobStore for SqliteStore {
    async fn claim_job(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        // A new claim token: 128 random bits.
        let claim = random_hex(16);
        // Write lock before picking: no other claimer can pick the same job or start another
        // job of the same stack between our SELECT and UPDATE. A queued job waits while its
        // stack has any running job; an expired running job is itself the candidate (its
        // worker died), so it is not blocked by itself.
        let mut tx = self.write_tx().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j \
             WHERE ((j.state = 'queued' AND j.run_after <= $1) OR (j.state = 'running' AND j.lease_until < $1)) \
               AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.stack_id = j.stack_id AND r.state = 'running' AND r.id <> j.id) \
             ORDER BY j.id LIMIT 1",
        )
        .bind(now.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)?;
        let Some(id) = id else { return Ok(None) };
        let row = sqlx::query_as::<_, JobRow>(
            "UPDATE jobs SET state = 'running', claim = $2, claimed_by = $3, lease_until = $4, \
               attempts = attempts + 1, updated_at = $5 \
             WHERE id = $1 \
             RETURNING id, stack_id, stack_slug, kind, generation, release, service, attempts, claim",
        )
        .bind(id)
        .bind(&claim)
        .bind(worker)
        .bind(now.saturating_add_ms(millis(lease)).0)
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::from);
        let job = match row {
            Ok(row) => Job::try_from(row)?,
            // Another job of the stack is running after all: let the worker poll again.
            Err(e) if is_unique_violation(&e, "jobs_one_running_per_stack") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        tx.commit().await.map_err(Error::from)?;
        Ok(Some(job))
    }

    async fn renew_job_lease(
        &self,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .renew_job_lease(self.write_tx().await?, job, now, lease)
            .await?)
    }

    async fn requeue_running_jobs(&self) -> Result<u64, StoreError> {
        // Only called at start-up by the process that owns the file.
        Ok(OPS.requeue_running_jobs(self.write_tx().await?).await?)
    }

    async fn deploy_context(
        &self,
        job: &Job,
    ) -> Result<Option<(Stack, Release, EnvMap)>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .deploy_context(&mut *self.reader().await?, job, keyring)
            .await?)
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
        let tx = self.write_tx().await?;
        let done = OPS.record_service_status(tx, job, service, status, url, error, now);
        Ok(done.await?)
    }

    async fn record_job_event(
        &self,
        job: &Job,
        event: NewEvent,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS.record_job_event(tx, job, event, now).await?)
    }

    async fn record_supervised_status(
        &self,
        stack: StackId,
        report: Supervised<'_>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS.record_supervised_status(tx, stack, report, now).await?)
    }

    async fn finish_deploy(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .finish_deploy(self.write_tx().await?, job, result, now)
            .await?)
    }

    async fn finish_teardown(
        &self,
        job: &Job,
        now: Millis,
    ) -> Result<Option<Vec<String>>, StoreError> {
        Ok(OPS
            .finish_teardown(self.write_tx().await?, job, now)
            .await?)
    }

    async fn retry_job(
        &self,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> Result<bool, StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS.retry_job(tx, job, error, run_after, give_up).await?)
    }

    async fn finish_restart(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .finish_restart(self.write_tx().await?, job, result, now)
            .await?)
    }
}
