//! The SQLite implementation of Stackyard's `Store` trait: the embedded default, one file in
//! the data directory, owned by a single server process (`is_shared() == false`).
//!
//! Connections come from two pools on the same file:
//! - the **writer** pool holds exactly one connection. Every write, and every read that decides
//!   a write, runs on it inside `BEGIN IMMEDIATE`, so the SQLite write lock is taken up front
//!   (a deferred transaction that upgrades later can fail with `SQLITE_BUSY` without waiting)
//!   and in-process writers queue fairly on the pool instead of spinning in SQLite's busy
//!   handler. Its prepared statements stay cached across batches, which is what keeps the env
//!   hot path at one `BEGIN IMMEDIATE` and one `COMMIT` per batch.
//! - the **reader** pool (`StoreOptions::max_connections`) serves pure reads; WAL lets them run
//!   next to the writer. Multi-statement reads use a deferred `BEGIN` for one snapshot.
//!
//! Waits are bounded by `StoreOptions::lock_timeout` twice over: waiting for the writer
//! connection (pool acquire timeout) and waiting for another process's lock (`busy_timeout`).
//! Either expiring is `StoreError::LockTimeout`.
//!
//! Modules: `error` (mapping sqlx errors, row decoding), `audit`, `events`, `teams`,
//! `idempotency`, `stacks`, `releases`, `jobs`, `env`, `housekeeping` (expiry, rate counters,
//! pruning).

mod audit;
mod env;
mod error;
mod events;
mod housekeeping;
mod idempotency;
mod jobs;
mod releases;
mod stacks;
mod teams;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug, TeamName, TokenDigest};
use stackyard_core::model::*;
use stackyard_core::store::*;
use stackyard_core::time::Millis;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub(crate) use error::{db_err, writer_err};

/// A handle on one SQLite database. Cheap to clone (two pool handles).
///
/// Invariant: every write goes through `writer`, whose single connection serialises them in
/// this process; another process touching the file is bounded by `busy_timeout`.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    env_history: i64,
}

impl fmt::Debug for SqliteStore {
    // Never the URL or path: it may sit in a directory name that reveals more than it should.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("env_history", &self.env_history)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite:///abs/path.db`,
    /// `sqlite://relative.db`, anything sqlx accepts), in WAL mode with `synchronous=FULL`,
    /// foreign keys on and `busy_timeout = opts.lock_timeout`, and runs the embedded migrations.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<SqliteStore, StoreError> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::Unavailable("the SQLite database URL is not valid".into()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(opts.lock_timeout);
        // WAL is a property of the file: set it once, on the writer, before anything else opens
        // the file. Switching needs an exclusive lock that busy_timeout does not wait for, so
        // reader connections leave the pragma alone.
        let writer_opts = base.clone().journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.lock_timeout)
            // The one writer connection is kept forever: its statement cache is the point.
            .idle_timeout(None)
            .max_lifetime(None)
            // A round trip per transaction for a connection we own; a dead one errors anyway.
            .test_before_acquire(false)
            .connect_with(writer_opts)
            .await
            .map_err(|e| connect_err(&e))?;

        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("running the SQLite migrations failed: {e}"))
            })?;

        // A private in-memory database exists once per connection; a shared-cache one reports
        // SQLITE_LOCKED (no waiting) between connections. Either way: one pool for everything.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .acquire_timeout(opts.lock_timeout)
                .connect_with(base)
                .await
                .map_err(|e| connect_err(&e))?
        };
        Ok(SqliteStore {
            writer,
            reader,
            env_history: opts.env_history.max(1),
        })
    }

    /// The general-purpose pool (the reader pool). Tests use it to count rows and to hold the
    /// database lock from a second connection; the store's own writes never use it.
    pub fn pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// Starts a write transaction: the writer connection, then `BEGIN IMMEDIATE`, which takes
    /// SQLite's write lock before the first read so that what we read cannot change before we
    /// write. Waiting longer than `lock_timeout` for either is `LockTimeout`.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(writer_err)
    }

    /// Starts a read transaction (deferred `BEGIN`): one consistent WAL snapshot for several
    /// statements, taking no lock that blocks the writer.
    pub(crate) async fn read_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.reader.begin().await.map_err(db_err)
    }
}

fn connect_err(e: &sqlx::Error) -> StoreError {
    match error::map(e, false) {
        StoreError::Unavailable(msg) => {
            StoreError::Unavailable(format!("could not open the SQLite database: {msg}"))
        }
        other => other,
    }
}

/// `Duration` as whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn bootstrap_default_team(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.bootstrap_default_team_impl(admin, now).await
    }

    async fn create_team(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<(Team, TokenInfo), StoreError> {
        self.create_team_impl(name, max_stacks, token, ctx).await
    }

    async fn authenticate(&self, digest: &TokenDigest) -> Result<Option<Principal>, StoreError> {
        self.authenticate_impl(digest).await
    }

    async fn create_token(
        &self,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<TokenInfo, StoreError> {
        self.create_token_impl(team, token, ctx).await
    }

    async fn list_tokens(&self, team: TeamId) -> Result<Vec<TokenInfo>, StoreError> {
        self.list_tokens_impl(team).await
    }

    async fn revoke_token(
        &self,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> Result<bool, StoreError> {
        self.revoke_token_impl(team, token_id, ctx).await
    }

    async fn idempotency_begin(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        self.idempotency_begin_impl(req).await
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        self.idempotency_abandon_impl(scope, key).await
    }

    async fn create_stack(&self, new: NewStack) -> Result<Stack, CreateStackError> {
        self.create_stack_impl(new).await
    }

    async fn get_stack(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> Result<Option<StackDetail>, StoreError> {
        self.get_stack_impl(access, slug).await
    }

    async fn list_stacks(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Stack>, StoreError> {
        self.list_stacks_impl(team, limit, cursor).await
    }

    async fn count_stacks(&self, team: TeamId) -> Result<i64, StoreError> {
        self.count_stacks_impl(team).await
    }

    async fn request_deletion(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> Result<Option<Stack>, StoreError> {
        self.request_deletion_impl(access, slug, ctx).await
    }

    async fn list_releases(&self, stack: StackId) -> Result<Vec<Release>, StoreError> {
        self.list_releases_impl(stack).await
    }

    async fn list_audit(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>, StoreError> {
        self.list_audit_impl(team, filter).await
    }

    async fn claim_job(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Job>, StoreError> {
        self.claim_job_impl(worker, now, lease).await
    }

    async fn renew_job_lease(
        &self,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.renew_job_lease_impl(job, now, lease).await
    }

    async fn requeue_running_jobs(&self) -> Result<u64, StoreError> {
        self.requeue_running_jobs_impl().await
    }

    async fn deploy_context(
        &self,
        job: &Job,
    ) -> Result<Option<(Stack, Release, EnvMap)>, StoreError> {
        self.deploy_context_impl(job).await
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
        self.record_service_status_impl(job, service, status, url, error, now)
            .await
    }

    async fn finish_deploy(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.finish_deploy_impl(job, result, now).await
    }

    async fn finish_teardown(&self, job: &Job, now: Millis) -> Result<bool, StoreError> {
        self.finish_teardown_impl(job, now).await
    }

    async fn retry_job(
        &self,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> Result<bool, StoreError> {
        self.retry_job_impl(job, error, run_after, give_up).await
    }

    async fn apply_env_writes(
        &self,
        stack: StackId,
        writes: Vec<EnvWrite>,
        render: EnvResponseRenderer,
    ) -> Result<Vec<Result<EnvOutcome, EnvWriteError>>, EnvBatchError> {
        self.apply_env_writes_impl(stack, writes, render).await
    }

    async fn preview_env_write(
        &self,
        stack: StackId,
        write: EnvWrite,
    ) -> Result<Result<EnvOutcome, EnvWriteError>, EnvBatchError> {
        self.preview_env_write_impl(stack, write).await
    }

    async fn get_env(
        &self,
        stack: StackId,
        reveal: Option<AuditCtx>,
    ) -> Result<Option<EnvOutcome>, StoreError> {
        self.get_env_impl(stack, reveal).await
    }

    async fn list_env_versions(
        &self,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<EnvVersionInfo>, StoreError> {
        self.list_env_versions_impl(stack, limit, cursor).await
    }

    async fn create_release(
        &self,
        access: Access,
        slug: &StackSlug,
        release: NewRelease,
    ) -> Result<(Stack, ReleaseInfo), ReleaseError> {
        self.create_release_impl(access, slug, release).await
    }

    async fn expired_stacks(&self, now: Millis, limit: i64) -> Result<Vec<StackSlug>, StoreError> {
        self.expired_stacks_impl(now, limit).await
    }

    async fn count_anonymous_create(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> Result<i64, StoreError> {
        self.count_anonymous_create_impl(fingerprint, now).await
    }

    async fn list_events(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StackEvent>, StoreError> {
        self.list_events_impl(stack, after, limit).await
    }

    async fn running_stacks(&self) -> Result<Vec<(Stack, Release, EnvMap)>, StoreError> {
        self.running_stacks_impl().await
    }

    async fn prune(&self, now: Millis, events_before: Millis) -> Result<u64, StoreError> {
        self.prune_impl(now, events_before).await
    }
}
