//! Job workers: claim durable jobs from the store and drive the runtime. A claimed job carries
//! a lease the worker keeps renewing; if this process dies the lease runs out and any server
//! sharing the database takes the job over (on an unshared SQLite store, start-up requeues it at
//! once). Every write a job makes is fenced by its claim and its operation generation, so a job
//! taken over, or superseded by a newer operation, can no longer change anything.

use crate::artifacts::Artifacts;
use crate::needs::ResolveError;
use crate::now;
use crate::resources::Provisioner;
use stackyard_core::ServiceName;
use stackyard_core::env::EnvMap;
use stackyard_core::lifecycle::status::Supervised;
use stackyard_core::model::{Actor, AuditCtx};
use stackyard_core::model::{Job, JobKind, NewEvent, Release, ServiceStatus, Stack, StackId};
use stackyard_core::runtime::{
    BoxFuture, DeployPlan, GrantedResource, Runtime, RuntimeError, StatusSink, SupervisionSink,
};
use stackyard_core::store::{
    ArtifactStore, DeployResult, JobStore, ResourceStore, StoreError, VaultStore,
};
use stackyard_core::vault::VaultRefError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// A deploy that keeps failing for infrastructure reasons is given up after this many tries;
/// a teardown is retried forever (giving up would leave a stack stuck in `deleting`).
const MAX_DEPLOY_ATTEMPTS: i64 = 5;
/// How often an idle worker looks for jobs queued by other servers.
const POLL: Duration = Duration::from_millis(500);

pub struct Workers<S: JobStore + ResourceStore + VaultStore + ArtifactStore> {
    pub store: S,
    pub runtime: Arc<dyn Runtime>,
    pub ready: Arc<Notify>,
    pub worker_id: String,
    pub lease: Duration,
    pub slots: usize,
    /// Notified (every waiter) after each finished teardown.
    pub torn_down: Arc<Notify>,
    /// Where a teardown removes the artifacts no release uses any more.
    pub artifacts: Arc<Artifacts>,
    /// Makes stack-owned resources (deploy) and drops them (teardown).
    pub provisioner: Arc<Provisioner>,
}

impl<S: JobStore + ResourceStore + VaultStore + ArtifactStore> Workers<S> {
    /// Claims and runs jobs until `shutdown` turns true, then cancels the jobs still running
    /// and returns once they are dropped: their claims are left to their leases (another
    /// server, or this one after a restart, resumes them), and the caller may stop the runtime
    /// knowing no job will start a process after it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.slots.max(1)));
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = crate::stopped(&mut shutdown) => break,
            };
            match this
                .store
                .claim_job(&this.worker_id, now(), this.lease)
                .await
            {
                Ok(Some(job)) => {
                    let this = this.clone();
                    running.spawn(async move {
                        this.execute(job).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = this.ready.notified() => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = crate::stopped(&mut shutdown) => break,
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "could not claim a job");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = crate::stopped(&mut shutdown) => break,
                    }
                }
            }
        }
        // A cancelled deploy stops what it had started (its `Attempt`) and commits nothing
        // more; the job row stays claimed, which is what a restart resumes.
        if !running.is_empty() {
            tracing::info!(
                jobs = running.len(),
                "cancelling running jobs; they resume after a restart"
            );
        }
        running.abort_all();
        while running.join_next().await.is_some() {}
    }

    /// Runs one job while a heartbeat renews its lease; stops work as soon as the claim is lost.
    async fn execute(self: &Arc<Self>, job: Job) {
        let span = tracing::info_span!("job", id = job.id, kind = %job.kind, stack = %job.slug);
        let lost = Arc::new(Notify::new());
        // Aborted when this future is dropped too (a planned stop aborts the running jobs):
        // a heartbeat outliving its job would keep the claim alive, and no server could take
        // the job over.
        let _heartbeat = {
            let (this, job, lost) = (self.clone(), job.clone(), lost.clone());
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(this.lease / 3).await;
                    match this.store.renew_job_lease(&job, now(), this.lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.notify_one();
                            return;
                        }
                        // A passing database error: the next beat may succeed before the lease ends.
                        Err(e) => {
                            tracing::warn!(error = %e, job = job.id, "could not renew a job lease")
                        }
                    }
                }
            }))
        };
        tokio::select! {
            _ = self.run_job(&job).instrument(span) => {}
            _ = lost.notified() => tracing::warn!(job = job.id, "job claim lost; another worker owns it now"),
        }
    }

    async fn run_job(&self, job: &Job) {
        let started = std::time::Instant::now();
        let result = match job.kind {
            JobKind::Deploy => self.deploy(job).await,
            JobKind::Teardown => self.teardown(job).await,
            JobKind::Restart => self.restart(job).await,
        };
        let outcome = match &result {
            Ok(()) => "ok",
            Err(e) => {
                // The job stays claimed; its lease runs out and it is retried.
                tracing::warn!(error = %e, job = job.id, "job could not record its result");
                "store_error"
            }
        };
        metrics::counter!("stackyard_jobs_total", "kind" => job.kind.as_str(), "outcome" => outcome).increment(1);
        metrics::histogram!("stackyard_job_seconds", "kind" => job.kind.as_str())
            .record(started.elapsed().as_secs_f64());
    }

    async fn deploy(&self, job: &Job) -> Result<(), StoreError> {
        let Some((stack, release, env)) = self.store.deploy_context(job).await? else {
            // The stack is gone (torn down meanwhile): nothing to deploy.
            self.store
                .finish_deploy(
                    job,
                    DeployResult {
                        ok: false,
                        error: Some("the stack no longer exists".into()),
                    },
                    now(),
                )
                .await?;
            return Ok(());
        };
        let (release, env) = match with_vault_values(&self.store, &stack, release, env).await? {
            Ok(resolved) => resolved,
            Err(e) => {
                // A recorded vault version was deleted since the release was built: the
                // release cannot be reproduced, so it fails rather than retries.
                self.store
                    .finish_deploy(
                        job,
                        DeployResult {
                            ok: false,
                            error: Some(format!("vault_ref_failed: {e}")),
                        },
                        now(),
                    )
                    .await?;
                return Ok(());
            }
        };
        let granted = match resolve_grants(&self.store, &self.provisioner, &stack, &release).await {
            Ok(g) => g,
            Err(ResolveError::Failed(msg)) => {
                self.store
                    .finish_deploy(
                        job,
                        DeployResult {
                            ok: false,
                            error: Some(msg),
                        },
                        now(),
                    )
                    .await?;
                return Ok(());
            }
            Err(ResolveError::Transient(msg)) => {
                let give_up = job.attempts >= MAX_DEPLOY_ATTEMPTS;
                self.store
                    .retry_job(
                        job,
                        &msg,
                        now().saturating_add_ms(backoff_ms(job.attempts)),
                        give_up,
                    )
                    .await?;
                return Ok(());
            }
            Err(ResolveError::Store(e)) => return Err(e),
        };
        let plan = deploy_plan(stack, release, env, granted);
        let sink = JobSink {
            store: self.store.clone(),
            job: job.clone(),
        };
        let result = match self.runtime.deploy(&plan, &sink).await {
            Ok(()) => DeployResult {
                ok: true,
                error: None,
            },
            Err(RuntimeError::Failed(msg)) => DeployResult {
                ok: false,
                error: Some(msg),
            },
            Err(RuntimeError::Transient(msg)) => {
                let give_up = job.attempts >= MAX_DEPLOY_ATTEMPTS;
                self.store
                    .retry_job(
                        job,
                        &msg,
                        now().saturating_add_ms(backoff_ms(job.attempts)),
                        give_up,
                    )
                    .await?;
                return Ok(());
            }
        };
        let ok = result.ok;
        self.store.finish_deploy(job, result, now()).await?;
        if ok {
            tracing::info!(stack = %job.slug, release = plan.release, "deploy finished");
        } else {
            tracing::info!(stack = %job.slug, release = plan.release, "deploy failed");
        }
        Ok(())
    }

    async fn teardown(&self, job: &Job) -> Result<(), StoreError> {
        let torn = match self.runtime.teardown(&job.slug).await {
            // Its services are stopped: now the resources the stack owns can go.
            Ok(()) => {
                let ctx = AuditCtx {
                    actor: Actor::system(),
                    request_id: None,
                    now: now(),
                };
                crate::needs::drop_stack_resources(
                    &self.store,
                    &self.provisioner,
                    job.stack_id,
                    &ctx,
                )
                .await
                .map(|n| {
                    if n > 0 {
                        tracing::info!(stack = %job.slug, resources = n, "dropped the stack's own resources");
                    }
                })
                .map_err(|e| {
                    tracing::warn!(error = %e, stack = %job.slug, "could not drop the stack's own resources");
                    RuntimeError::Transient("the stack's own resources could not be dropped yet".into())
                })
            }
            Err(e) => Err(e),
        };
        match torn {
            Ok(()) => {
                let Some(unused) = self.store.finish_teardown(job, now()).await? else {
                    return Ok(());
                };
                // After the commit: a file removed before it could outlive a rolled-back
                // deletion that still names it. Before the notification: a `DELETE` answered
                // "gone" finds the stack's unused artifacts gone too.
                if !unused.is_empty() {
                    let removed = self.artifacts.remove_unused(&self.store, unused).await;
                    tracing::info!(stack = %job.slug, removed, "removed artifacts no release uses");
                }
                self.torn_down.notify_waiters();
                tracing::info!(stack = %job.slug, "teardown finished");
            }
            Err(e) => {
                tracing::warn!(error = %e, stack = %job.slug, "teardown failed; will retry");
                self.store
                    .retry_job(
                        job,
                        &e.to_string(),
                        now().saturating_add_ms(backoff_ms(job.attempts)),
                        false,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Restarts the job's services of its release, unless the stack moved on since the
    /// request (a redeploy or a deletion bumped its generation): then only the job closes.
    /// A restart is not retried: a failure is reported on the services it concerns.
    async fn restart(&self, job: &Job) -> Result<(), StoreError> {
        let stack = self
            .store
            .deploy_context(job)
            .await?
            .map(|(stack, _, _)| stack);
        let current = stack.is_some_and(|s| {
            s.op_generation == job.generation
                && s.status != stackyard_core::model::StackStatus::Deleting
        });
        let result = if current {
            let sink = JobSink {
                store: self.store.clone(),
                job: job.clone(),
            };
            let restarted = self
                .runtime
                .restart(&job.slug, job.release, job.service.as_ref(), &sink)
                .await;
            match restarted {
                Ok(()) => DeployResult {
                    ok: true,
                    error: None,
                },
                Err(RuntimeError::Failed(msg) | RuntimeError::Transient(msg)) => DeployResult {
                    ok: false,
                    error: Some(msg),
                },
            }
        } else {
            tracing::info!(stack = %job.slug, "restart skipped: the stack was redeployed or deleted since");
            DeployResult {
                ok: true,
                error: None,
            }
        };
        let ok = result.ok;
        self.store.finish_restart(job, result, now()).await?;
        tracing::info!(stack = %job.slug, release = job.release, ok, "restart finished");
        Ok(())
    }
}

/// What the runtime needs to run `release` of `stack` with the env map it recorded and the
/// resources it was granted.
pub(crate) fn deploy_plan(
    stack: Stack,
    release: Release,
    env: EnvMap,
    granted: Vec<GrantedResource>,
) -> DeployPlan {
    DeployPlan {
        stack_id: stack.id,
        slug: stack.slug,
        team: stack.team_id,
        tier: stack.tier,
        release: release.info.version,
        env_version: release.info.env_version,
        services: release.services,
        env,
        granted,
    }
}

/// The URLs of what `release` was granted, read (and audited, as the system) through the store.
pub(crate) async fn resolve_grants<S: ResourceStore>(
    store: &S,
    provisioner: &Provisioner,
    stack: &Stack,
    release: &Release,
) -> Result<Vec<GrantedResource>, ResolveError> {
    if release.services.iter().all(|s| s.needs.is_empty()) {
        return Ok(Vec::new());
    }
    let ctx = AuditCtx {
        actor: Actor::system(),
        request_id: None,
        now: now(),
    };
    crate::needs::resolve(store, provisioner, stack, &release.services, &ctx).await
}

/// `release` and `env` with their `vault://` references replaced by the vault versions the
/// release recorded when it was built (the stack's map keeps the references).
pub(crate) async fn with_vault_values<S: VaultStore>(
    store: &S,
    stack: &Stack,
    mut release: Release,
    env: EnvMap,
) -> Result<Result<(Release, EnvMap), VaultRefError>, StoreError> {
    let values = match store
        .release_vault_values(stack.id, release.info.version)
        .await?
    {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let env = if values.is_empty() {
        env
    } else {
        stackyard_core::vault::resolve(&env, &mut release.services, &values)
    };
    Ok(Ok((release, env)))
}

/// 1 s, 2 s, 4 s … capped at 60 s.
fn backoff_ms(attempts: i64) -> i64 {
    1000i64
        .saturating_mul(1 << attempts.clamp(0, 6))
        .min(60_000)
}

/// A task that stops when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns runtime progress into fenced status writes.
struct JobSink<S: JobStore> {
    store: S,
    job: Job,
}

impl<S: JobStore> StatusSink for JobSink<S> {
    fn service_status<'a>(
        &'a self,
        service: &'a ServiceName,
        status: ServiceStatus,
        url: Option<&'a str>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match self
                .store
                .record_service_status(&self.job, service, status, url, error, now())
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    job = self.job.id,
                    "status write skipped: a newer operation owns the stack"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, job = self.job.id, "could not record a service status")
                }
            }
        })
    }

    fn event(&self, event: NewEvent) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let kind = event.kind;
            if let Err(e) = self.store.record_job_event(&self.job, event, now()).await {
                tracing::warn!(error = %e, job = self.job.id, kind, "could not record an event");
            }
        })
    }
}

/// Records the runtime's supervision reports (crashes and restarts of a live release).
pub(crate) struct StoreSupervision<S: JobStore> {
    pub(crate) store: S,
}

impl<S: JobStore> SupervisionSink for StoreSupervision<S> {
    fn report<'a>(&'a self, stack: StackId, report: Supervised<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let status = report.status;
            match self
                .store
                .record_supervised_status(stack, report, now())
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    stack = stack.0,
                    "supervision report skipped: the release is no longer live"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, stack = stack.0, status = %status, "could not record a supervision report")
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(3), 8000);
        assert_eq!(backoff_ms(50), 60_000);
    }
}
