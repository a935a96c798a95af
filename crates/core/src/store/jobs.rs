//! Durable jobs (deploy, teardown, restart): claims with a lease, and the fenced writes a worker makes
//! while it runs one. A claim token fences every write (a job taken over after its lease
//! expired cannot finish twice); the stack's operation generation fences status writes (a slow
//! old deploy cannot overwrite a newer state).

use super::StoreError;
use crate::env::EnvMap;
use crate::ids::ServiceName;
use crate::lifecycle::status::Supervised;
use crate::model::{Job, NewEvent, Release, ServiceStatus, Stack, StackId};
use crate::time::Millis;
use std::future::Future;
use std::time::Duration;

/// How a deploy (or a restart) ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployResult {
    pub ok: bool,
    pub error: Option<String>,
}

pub trait JobStore: Clone + Send + Sync + 'static {
    /// Claims the oldest runnable job: queued, or running with an expired lease (its worker
    /// died), and whose stack has no other job running. At most one worker gets each claim.
    fn claim_job(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// Extends the lease of a job still held by this claim; false if the claim was lost.
    fn renew_job_lease(
        &self,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Puts every running job back in the queue. Only for a store no other server shares, at
    /// start-up: any job still marked running was held by a previous, dead instance.
    fn requeue_running_jobs(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The stack, the job's release (the stack's newest when the job names none) and the env
    /// map that release recorded when it was created, for a deploy: a deploy applies exactly the
    /// env version its release carries, not env written since.
    fn deploy_context(
        &self,
        job: &Job,
    ) -> impl Future<Output = Result<Option<(Stack, Release, EnvMap)>, StoreError>> + Send;

    /// Records a service's status (and URL / error) if the job's generation is still the
    /// stack's, and moves the stack status along (`lifecycle::status`; a restart job's reports:
    /// `lifecycle::restart::record`). Returns false, changing
    /// nothing, when a newer operation owns the stack (a redeploy or a deletion) or the stack
    /// has no such service.
    fn record_service_status(
        &self,
        job: &Job,
        service: &ServiceName,
        status: ServiceStatus,
        url: Option<&str>,
        error: Option<&str>,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Writes a progress event of a running job (`lifecycle::status::progress`). False,
    /// writing nothing, when a newer operation owns the stack.
    fn record_job_event(
        &self,
        job: &Job,
        event: NewEvent,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records what the runtime's supervisor saw of a service of the live release between
    /// operations (`lifecycle::status::supervise`): crashed, restarting, healthy again, or
    /// failed after a crash loop. False, changing nothing, when the report is stale.
    fn record_supervised_status(
        &self,
        stack: StackId,
        report: Supervised<'_>,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a deploy job and marks it done. False if the claim was lost; if a newer operation
    /// owns the stack only the job is closed. Otherwise the stack, its release and services move
    /// as `lifecycle::deploy` decides: live, failed while an older release keeps serving, or
    /// failed with nothing live.
    fn finish_deploy(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a teardown job: deletes the stack and everything that hangs off it (audit rows, job
    /// records and events stay), audits `stack.deleted`, writes event `stack.deleted`, marks the
    /// job done (`lifecycle::delete`), and deletes the rows of the artifacts its releases used
    /// that no release of any stack uses any more, in one transaction. Returns those digests
    /// (their files are the caller's to remove, after this commit), or `None` if the claim was
    /// lost. A create or redeploy committing the same digest concurrently keeps it (the
    /// artifact's row lock orders the two).
    fn finish_teardown(
        &self,
        job: &Job,
        now: Millis,
    ) -> impl Future<Output = Result<Option<Vec<String>>, StoreError>> + Send;

    /// Gives a job back after a failure: queued again at `run_after`, or failed for good when
    /// `give_up`. Giving up a deploy whose generation is current ends it exactly like a failed
    /// `finish_deploy` with `error` (rolling back to a live release if there is one).
    fn retry_job(
        &self,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a restart job and marks it done (`lifecycle::restart::finish`). False if the claim
    /// was lost. While the restart still owns its services (same generation, the stack resting
    /// on the job's release), the job's services still `restarting` become `healthy` when
    /// `result.ok` (a runtime that reported nothing) or `failed` with `result.error`; otherwise
    /// (redeployed or deleted meanwhile) only the job is closed.
    fn finish_restart(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
