//! Stacks and their releases: creation (with the team cap), lookup filtered by `Access`,
//! listing, deletion requests, redeploys, and the lists the maintenance loop and a restarting
//! runtime need.

use super::{Idempotent, StoreError};
use crate::env::EnvMap;
use crate::ids::{ServiceName, StackSlug};
use crate::model::{
    Access, AuditCtx, Page, Release, ReleaseInfo, ReleaseService, Stack, StackDetail, StackId,
    StackStatus, TeamId,
};
use crate::time::Millis;
use std::future::Future;

/// Which of a team's stacks a listing shows; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackFilter {
    pub status: Option<StackStatus>,
    /// The deployment environment label (`development`, …), compared exactly.
    pub env: Option<String>,
}

/// Everything `create_stack` writes, validated before it is called.
#[derive(Debug, Clone)]
pub struct NewStack {
    pub slug: StackSlug,
    pub name: String,
    pub environment: String,
    pub team_id: Option<TeamId>,
    /// For anonymous stacks, the client fingerprint (rate limits, audit).
    pub fingerprint: Option<String>,
    pub tier: String,
    pub expires_at: Option<Millis>,
    pub manifest: String,
    pub services: Vec<ReleaseService>,
    /// `(digest, size)` of every artifact the services use; the files are already on disk.
    pub artifacts: Vec<(String, i64)>,
    pub ctx: AuditCtx,
    pub idempotency: Option<Idempotent<Stack>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateStackError {
    #[error("the team already has its maximum of {max} stacks")]
    LimitReached { max: i64 },
    /// A `vault://` reference of the manifest cannot be resolved; nothing was written.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultRefError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new release of an existing stack (`POST /stacks/:slug/redeploy`).
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// `None`: the same services (artifacts, commands, settings) as the newest release.
    pub services: Option<Vec<ReleaseService>>,
    /// `(digest, size)` of new artifacts; the files are already on disk.
    pub artifacts: Vec<(String, i64)>,
    /// The manifest text when new code came with one.
    pub manifest: Option<String>,
    pub ctx: AuditCtx,
    /// Rendered from the stack and the new release (whose number is only known under the lock).
    pub idempotency: Option<Idempotent<(Stack, ReleaseInfo)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("stack not found")]
    NotFound,
    #[error("the stack is being deleted")]
    Deleting,
    /// A `vault://` reference of the env or manifest cannot be resolved; nothing was written.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultRefError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A restart of the live release's services, as `StackStore::request_restart` queued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartQueued {
    /// The stack as it is after the request (its status: `degraded` while services restart).
    pub stack: Stack,
    /// The live release being restarted.
    pub release: ReleaseInfo,
    /// The services being restarted, in manifest order.
    pub services: Vec<ServiceName>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartError {
    #[error("stack not found")]
    NotFound,
    #[error("the stack is being deleted")]
    Deleting,
    /// The stack does not rest on a live release (a deploy runs, or none ever went live).
    #[error("the stack is not running (it is {status})")]
    NotRunning { status: StackStatus },
    /// The live release has no service by that name.
    #[error("the live release has no service `{0}`")]
    UnknownService(ServiceName),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub trait StackStore: Clone + Send + Sync + 'static {
    /// Writes a new stack in one transaction (`lifecycle::create`): the team cap check (under
    /// the team's lock), the stack, its services, release v1 (recording the empty env map of
    /// version 0), artifact rows, env version 0, the deploy job, audit `stack.created`, events
    /// `stack.status` and `release.created`, and the idempotency record.
    fn create_stack(
        &self,
        new: NewStack,
    ) -> impl Future<Output = Result<Stack, CreateStackError>> + Send;

    /// The stack, its services in manifest order and its newest release, as `access` may see it.
    fn get_stack(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> impl Future<Output = Result<Option<StackDetail>, StoreError>> + Send;

    /// A team's stacks matching `filter`, newest first; `cursor` is the previous page's
    /// `next_cursor` (of the same filter); the page's `total` counts every match.
    fn list_stacks(
        &self,
        team: TeamId,
        filter: &StackFilter,
        limit: i64,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<Stack>, StoreError>> + Send;

    /// How many stacks a team holds (deleting ones excluded), for the cap.
    fn count_stacks(&self, team: TeamId) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Marks the stack `deleting`, bumps its operation generation, supersedes its queued jobs
    /// and queues a teardown, with audit `stack.deletion_requested` and event `stack.status`, in
    /// one transaction under the stack's lock (`lifecycle::delete`). Repeating it on a
    /// `deleting` stack changes nothing and returns it. `None` if the stack does not exist for
    /// this caller.
    fn request_deletion(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<Option<Stack>, StoreError>> + Send;

    /// Creates release N+1 of a stack (N = `Stack::release`) and queues its deploy, in one
    /// transaction under the stack's lock (`lifecycle::release`): `NotFound` / `Deleting` are
    /// decided there, not by an earlier read, and a refused call writes nothing.
    ///
    /// The release takes `release.services`, or (`None`) the newest release's services, and
    /// records the stack's env map and `env_version` as they are at that moment: that map is
    /// what its deploy applies (`JobStore::deploy_context`), whatever is written to the env
    /// later. It starts `pending`; older `pending` releases become `superseded`. The stack's
    /// operation generation is bumped (older jobs' status writes become no-ops), its status
    /// becomes `building` with no error, its service rows are made to match the new release (a
    /// kept service keeps its URL, since the old release still serves it), the manifest is
    /// replaced when one is given, its queued jobs are superseded and one deploy job is queued.
    fn create_release(
        &self,
        access: Access,
        slug: &StackSlug,
        release: NewRelease,
    ) -> impl Future<Output = Result<(Stack, ReleaseInfo), ReleaseError>> + Send;

    /// The stack's releases, newest first.
    fn list_releases(
        &self,
        stack: StackId,
    ) -> impl Future<Output = Result<Vec<Release>, StoreError>> + Send;

    /// Slugs of anonymous stacks (no team) whose `expires_at` is at or before `now` and that are
    /// not `deleting`, soonest-expired first, at most `limit`.
    fn expired_stacks(
        &self,
        now: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StackSlug>, StoreError>> + Send;

    /// Every stack that should be running (not `deleting`) and has a `live` release, with that
    /// release and the env map it recorded, for a runtime recovering after a restart. Stacks
    /// without a live release (first deploy not finished or failed) are left out.
    fn running_stacks(
        &self,
    ) -> impl Future<Output = Result<Vec<(Stack, Release, EnvMap)>, StoreError>> + Send;

    /// Queues a restart of the live release's services in place (`lifecycle::restart`), in
    /// one transaction under the stack's lock: `NotFound`, `Deleting`, `NotRunning` (the stack
    /// is not `healthy` or `degraded` on a live release) and `UnknownService` (`service` is not
    /// in the live release) are decided there, and a refused call writes nothing. The named
    /// service, or every service of the live release, becomes `restarting` (the stack
    /// `degraded` meanwhile); one `restart` job is queued at the stack's current generation
    /// (nothing is superseded: a later redeploy or deletion supersedes the restart); audit
    /// `stack.restart_requested` `{release, services}`; events `restart.requested` (with the
    /// request id), `service.status`, `stack.status`.
    fn request_restart(
        &self,
        access: Access,
        slug: &StackSlug,
        service: Option<ServiceName>,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<RestartQueued, RestartError>> + Send;
}
