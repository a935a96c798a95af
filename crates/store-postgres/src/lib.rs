//! The PostgreSQL implementation of Stackyard's `Store` trait: the production store, shared by
//! every API replica (`is_shared() == true`). Replicas coordinate only through the database:
//! row locks under `lock_timeout`, `FOR UPDATE SKIP LOCKED` job claims, unique indexes.
//!
//! Transactions and locks:
//! - Every write runs in a transaction opened by `PgStore::begin`, which sends `BEGIN` and
//!   `SET LOCAL lock_timeout` in one round trip, so any lock wait inside it is bounded by
//!   `StoreOptions::lock_timeout` and ends as `StoreError::LockTimeout`.
//! - Global lock order, always taken in this order and never in reverse: a team row, then a
//!   stack row, then job rows, then rows hanging off the stack (services, releases, env
//!   versions) and idempotency records. Any transaction takes a suffix of that chain, so two
//!   transactions can never wait on each other in a cycle.
//! - Reads take no locks; a read that needs one snapshot is written as one statement.
//!
//! A pooled connection can be dead (the server restarted, an administrator terminated it).
//! Opening a transaction and running a pure read are retried on a fresh connection when the
//! connection turns out to be lost, because neither can have changed anything; a failure in
//! the middle of a write is reported as `Unavailable` and nothing is retried.
//!
//! Modules: `error` (sqlx errors to `StoreError`, row decoding), `audit`, `events`, `teams`,
//! `idempotency`, `stacks`, `releases`, `jobs`, `env` (the batched env path, the benchmark's
//! hot path), `housekeeping` (expiry, rate counters, pruning).

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

use error::{Error, Result};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug, TeamName, TokenDigest};
use stackyard_core::model::*;
use stackyard_core::store::*;
use stackyard_core::time::Millis;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// A handle on one PostgreSQL database: a connection pool and the store settings. Cheap to
/// clone; clones share the pool.
///
/// Invariant: every write transaction starts with `SET LOCAL lock_timeout` (see `begin`), so
/// no call waits on a lock longer than the configured bound.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// `BEGIN; SET LOCAL lock_timeout = '<ms>ms'`, built once from an integer.
    begin_sql: Arc<str>,
    env_history: i64,
    /// How many times a lost connection is replaced before giving up: enough to walk past
    /// every dead connection the pool can hold.
    retries: u32,
}

impl fmt::Debug for PgStore {
    // Never the URL: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("env_history", &self.env_history)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://…`), runs the embedded migrations and returns the store.
    ///
    /// The pool holds at most `opts.max_connections` connections and waits at most
    /// `opts.lock_timeout` for one. Several servers may call this at once on one database:
    /// sqlx's migrator holds a PostgreSQL advisory lock while it migrates.
    pub async fn connect(
        url: &str,
        opts: StoreOptions,
    ) -> std::result::Result<PgStore, StoreError> {
        // sqlx's parse error can quote the URL; say only that it is wrong.
        let connect_opts = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Unavailable("the PostgreSQL URL is not valid".into()))?
            .application_name("stackyard");
        let max_connections = opts.max_connections.max(1);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(opts.lock_timeout)
            // No ping before every use (a round trip on the hot path): sqlx already pings a
            // connection when it comes back to the pool, and `begin` / `read` replace a
            // connection found dead on first use.
            .test_before_acquire(false)
            .connect_with(connect_opts)
            .await
            .map_err(|e| prefixed("could not connect to PostgreSQL", &e))?;

        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(error::migrate_message(&e)))?;

        let lock_ms = millis(opts.lock_timeout).max(1);
        Ok(PgStore {
            pool,
            begin_sql: format!("BEGIN; SET LOCAL lock_timeout = '{lock_ms}ms'").into(),
            env_history: opts.env_history.max(1),
            retries: max_connections.min(64),
        })
    }

    /// The connection pool. Tests use it to count rows, hold row locks from a second
    /// connection and terminate backends; the store's own methods never lend it out.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Opens a write transaction: `BEGIN` and `SET LOCAL lock_timeout` in one simple-query
    /// round trip. A connection that turns out to be dead is replaced (nothing has run yet).
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        let mut attempt = 0;
        loop {
            match self
                .pool
                .begin_with(AssertSqlSafe(self.begin_sql.clone()))
                .await
            {
                Ok(tx) => return Ok(tx),
                Err(e) if error::is_connection_lost(&e) && attempt < self.retries => {
                    attempt += 1;
                    tracing::info!(attempt, "replacing a lost database connection");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs a pure read on a pooled connection, on a fresh connection again if the first
    /// turns out to be dead. `f` must not write: it may run more than once.
    pub(crate) async fn read<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(PoolConnection<Postgres>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let conn = self.pool.acquire().await?;
            match f(conn).await {
                Err(Error::Db(e)) if error::is_connection_lost(&e) && attempt < self.retries => {
                    attempt += 1;
                    tracing::info!(attempt, "replacing a lost database connection");
                }
                other => return other,
            }
        }
    }
}

fn prefixed(context: &str, e: &sqlx::Error) -> StoreError {
    match error::map(e) {
        StoreError::Unavailable(msg) => StoreError::Unavailable(format!("{context}: {msg}")),
        other => other,
    }
}

/// `Duration` as whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> std::result::Result<(), StoreError> {
        self.read(|mut c| async move {
            sqlx::query("SELECT 1").execute(&mut *c).await?;
            Ok(())
        })
        .await
        .map_err(Into::into)
    }

    async fn bootstrap_default_team(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> std::result::Result<bool, StoreError> {
        Ok(self.bootstrap_default_team_impl(admin, now).await?)
    }

    async fn create_team(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> std::result::Result<(Team, TokenInfo), StoreError> {
        Ok(self.create_team_impl(name, max_stacks, token, ctx).await?)
    }

    async fn authenticate(
        &self,
        digest: &TokenDigest,
    ) -> std::result::Result<Option<Principal>, StoreError> {
        Ok(self.authenticate_impl(digest).await?)
    }

    async fn create_token(
        &self,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> std::result::Result<TokenInfo, StoreError> {
        Ok(self.create_token_impl(team, token, ctx).await?)
    }

    async fn list_tokens(&self, team: TeamId) -> std::result::Result<Vec<TokenInfo>, StoreError> {
        Ok(self.list_tokens_impl(team).await?)
    }

    async fn revoke_token(
        &self,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> std::result::Result<bool, StoreError> {
        Ok(self.revoke_token_impl(team, token_id, ctx).await?)
    }

    async fn idempotency_begin(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> std::result::Result<IdempotencyBegin, StoreError> {
        Ok(self.idempotency_begin_impl(req).await?)
    }

    async fn idempotency_abandon(
        &self,
        scope: &str,
        key: &str,
    ) -> std::result::Result<(), StoreError> {
        Ok(self.idempotency_abandon_impl(scope, key).await?)
    }

    async fn create_stack(&self, new: NewStack) -> std::result::Result<Stack, CreateStackError> {
        self.create_stack_impl(new).await
    }

    async fn get_stack(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> std::result::Result<Option<StackDetail>, StoreError> {
        Ok(self.get_stack_impl(access, slug).await?)
    }

    async fn list_stacks(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> std::result::Result<Page<Stack>, StoreError> {
        Ok(self.list_stacks_impl(team, limit, cursor).await?)
    }

    async fn count_stacks(&self, team: TeamId) -> std::result::Result<i64, StoreError> {
        Ok(self.count_stacks_impl(team).await?)
    }

    async fn request_deletion(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> std::result::Result<Option<Stack>, StoreError> {
        Ok(self.request_deletion_impl(access, slug, ctx).await?)
    }

    async fn list_releases(&self, stack: StackId) -> std::result::Result<Vec<Release>, StoreError> {
        Ok(self.list_releases_impl(stack).await?)
    }

    async fn list_audit(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> std::result::Result<Page<AuditEntry>, StoreError> {
        Ok(self.list_audit_impl(team, filter).await?)
    }

    async fn claim_job(
        &self,
        worker: &str,
        now: Millis,
        lease: Duration,
    ) -> std::result::Result<Option<Job>, StoreError> {
        Ok(self.claim_job_impl(worker, now, lease).await?)
    }

    async fn renew_job_lease(
        &self,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> std::result::Result<bool, StoreError> {
        Ok(self.renew_job_lease_impl(job, now, lease).await?)
    }

    async fn requeue_running_jobs(&self) -> std::result::Result<u64, StoreError> {
        Ok(self.requeue_running_jobs_impl().await?)
    }

    async fn deploy_context(
        &self,
        job: &Job,
    ) -> std::result::Result<Option<(Stack, Release, EnvMap)>, StoreError> {
        Ok(self.deploy_context_impl(job).await?)
    }

    async fn record_service_status(
        &self,
        job: &Job,
        service: &ServiceName,
        status: ServiceStatus,
        url: Option<&str>,
        error: Option<&str>,
        now: Millis,
    ) -> std::result::Result<bool, StoreError> {
        Ok(self
            .record_service_status_impl(job, service, status, url, error, now)
            .await?)
    }

    async fn finish_deploy(
        &self,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> std::result::Result<bool, StoreError> {
        Ok(self.finish_deploy_impl(job, result, now).await?)
    }

    async fn finish_teardown(
        &self,
        job: &Job,
        now: Millis,
    ) -> std::result::Result<bool, StoreError> {
        Ok(self.finish_teardown_impl(job, now).await?)
    }

    async fn retry_job(
        &self,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> std::result::Result<bool, StoreError> {
        Ok(self.retry_job_impl(job, error, run_after, give_up).await?)
    }

    async fn apply_env_writes(
        &self,
        stack: StackId,
        writes: Vec<EnvWrite>,
        render: EnvResponseRenderer,
    ) -> std::result::Result<Vec<std::result::Result<EnvOutcome, EnvWriteError>>, EnvBatchError>
    {
        self.apply_env_writes_impl(stack, writes, render).await
    }

    async fn preview_env_write(
        &self,
        stack: StackId,
        write: EnvWrite,
    ) -> std::result::Result<std::result::Result<EnvOutcome, EnvWriteError>, EnvBatchError> {
        self.preview_env_write_impl(stack, write).await
    }

    async fn get_env(
        &self,
        stack: StackId,
        reveal: Option<AuditCtx>,
    ) -> std::result::Result<Option<EnvOutcome>, StoreError> {
        Ok(self.get_env_impl(stack, reveal).await?)
    }

    async fn list_env_versions(
        &self,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> std::result::Result<Page<EnvVersionInfo>, StoreError> {
        Ok(self.list_env_versions_impl(stack, limit, cursor).await?)
    }

    async fn create_release(
        &self,
        access: Access,
        slug: &StackSlug,
        release: NewRelease,
    ) -> std::result::Result<(Stack, ReleaseInfo), ReleaseError> {
        self.create_release_impl(access, slug, release).await
    }

    async fn expired_stacks(
        &self,
        now: Millis,
        limit: i64,
    ) -> std::result::Result<Vec<StackSlug>, StoreError> {
        Ok(self.expired_stacks_impl(now, limit).await?)
    }

    async fn count_anonymous_create(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> std::result::Result<i64, StoreError> {
        Ok(self.count_anonymous_create_impl(fingerprint, now).await?)
    }

    async fn list_events(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> std::result::Result<Vec<StackEvent>, StoreError> {
        Ok(self.list_events_impl(stack, after, limit).await?)
    }

    async fn running_stacks(
        &self,
    ) -> std::result::Result<Vec<(Stack, Release, EnvMap)>, StoreError> {
        Ok(self.running_stacks_impl().await?)
    }

    async fn prune(
        &self,
        now: Millis,
        events_before: Millis,
    ) -> std::result::Result<u64, StoreError> {
        Ok(self.prune_impl(now, events_before).await?)
    }
}
