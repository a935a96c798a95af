//! The `Store` trait: every durable read and write Stackyard makes, named after the domain
//! operation. `stackyard-store-sqlite` and `stackyard-store-postgres` implement it, and one
//! test suite (`stackyard-store-tests`) runs against both.
//!
//! Rules every implementation keeps:
//! - Each method is one transaction; a method that changes something writes its audit row and
//!   its stack events (`list_events`) in that same transaction, so all exist or none does.
//! - Writes that read before they write take the stack's (or team's) lock first: PostgreSQL
//!   `SELECT … FOR UPDATE` under `lock_timeout`, SQLite `BEGIN IMMEDIATE` under `busy_timeout`.
//!   A lock wait over the configured bound is `StoreError::LockTimeout`.
//! - Every read or write of a stack is filtered by `Access`; a stack the caller may not see is
//!   reported exactly like one that does not exist.

use crate::env::{EnvError, EnvMap, EnvPatch};
use crate::ids::{ServiceName, StackSlug, TeamName, TokenDigest};
use crate::model::*;
use crate::time::Millis;
use std::future::Future;
use std::time::Duration;

/// A storage failure. Messages never carry connection URLs, tokens or env values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed mid-operation; nothing was committed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Waiting for a lock took longer than the configured bound; nothing was committed.
    #[error("timed out waiting for a database lock")]
    LockTimeout,
    /// A uniqueness rule was violated (for example a team name that exists).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// Stored data could not be decoded; a bug or a hand-edited database.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::LockTimeout)
    }
}

/// Settings every store takes.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bound on waiting for a row/database lock (spec: 3 s).
    pub lock_timeout: Duration,
    /// Env versions kept per stack (at least this many of the newest).
    pub env_history: i64,
    /// Pool size.
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(3),
            env_history: 1000,
            max_connections: 16,
        }
    }
}

/// A new token: its name and digest (the clear text never reaches the store).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub digest: TokenDigest,
}

/// An idempotency record to complete in the same transaction as the change it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyCompletion {
    pub scope: String,
    pub key: String,
    pub status: u16,
    pub body: String,
}

/// The state of an `Idempotency-Key` when a request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// No live record: one is now reserved for this request; complete or abandon it.
    Started,
    /// The first request finished: answer with its response.
    Replay { status: u16, body: String },
    /// The key was used with a different request.
    Mismatch,
    /// The first request is still running.
    InProgress,
}

#[derive(Debug, Clone)]
pub struct IdempotencyRequest<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    /// SHA-256 of what identifies the request (method, path, parsed body).
    pub request_hash: &'a str,
    pub now: Millis,
    /// How long a completed record answers replays (spec: 24 h).
    pub ttl: Duration,
    /// After how long a reservation whose request never finished (crashed server) may be taken over.
    pub stale_after: Duration,
}

/// How long a completed idempotency record answers replays (spec: 24 h); a store uses it for a
/// record completed without a reservation, which carries no `IdempotencyRequest::ttl`.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The `next_cursor` of a `list_stacks` page: the last stack's creation time and id, the key
/// the listing is ordered by (newest first).
pub fn stack_cursor(last: &Stack) -> String {
    format!("{}:{}", last.created_at.0, last.id.0)
}

/// The `(created_at, id)` a `list_stacks` page starts below. A cursor we cannot read starts
/// from the newest stack rather than failing the request.
pub fn parse_stack_cursor(cursor: Option<&str>) -> (i64, i64) {
    cursor
        .and_then(|c| c.split_once(':'))
        .and_then(|(at, id)| Some((at.parse().ok()?, id.parse().ok()?)))
        .unwrap_or((i64::MAX, i64::MAX))
}

/// The id (or version) a page of an id-ordered, newest-first listing (audit rows, env
/// versions) starts below; its cursor is the last item's id. A cursor we cannot read starts
/// from the newest row rather than failing the request.
pub fn parse_id_cursor(cursor: Option<&str>) -> i64 {
    cursor.and_then(|c| c.parse().ok()).unwrap_or(i64::MAX)
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
    pub idempotency: Option<IdempotencyCompletion>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateStackError {
    #[error("the team already has its maximum of {max} stacks")]
    LimitReached { max: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    pub stack: Option<String>,
    pub kind: Option<String>,
    pub limit: i64,
    pub cursor: Option<String>,
}

/// One env write queued for a stack: a merge or a rollback, with its own precondition.
#[derive(Debug, Clone)]
pub struct EnvWrite {
    pub op: EnvOp,
    /// `If-Match`: apply only if the version is still this.
    pub if_match: Option<i64>,
    pub ctx: AuditCtx,
    /// Completed with the response in the batch's transaction (never for dry runs).
    pub idempotency: Option<IdempotencyPending>,
}

#[derive(Debug, Clone)]
pub enum EnvOp {
    Patch(EnvPatch),
    Rollback { to_version: i64 },
}

/// An idempotency reservation whose response body the store renders from the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyPending {
    pub scope: String,
    pub key: String,
}

/// Why one write of a batch was refused; the others in the batch are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvWriteError {
    #[error("the env version is {current}, not the one given in If-Match")]
    VersionMismatch { current: i64 },
    #[error("env version {0} does not exist or has been pruned")]
    VersionNotFound(i64),
    #[error(transparent)]
    Invalid(EnvError),
}

/// Why a whole batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvBatchError {
    #[error("stack not found")]
    NotFound,
    #[error("the stack is being deleted")]
    Deleting,
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
    /// Completed in the release's transaction with `render(slug, new release, note)` as the
    /// stored 202 body (the release number is only known under the lock).
    pub idempotency: Option<IdempotencyPending>,
    /// Manifest warnings, for the response.
    pub note: String,
    pub render: ReleaseResponseRenderer,
}

/// Renders the `202` body of a redeploy, which an idempotent replay returns.
pub type ReleaseResponseRenderer = fn(&StackSlug, &ReleaseInfo, &str) -> String;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("stack not found")]
    NotFound,
    #[error("the stack is being deleted")]
    Deleting,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a deploy ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployResult {
    pub ok: bool,
    pub error: Option<String>,
}

/// What a store needs to render the response that an idempotent env write replays.
pub type EnvResponseRenderer = fn(&StackSlug, &EnvOutcome) -> String;

/// Every durable operation. Implementations are cheap to clone (a pool handle).
///
/// Methods return `impl Future + Send` so the server can stay generic over the store without
/// boxing on the hot path.
pub trait Store: Clone + Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Whether several server processes may share this database (PostgreSQL). When false the
    /// server owns the database alone and may requeue every running job at start-up.
    fn is_shared(&self) -> bool;

    /// A cheap round trip proving the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    // ---- teams and tokens ----

    /// On an empty database, creates team `default` (no stack cap) with one admin token.
    /// Returns whether it created them.
    fn bootstrap_default_team(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Creates a team and its first token (audit `team.created`). `Conflict("team")` if the name is taken.
    fn create_team(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<(Team, TokenInfo), StoreError>> + Send;

    /// The team and token behind a presented token digest; `None` if unknown or revoked.
    fn authenticate(
        &self,
        digest: &TokenDigest,
    ) -> impl Future<Output = Result<Option<Principal>, StoreError>> + Send;

    /// Adds a token to a team (audit `token.created`).
    fn create_token(
        &self,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<TokenInfo, StoreError>> + Send;

    /// The team's live tokens, oldest first.
    fn list_tokens(
        &self,
        team: TeamId,
    ) -> impl Future<Output = Result<Vec<TokenInfo>, StoreError>> + Send;

    /// Revokes a live token of the team (audit `token.revoked`); false if there is none with that id.
    fn revoke_token(
        &self,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    // ---- idempotency ----

    /// Looks up or reserves an idempotency key (see `IdempotencyBegin`). Expired records are
    /// treated as absent.
    fn idempotency_begin(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> impl Future<Output = Result<IdempotencyBegin, StoreError>> + Send;

    /// Drops a reservation whose request failed, so the client may retry with the same key.
    /// Completed records are left alone.
    fn idempotency_abandon(
        &self,
        scope: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    // ---- stacks ----

    /// Writes a new stack in one transaction: the team cap check (under the team's lock), the
    /// stack, its services, release v1 (recording the empty env map of version 0), artifact
    /// rows, env version 0, the deploy job, audit `stack.created`, events `stack.status` and
    /// `release.created`, and the idempotency record.
    fn create_stack(
        &self,
        new: NewStack,
    ) -> impl Future<Output = Result<Stack, CreateStackError>> + Send;

    fn get_stack(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> impl Future<Output = Result<Option<StackDetail>, StoreError>> + Send;

    /// A team's stacks, newest first; `cursor` is the previous page's `next_cursor`.
    fn list_stacks(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<Stack>, StoreError>> + Send;

    /// How many stacks a team holds (deleting ones excluded), for the cap.
    fn count_stacks(&self, team: TeamId) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Marks the stack `deleting`, bumps its operation generation, supersedes its queued jobs
    /// and queues a teardown, with audit `stack.deletion_requested` and event `stack.status`, in
    /// one transaction under the stack's lock. Repeating it on a `deleting` stack changes nothing
    /// and returns it.
    /// `None` if the stack does not exist for this caller.
    fn request_deletion(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<Option<Stack>, StoreError>> + Send;

    /// The stack's releases, newest first.
    fn list_releases(
        &self,
        stack: StackId,
    ) -> impl Future<Output = Result<Vec<Release>, StoreError>> + Send;

    // ---- audit ----

    fn list_audit(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> impl Future<Output = Result<Page<AuditEntry>, StoreError>> + Send;

    // ---- jobs ----

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
    /// stack's, and moves the stack status along (`StackStatus::from_services`), with event
    /// `service.status` when the service changed and `stack.status` when the stack's status or
    /// error changed. Returns false, changing nothing, when a newer operation owns the stack
    /// (a redeploy or a deletion) or the stack has no such service.
    fn record_service_status(
        &self,
        job: &Job,
        service: &ServiceName,
        status: ServiceStatus,
        url: Option<&str>,
        error: Option<&str>,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a deploy job and marks it done. False if the claim was lost; if a newer operation
    /// owns the stack only the job is closed. Otherwise, with events `release.status` and
    /// `stack.status`:
    /// - ok: the release goes `live` (any other live release `superseded`), the stack `healthy`
    ///   with no error; audit `stack.deployed`.
    /// - failed while another release of the stack is `live` (a rolling redeploy: the runtime
    ///   keeps the old one serving): the release goes `failed`, the service rows are set back
    ///   to the live release's services, `healthy` without error (event `service.status` for
    ///   each), the stack `healthy` with error `release vN failed: <error>`; audit
    ///   `stack.deploy_failed` `{release, error, still_serving}`.
    /// - failed with nothing live: the release, the stack and its unfinished services go
    ///   `failed` (event `service.status` for each service changed); audit `stack.deploy_failed`
    ///   `{release, error}`.
    fn finish_deploy(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a teardown job: deletes the stack and everything that hangs off it (audit rows, job
    /// records and events stay), audits `stack.deleted`, writes event `stack.deleted`, marks the
    /// job done. False if the claim was lost.
    fn finish_teardown(
        &self,
        job: &Job,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

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

    // ---- env ----

    /// Applies a batch of env writes to one stack in one transaction and one commit, in order,
    /// each checked on its own: a write that fails its precondition or the size rule is refused
    /// alone, the others commit. Each effective write gets its own version, version row, audit
    /// row and `env.version` event; a write that changes nothing gets none of them. Under the
    /// stack's lock: the stack must exist (`NotFound`) and not be `deleting` (`Deleting`).
    /// `render` produces the body stored for idempotent writes.
    fn apply_env_writes(
        &self,
        stack: StackId,
        writes: Vec<EnvWrite>,
        render: EnvResponseRenderer,
    ) -> impl Future<Output = Result<Vec<Result<EnvOutcome, EnvWriteError>>, EnvBatchError>> + Send;

    /// What `apply_env_writes` would do with one write, without writing anything.
    fn preview_env_write(
        &self,
        stack: StackId,
        write: EnvWrite,
    ) -> impl Future<Output = Result<Result<EnvOutcome, EnvWriteError>, EnvBatchError>> + Send;

    /// The current map and version. With `reveal` set, audits `stack.env.revealed` in the same
    /// transaction (the read happens only if the audit row commits).
    fn get_env(
        &self,
        stack: StackId,
        reveal: Option<AuditCtx>,
    ) -> impl Future<Output = Result<Option<EnvOutcome>, StoreError>> + Send;

    /// Env history, newest first.
    fn list_env_versions(
        &self,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<EnvVersionInfo>, StoreError>> + Send;

    // ---- releases, expiry, limits, events ----

    /// Creates release N+1 of a stack (N = `Stack::release`) and queues its deploy, in one
    /// transaction under the stack's lock: `NotFound` / `Deleting` are decided there, not by an
    /// earlier read, and a refused call writes nothing.
    ///
    /// The release takes `release.services`, or (`None`) the newest release's services, and
    /// records the stack's env map and `env_version` as they are at that moment: that map is
    /// what its deploy applies (`deploy_context`), whatever is written to the env later. It
    /// starts `pending`; older `pending` releases become `superseded` (their deploys can no
    /// longer run). The stack's operation generation is bumped (older jobs' status writes become
    /// no-ops), its status becomes `building` with no error, its service rows are made to match
    /// the new release (in its order, each `building`; a kept service keeps its URL, since the
    /// old release still serves it), the manifest is replaced when one is given, its queued jobs
    /// are superseded and one deploy job is queued for the new release. Also: artifact rows,
    /// audit `stack.redeploy_requested` `{release, from_release}`, events (`release.status` for
    /// each superseded release, `release.created`, `stack.status`) and the idempotency record.
    fn create_release(
        &self,
        access: Access,
        slug: &StackSlug,
        release: NewRelease,
    ) -> impl Future<Output = Result<(Stack, ReleaseInfo), ReleaseError>> + Send;

    /// Slugs of anonymous stacks (no team) whose `expires_at` is at or before `now` and that are
    /// not `deleting`, soonest-expired first, at most `limit`.
    fn expired_stacks(
        &self,
        now: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StackSlug>, StoreError>> + Send;

    /// Adds one to the anonymous-create counter of `fingerprint` for the UTC day of `now`
    /// (`Millis::utc_day`) and returns the new count: the database-backed rate limit. One atomic
    /// upsert, so concurrent calls each get a distinct count.
    fn count_anonymous_create(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The stack's events with `id > after`, oldest first, at most `limit`. Events outlive the
    /// stack (the last one of a torn-down stack is `stack.deleted`) until `prune` removes them.
    ///
    /// Every change writes its events in its own transaction, under the stack's lock, so ids
    /// increase in commit order per stack and `after` is a resumable cursor (`Last-Event-ID`).
    /// Kinds and data (statuses, versions and key names, never env values):
    /// - `stack.status` `{status, error}` when a change sets the stack's status;
    /// - `service.status` `{service, status, url, error}` when a job's report changes a
    ///   service, or a finished deploy fails or restores services;
    /// - `release.created` `{release, env_version}`;
    /// - `release.status` `{release, status, error}` when a release goes `live`, `failed` or
    ///   `superseded`;
    /// - `env.version` `{version, set, deleted}`, one per env version;
    /// - `stack.deleted` `{}` when the teardown removed the stack.
    fn list_events(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StackEvent>, StoreError>> + Send;

    /// Every stack that should be running (not `deleting`) and has a `live` release, with that
    /// release and the env map it recorded, for a runtime recovering after a restart. Stacks
    /// without a live release (first deploy not finished or failed) are left out.
    fn running_stacks(
        &self,
    ) -> impl Future<Output = Result<Vec<(Stack, Release, EnvMap)>, StoreError>> + Send;

    /// Housekeeping, in one transaction: deletes events with `at < events_before`, idempotency
    /// records with `expires_at <= now` and rate counters of UTC days before `now`'s. Returns
    /// the number of rows removed.
    fn prune(
        &self,
        now: Millis,
        events_before: Millis,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
