//! The operations both stores run the same way, generic over the sqlx database, with the
//! store's statements ([`Sql`]). Rust has no trait aliases, so the sqlx bounds that make the
//! code generic are stated once, on the one `impl` block below.
//!
//! A lifecycle step takes the transaction the store opened (so the store decides how it
//! locks), reads its inputs under the lock, asks `stackyard_core::lifecycle` for the plan,
//! writes it and commits. Reads take a connection (the store decides whether that is a
//! snapshot transaction, and the PostgreSQL store retries them on a fresh connection).

use crate::error::{Error, Result, corrupt, is_unique_violation, to_json};
use crate::rows::*;
use crate::seal::{EnvCodec, Opening};
use crate::sql::Sql;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Transaction, Type};
use stackyard_core::crypto::{DataKey, KeyOwner, Keyring, ValueAd};
use stackyard_core::domain::{Domain, DomainStatus};
use stackyard_core::env::EnvMap;
use stackyard_core::envlog::{self, BatchPlan, ChangeValues};
use stackyard_core::ids::ResourceToken;
use stackyard_core::ids::{
    EnvironmentName, ServiceName, StackSlug, TeamName, TokenDigest, VaultKey,
};
use stackyard_core::lifecycle::{
    self, AuditRecord, JobEnd, JobWrite, Locked, Plan, ReleaseWrite, ServiceWrite, StackWrite,
    create::TeamCap,
    status::{Report, Supervised},
};
use stackyard_core::model::*;
use stackyard_core::resource::{self, NewResource, Resource, ResourceStatus};
use stackyard_core::store::{
    Approval, ApprovalError, ApprovalStatus, DomainCertificate, DomainError, DomainRoute,
    NewCertificate, NewDomain, WrappedKey, WrappedRow,
};
use stackyard_core::store::{
    AuditFilter, CreateResourceError, CreateStackError, DeployResult, EnvBatchError, EnvOp,
    EnvWrite, EnvWriteResult, FamilyMember, IDEMPOTENCY_TTL, IdempotencyRecord, Idempotent,
    NewRelease, NewStack, NewToken, PromoteAction, PromoteError, Promoted, Promotion, ReleaseError,
    RestartError, RestartQueued, StackFilter, StoreError, parse_id_cursor, parse_stack_cursor,
    stack_cursor,
};
use stackyard_core::time::Millis;
use stackyard_core::vault::{self, CopyOutcome, VaultCopy, VaultRefError, VaultValue, VaultWrite};
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::time::Duration;

/// An env batch planned under the stack's lock: the plan and whose stack it is (for the audit
/// and event rows the store writes).
#[derive(Debug)]
pub struct EnvBatch {
    pub team_id: Option<TeamId>,
    pub slug: StackSlug,
    pub plan: BatchPlan,
    /// How the stack's documents are stored: the writer stores `sealed_*`, never the plan's
    /// plain values.
    pub codec: EnvCodec,
}

impl EnvBatch {
    /// The map after the batch, as stored.
    pub fn sealed_map(&self) -> Result<String> {
        self.codec.seal_map(&self.plan.map, self.plan.version)
    }

    /// A version record's change, as stored.
    pub fn sealed_changes(&self, r: &envlog::VersionRecord) -> Result<String> {
        self.codec.seal_changes(&r.values, r.version)
    }

    /// A version record's snapshot, as stored.
    pub fn sealed_snapshot(&self, r: &envlog::VersionRecord) -> Result<Option<String>> {
        r.snapshot
            .as_ref()
            .map(|m| self.codec.seal_map(m, r.version))
            .transpose()
    }
}

/// How a store writes a planned env batch — the hot path, in its own statements: the version,
/// audit and event rows of `batch.plan.records`, the stack's new map and version (when there
/// are records), the idempotency completions, and the pruning of versions below
/// `prune_below`.
pub trait EnvBatchWriter<DB: Database>: Sync {
    fn write(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        batch: &EnvBatch,
        now: Millis,
        prune_below: Option<i64>,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// How a lifecycle step names its stack.
#[derive(Debug, Clone, Copy)]
pub enum StackRef<'a> {
    /// As a caller sees it: by slug, filtered by access.
    Slug(Access, &'a StackSlug),
    /// As a job names it.
    Id(StackId),
}

/// The shared operations over database `DB`, with one store's statements. A `const` per store.
pub struct Ops<DB> {
    sql: &'static Sql,
    _db: PhantomData<fn() -> DB>,
}

impl<DB> Ops<DB> {
    pub const fn new(sql: &'static Sql) -> Self {
        Self {
            sql,
            _db: PhantomData,
        }
    }
}

/// The `team_id` a caller may see: NULL (anonymous) or its team's.
fn access_team(access: Access) -> Option<i64> {
    match access {
        Access::Anonymous => None,
        Access::Team(t) => Some(t.0),
    }
}

/// `Duration` as whole milliseconds, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<DB> Ops<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
{
    /// The stack (locked), its services and its open releases; `None` if the caller may not
    /// see a stack by that slug, or none has that id.
    pub async fn lock_stack(
        &self,
        conn: &mut DB::Connection,
        by: StackRef<'_>,
    ) -> Result<Option<Locked>> {
        let row: Option<StackRow> = match by {
            StackRef::Slug(access, slug) => {
                sqlx::query_as(self.sql.lock_stack_by_slug)
                    .bind(slug.as_str())
                    .bind(access_team(access))
                    .fetch_optional(&mut *conn)
                    .await?
            }
            StackRef::Id(id) => {
                sqlx::query_as(self.sql.lock_stack_by_id)
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await?
            }
        };
        let Some(row) = row else { return Ok(None) };
        let stack = Stack::try_from(row)?;
        let services: Vec<ServiceRow> = sqlx::query_as(self.sql.services_of)
            .bind(stack.id.0)
            .fetch_all(&mut *conn)
            .await?;
        let releases: Vec<ReleaseRow> = sqlx::query_as(self.sql.open_releases)
            .bind(stack.id.0)
            .bind(stack.release)
            .fetch_all(&mut *conn)
            .await?;
        Ok(Some(Locked {
            stack,
            services: decode(services)?,
            releases: decode(releases)?,
        }))
    }

    /// Writes `plan` for the stack `target` (the locked one; `None` when the plan inserts it)
    /// and returns the stack's id. Plain sequential statements, in the plan's order.
    pub async fn write_plan(
        &self,
        conn: &mut DB::Connection,
        target: Option<&Stack>,
        plan: &Plan,
    ) -> Result<StackId> {
        let at = plan.at.0;
        let (id, slug): (StackId, &StackSlug) = match (&plan.stack, target) {
            (
                Some(StackWrite::Insert {
                    stack,
                    fingerprint,
                    manifest,
                }),
                _,
            ) => {
                let id: i64 = sqlx::query_scalar(self.sql.insert_stack)
                    .bind(stack.slug.as_str())
                    .bind(stack.name.as_str())
                    .bind(stack.environment.as_str())
                    .bind(stack.team_id.map(|t| t.0))
                    .bind(fingerprint.as_deref())
                    .bind(stack.tier.as_str())
                    .bind(stack.status.as_str())
                    .bind(stack.error.as_deref())
                    .bind(stack.release)
                    .bind(stack.op_generation)
                    .bind(manifest.as_str())
                    .bind(stack.created_at.0)
                    .bind(stack.updated_at.0)
                    .bind(stack.expires_at.map(|t| t.0))
                    .fetch_one(&mut *conn)
                    .await?;
                (StackId(id), &stack.slug)
            }
            (_, Some(s)) => (s.id, &s.slug),
            (_, None) => return Err(corrupt("a lifecycle plan names no stack")),
        };
        match &plan.stack {
            Some(StackWrite::Update { stack, manifest }) => {
                sqlx::query(self.sql.update_stack)
                    .bind(id.0)
                    .bind(stack.status.as_str())
                    .bind(stack.error.as_deref())
                    .bind(stack.release)
                    .bind(stack.op_generation)
                    .bind(stack.updated_at.0)
                    .bind(manifest.as_deref())
                    .execute(&mut *conn)
                    .await?;
            }
            Some(StackWrite::Delete) => {
                sqlx::query(self.sql.delete_stack)
                    .bind(id.0)
                    .execute(&mut *conn)
                    .await?;
            }
            Some(StackWrite::Insert { .. }) | None => {}
        }
        for w in &plan.services {
            match w {
                ServiceWrite::Put { position, service } => {
                    sqlx::query(self.sql.put_service)
                        .bind(id.0)
                        .bind(service.name.as_str())
                        .bind(*position)
                        .bind(service.status.as_str())
                        .bind(service.expose)
                        .bind(i64::from(service.port))
                        .bind(service.url.as_deref())
                        .bind(service.error.as_deref())
                        .bind(service.restarts)
                        .bind(service.last_exit.as_deref())
                        .bind(at)
                        .execute(&mut *conn)
                        .await?
                }
                ServiceWrite::Remove(name) => {
                    sqlx::query(self.sql.remove_service)
                        .bind(id.0)
                        .bind(name.as_str())
                        .execute(&mut *conn)
                        .await?
                }
            };
        }
        for w in &plan.releases {
            match w {
                ReleaseWrite::Insert { version, services } => {
                    sqlx::query(self.sql.insert_release)
                        .bind(id.0)
                        .bind(*version)
                        .bind(to_json(services)?)
                        .bind(at)
                        .execute(&mut *conn)
                        .await?;
                    // A service run from an image has no artifact (an empty digest).
                    let digests: BTreeSet<&str> = services
                        .iter()
                        .map(|s| s.artifact.as_str())
                        .filter(|d| !d.is_empty())
                        .collect();
                    for digest in digests {
                        sqlx::query(self.sql.insert_release_artifact)
                            .bind(id.0)
                            .bind(*version)
                            .bind(digest)
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                ReleaseWrite::SetStatus { version, status } => {
                    sqlx::query(self.sql.set_release_status)
                        .bind(id.0)
                        .bind(*version)
                        .bind(status.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        if let Some(actor) = &plan.env_version_zero {
            sqlx::query(self.sql.insert_env_version_zero)
                .bind(id.0)
                .bind(at)
                .bind(actor.as_str())
                .execute(&mut *conn)
                .await?;
        }
        for w in &plan.jobs {
            match w {
                JobWrite::SupersedeQueued => {
                    sqlx::query(self.sql.supersede_queued_jobs)
                        .bind(id.0)
                        .bind(at)
                        .execute(&mut *conn)
                        .await?
                }
                JobWrite::Queue {
                    kind,
                    generation,
                    release,
                    service,
                } => {
                    sqlx::query(self.sql.queue_job)
                        .bind(id.0)
                        .bind(slug.as_str())
                        .bind(kind.as_str())
                        .bind(*generation)
                        .bind(*release)
                        .bind(at)
                        .bind(service.as_ref().map(ServiceName::as_str))
                        .execute(&mut *conn)
                        .await?
                }
            };
        }
        // In digest order: two transactions inserting the same new digests wait on them in
        // one order (PostgreSQL), never in a cycle.
        let mut artifacts: Vec<&(String, i64)> = plan.artifacts.iter().collect();
        artifacts.sort();
        for (digest, size) in artifacts {
            sqlx::query(self.sql.insert_artifact)
                .bind(digest.as_str())
                .bind(*size)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        if let Some(audit) = &plan.audit {
            self.insert_audit(conn, audit).await?;
        }
        self.insert_events(conn, id, slug, plan.at, &plan.events)
            .await?;
        if let Some(record) = &plan.idempotency {
            self.complete_idempotency(conn, record, plan.at).await?;
        }
        Ok(id)
    }

    pub async fn insert_audit(&self, conn: &mut DB::Connection, a: &AuditRecord) -> Result<()> {
        sqlx::query(self.sql.insert_audit)
            .bind(a.at.0)
            .bind(a.team_id.map(|t| t.0))
            .bind(a.actor.as_str())
            .bind(a.kind)
            .bind(a.stack_slug.as_ref().map(StackSlug::as_str))
            .bind(a.request_id.as_deref())
            .bind(a.metadata.to_string())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Writes `events` in order: their ids follow it.
    pub async fn insert_events(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        slug: &StackSlug,
        at: Millis,
        events: &[NewEvent],
    ) -> Result<()> {
        for e in events {
            sqlx::query(self.sql.insert_event)
                .bind(stack.0)
                .bind(slug.as_str())
                .bind(e.kind)
                .bind(e.data.to_string())
                .bind(at.0)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Stores the answer of an idempotent request, in the transaction of its change. A record
    /// whose reservation is gone (expired and dropped) is inserted done for
    /// [`IDEMPOTENCY_TTL`], with an empty request hash: a replay of it answers `Mismatch`.
    pub async fn complete_idempotency(
        &self,
        conn: &mut DB::Connection,
        record: &IdempotencyRecord,
        now: Millis,
    ) -> Result<()> {
        sqlx::query(self.sql.complete_idempotency)
            .bind(record.scope.as_str())
            .bind(record.key.as_str())
            .bind(i64::from(record.status))
            .bind(record.body.as_str())
            .bind(now.0)
            .bind(now.saturating_add_ms(millis(IDEMPOTENCY_TTL)).0)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Ends a claimed job as `end` says, fenced by its claim; false when the claim was lost.
    pub async fn end_job(
        &self,
        conn: &mut DB::Connection,
        job: &Job,
        end: &JobEnd,
        now: Millis,
    ) -> Result<bool> {
        let q = match end {
            JobEnd::Done => sqlx::query_scalar::<DB, i64>(self.sql.close_job)
                .bind(job.id)
                .bind(job.claim.as_str())
                .bind(now.0),
            JobEnd::Retry { run_after, error } => sqlx::query_scalar(self.sql.requeue_job)
                .bind(job.id)
                .bind(job.claim.as_str())
                .bind(error.as_str())
                .bind(run_after.0),
            JobEnd::GiveUp { error } => sqlx::query_scalar(self.sql.fail_job)
                .bind(job.id)
                .bind(job.claim.as_str())
                .bind(error.as_str())
                .bind(now.0),
        };
        Ok(q.fetch_optional(&mut *conn).await?.is_some())
    }

    async fn commit(tx: Transaction<'static, DB>) -> Result<()> {
        tx.commit().await?;
        Ok(())
    }

    /// Writes `plan` for `stack` (unless it writes nothing) and commits.
    async fn commit_plan(
        &self,
        mut tx: Transaction<'static, DB>,
        stack: Option<&Stack>,
        plan: &Plan,
    ) -> Result<Option<StackId>> {
        let id = if plan.is_empty() {
            None
        } else {
            Some(self.write_plan(&mut tx, stack, plan).await?)
        };
        Self::commit(tx).await?;
        Ok(id)
    }

    // ---- lifecycle steps ----

    /// A capped team's limit and count, read under the team's lock; `None` for no cap.
    async fn team_cap(&self, conn: &mut DB::Connection, team: TeamId) -> Result<Option<TeamCap>> {
        let cap: Option<Option<i64>> = sqlx::query_scalar(self.sql.team_cap)
            .bind(team.0)
            .fetch_optional(&mut *conn)
            .await?;
        match cap {
            None => Err(corrupt("the stack's team does not exist")),
            // Uncapped teams' creates never wait on each other.
            Some(None) => Ok(None),
            Some(Some(_)) => {
                // Read again under the lock: the cap itself may have changed. The count runs
                // after the lock was granted, so it sees every stack a concurrent creator of
                // the team committed before us.
                let max: Option<i64> = sqlx::query_scalar(self.sql.lock_team_cap)
                    .bind(team.0)
                    .fetch_one(&mut *conn)
                    .await?;
                let Some(max) = max else { return Ok(None) };
                let count: i64 = sqlx::query_scalar(self.sql.count_team_stacks)
                    .bind(team.0)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(Some(TeamCap { max, count }))
            }
        }
    }

    /// `StackStore::create_stack`. Lock order: a capped team's row, then only new rows.
    pub async fn create_stack(
        &self,
        mut tx: Transaction<'static, DB>,
        new: NewStack,
    ) -> Result<Stack, CreateStackError> {
        let cap = match new.team_id {
            Some(team) => self.team_cap(&mut tx, team).await?,
            None => None,
        };
        // Before anything is written: a reference that cannot be resolved fails the create.
        let refs = self
            .vault_versions(
                &mut tx,
                new.team_id,
                &new.environment,
                &EnvMap::new(),
                &new.services,
            )
            .await??;
        let planned = lifecycle::create::plan(new, cap)?;
        let unique = |e: Error| {
            if is_unique_violation(&e, "stacks_slug_key") {
                StoreError::Conflict("stack").into()
            } else {
                e
            }
        };
        let id = self
            .write_plan(&mut tx, None, &planned.plan)
            .await
            .map_err(unique)?;
        self.record_vault_refs(&mut tx, id, &planned.plan, &refs)
            .await?;
        Self::commit(tx).await.map_err(unique)?;
        Ok(Stack {
            id,
            ..planned.outcome
        })
    }

    /// `StackStore::request_deletion`. Lock: the stack row, then its queued jobs.
    pub async fn request_deletion(
        &self,
        mut tx: Transaction<'static, DB>,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> Result<Option<Stack>> {
        let Some(locked) = self
            .lock_stack(&mut tx, StackRef::Slug(access, slug))
            .await?
        else {
            return Ok(None);
        };
        let planned = lifecycle::delete::request(&locked, ctx);
        self.commit_plan(tx, Some(&locked.stack), &planned.plan)
            .await?;
        Ok(Some(planned.outcome))
    }

    /// `StackStore::create_release`. Lock: the stack row, then its jobs, then the rows hanging
    /// off it; `NotFound` and `Deleting` are decided under it.
    pub async fn create_release(
        &self,
        mut tx: Transaction<'static, DB>,
        access: Access,
        slug: &StackSlug,
        new: NewRelease,
        keyring: &Keyring,
    ) -> Result<(Stack, ReleaseInfo), ReleaseError> {
        let Some(locked) = self
            .lock_stack(&mut tx, StackRef::Slug(access, slug))
            .await?
        else {
            return Err(ReleaseError::NotFound);
        };
        let planned = lifecycle::release::plan(&locked, new)?;
        // The release copies the stack's env map as it is under this lock; its references
        // and the manifest's are resolved against the same snapshot of the vault.
        let (env, env_version) = self
            .env_head(&mut tx, locked.stack.id, false, keyring)
            .await?
            .map(|(h, _)| (h.env, h.version))
            .unwrap_or_default();
        let services: Vec<ReleaseService> = planned
            .plan
            .releases
            .iter()
            .flat_map(|r| match r {
                ReleaseWrite::Insert { services, .. } => services.clone(),
                ReleaseWrite::SetStatus { .. } => Vec::new(),
            })
            .collect();
        let refs = self
            .vault_versions(
                &mut tx,
                locked.stack.team_id,
                &locked.stack.environment,
                &env,
                &services,
            )
            .await??;
        let refs = self
            .rolled_back_vault_refs(&mut tx, &locked.stack, env_version, refs)
            .await?;
        self.write_plan(&mut tx, Some(&locked.stack), &planned.plan)
            .await?;
        self.record_vault_refs(&mut tx, locked.stack.id, &planned.plan, &refs)
            .await?;
        Self::commit(tx).await?;
        Ok(planned.outcome)
    }

    /// `JobStore::record_service_status`. Lock: the stack row, before the generation check,
    /// so a deletion or a redeploy cannot slip in between the check and the write.
    #[allow(clippy::too_many_arguments)] // the trait method's arguments, as they come
    pub async fn record_service_status(
        &self,
        mut tx: Transaction<'static, DB>,
        job: &Job,
        service: &ServiceName,
        status: ServiceStatus,
        url: Option<&str>,
        error: Option<&str>,
        now: Millis,
    ) -> Result<bool> {
        let report = Report {
            service,
            status,
            url,
            error,
        };
        let locked = self.lock_stack(&mut tx, StackRef::Id(job.stack_id)).await?;
        let Some(locked) = locked else {
            return Ok(false);
        };
        let plan = match job.kind {
            JobKind::Restart => lifecycle::restart::record(&locked, job, report, now),
            JobKind::Deploy | JobKind::Teardown => {
                lifecycle::status::record(&locked, job, report, now)
            }
        };
        let Some(plan) = plan else {
            return Ok(false);
        };
        self.commit_plan(tx, Some(&locked.stack), &plan).await?;
        Ok(true)
    }

    pub async fn record_job_event(
        &self,
        mut tx: Transaction<'static, DB>,
        job: &Job,
        event: NewEvent,
        now: Millis,
    ) -> Result<bool> {
        let Some(locked) = self.lock_stack(&mut tx, StackRef::Id(job.stack_id)).await? else {
            return Ok(false);
        };
        let Some(plan) = lifecycle::status::progress(&locked, job, event, now) else {
            return Ok(false);
        };
        self.commit_plan(tx, Some(&locked.stack), &plan).await?;
        Ok(true)
    }

    pub async fn record_supervised_status(
        &self,
        mut tx: Transaction<'static, DB>,
        stack: StackId,
        report: Supervised<'_>,
        now: Millis,
    ) -> Result<bool> {
        let Some(locked) = self.lock_stack(&mut tx, StackRef::Id(stack)).await? else {
            return Ok(false);
        };
        let Some(plan) = lifecycle::status::supervise(&locked, report, now) else {
            return Ok(false);
        };
        self.commit_plan(tx, Some(&locked.stack), &plan).await?;
        Ok(true)
    }

    /// Ends a claimed job (`end`) and writes what the step decides from the stack locked
    /// first (lock order: the stack row, then the job row); false when the claim was lost.
    async fn end_and_plan(
        &self,
        mut tx: Transaction<'static, DB>,
        job: &Job,
        end: JobEnd,
        lock: bool,
        now: Millis,
        step: impl FnOnce(Option<&Locked>) -> Plan,
    ) -> Result<bool> {
        let locked = if lock {
            self.lock_stack(&mut tx, StackRef::Id(job.stack_id)).await?
        } else {
            None
        };
        if !self.end_job(&mut tx, job, &end, now).await? {
            return Ok(false);
        }
        let plan = step(locked.as_ref());
        self.commit_plan(tx, locked.as_ref().map(|l| &l.stack), &plan)
            .await?;
        Ok(true)
    }

    /// Of `digests`, those no release uses any more; their rows are deleted. Each row is
    /// locked before the check (in digest order, so two teardowns sharing artifacts never wait
    /// in a cycle): a create upserting the same digest holds that lock until it commits, and
    /// the check, a statement of its own, then sees the release it wrote (PostgreSQL's read
    /// committed takes a fresh snapshot per statement).
    async fn drop_unused_artifacts(
        &self,
        conn: &mut DB::Connection,
        digests: Vec<String>,
    ) -> Result<Vec<String>> {
        let mut unused = Vec::new();
        for digest in digests {
            sqlx::query(self.sql.lock_artifact)
                .bind(digest.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            let in_use = sqlx::query(self.sql.artifact_in_use)
                .bind(digest.as_str())
                .fetch_optional(&mut *conn)
                .await?
                .is_some();
            if !in_use {
                sqlx::query(self.sql.delete_artifact)
                    .bind(digest.as_str())
                    .execute(&mut *conn)
                    .await?;
                unused.push(digest);
            }
        }
        Ok(unused)
    }

    /// `JobStore::finish_deploy`.
    pub async fn finish_deploy(
        &self,
        tx: Transaction<'static, DB>,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool> {
        self.end_and_plan(tx, job, JobEnd::Done, true, now, |l| {
            lifecycle::deploy::finish(l, job, &result, now)
        })
        .await
    }

    /// `JobStore::finish_teardown`. Lock order: the stack row, the job row, then the rows of
    /// the artifacts its releases used (`drop_unused_artifacts`).
    pub async fn finish_teardown(
        &self,
        mut tx: Transaction<'static, DB>,
        job: &Job,
        now: Millis,
    ) -> Result<Option<Vec<String>>> {
        let locked = self.lock_stack(&mut tx, StackRef::Id(job.stack_id)).await?;
        if !self.end_job(&mut tx, job, &JobEnd::Done, now).await? {
            return Ok(None);
        }
        // Read before the plan's delete cascades to the stack's release rows.
        let used: Vec<String> = match &locked {
            Some(l) => {
                sqlx::query_scalar(self.sql.artifacts_of_stack)
                    .bind(l.stack.id.0)
                    .fetch_all(&mut *tx)
                    .await?
            }
            None => Vec::new(),
        };
        let stack = locked.as_ref().map(|l| &l.stack);
        let plan = lifecycle::delete::finish(stack, now);
        if !plan.is_empty() {
            self.write_plan(&mut tx, stack, &plan).await?;
        }
        let unused = self.drop_unused_artifacts(&mut tx, used).await?;
        Self::commit(tx).await?;
        Ok(Some(unused))
    }

    /// `Housekeeping::sweep_artifacts`: deletes the rows of artifacts no release uses (left
    /// by a teardown that failed after its commit, or by a release deleted before this table
    /// was tracked) and returns every digest a release uses. Lock: each unused row, as in a
    /// teardown.
    pub async fn sweep_artifacts(
        &self,
        mut tx: Transaction<'static, DB>,
    ) -> Result<BTreeSet<String>> {
        let unused: Vec<String> = sqlx::query_scalar(self.sql.unused_artifacts)
            .fetch_all(&mut *tx)
            .await?;
        self.drop_unused_artifacts(&mut tx, unused).await?;
        let used: Vec<String> = sqlx::query_scalar(self.sql.used_artifacts)
            .fetch_all(&mut *tx)
            .await?;
        Self::commit(tx).await?;
        Ok(used.into_iter().collect())
    }

    /// `ArtifactStore::put_artifact_blob`. Touches an existing row first, so the bytes of a
    /// tarball stored before are not sent again; the upsert covers a row that is absent, or
    /// inserted meanwhile by another replica. Lock: the one blob row.
    pub async fn put_artifact_blob(
        &self,
        mut tx: Transaction<'static, DB>,
        digest: &str,
        bytes: &[u8],
        now: Millis,
    ) -> Result<()> {
        let touched: Option<String> = sqlx::query_scalar(
            "UPDATE artifact_blobs SET touched_at = $2 WHERE digest = $1 RETURNING digest",
        )
        .bind(digest)
        .bind(now.0)
        .fetch_optional(&mut *tx)
        .await?;
        if touched.is_none() {
            sqlx::query(
                "INSERT INTO artifact_blobs (digest, bytes, created_at, touched_at) \
                 VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (digest) DO UPDATE SET touched_at = excluded.touched_at",
            )
            .bind(digest)
            .bind(bytes)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
        Self::commit(tx).await
    }

    /// `ArtifactStore::artifact_blob`.
    pub async fn artifact_blob(
        &self,
        conn: &mut DB::Connection,
        digest: &str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM artifact_blobs WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    /// `ArtifactStore::delete_artifact_blobs` (`digests: None`: every blob, the sweep). Each
    /// delete re-checks the use in its own statement (a fresh snapshot per statement under
    /// PostgreSQL's read committed): a release committed since the caller decided keeps its
    /// blob; one still committing is protected by `touched_before`. Locks: the rows deleted.
    pub async fn delete_artifact_blobs(
        &self,
        mut tx: Transaction<'static, DB>,
        digests: Option<&[String]>,
        touched_before: Millis,
    ) -> Result<u64> {
        let mut deleted: Vec<String> = Vec::new();
        match digests {
            None => {
                deleted = sqlx::query_scalar(
                    "DELETE FROM artifact_blobs WHERE touched_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM release_artifacts r WHERE r.digest = artifact_blobs.digest) \
                     RETURNING digest",
                )
                .bind(touched_before.0)
                .fetch_all(&mut *tx)
                .await?;
            }
            Some(digests) => {
                for digest in digests {
                    let gone: Option<String> = sqlx::query_scalar(
                        "DELETE FROM artifact_blobs WHERE digest = $1 AND touched_at < $2 \
                         AND NOT EXISTS (SELECT 1 FROM release_artifacts r \
                                         WHERE r.digest = artifact_blobs.digest) \
                         RETURNING digest",
                    )
                    .bind(digest.as_str())
                    .bind(touched_before.0)
                    .fetch_optional(&mut *tx)
                    .await?;
                    deleted.extend(gone);
                }
            }
        }
        Self::commit(tx).await?;
        Ok(deleted.len() as u64)
    }

    /// `JobStore::retry_job`. The stack is locked only when a deploy is given up, which ends
    /// the stack's operation. The trait gives no separate `now`: `run_after` stamps the rows
    /// (when giving up it is "now" by construction).
    pub async fn retry_job(
        &self,
        tx: Transaction<'static, DB>,
        job: &Job,
        error: &str,
        run_after: Millis,
        give_up: bool,
    ) -> Result<bool> {
        let error = error.to_owned();
        let (end, lock) = if give_up {
            let lock = job.kind == JobKind::Deploy;
            (
                JobEnd::GiveUp {
                    error: error.clone(),
                },
                lock,
            )
        } else {
            (
                JobEnd::Retry {
                    run_after,
                    error: error.clone(),
                },
                false,
            )
        };
        self.end_and_plan(tx, job, end, lock, run_after, |l| {
            lifecycle::deploy::give_up(l, job, &error, run_after)
        })
        .await
    }

    /// `StackStore::request_restart`. Lock: the stack row, then the rows hanging off it;
    /// every refusal is decided under it.
    pub async fn request_restart(
        &self,
        mut tx: Transaction<'static, DB>,
        access: Access,
        slug: &StackSlug,
        service: Option<&ServiceName>,
        ctx: AuditCtx,
    ) -> Result<RestartQueued, RestartError> {
        let Some(locked) = self
            .lock_stack(&mut tx, StackRef::Slug(access, slug))
            .await?
        else {
            return Err(RestartError::NotFound);
        };
        let planned = lifecycle::restart::request(&locked, service, ctx)?;
        self.commit_plan(tx, Some(&locked.stack), &planned.plan)
            .await?;
        Ok(planned.outcome)
    }

    /// `JobStore::finish_restart`.
    pub async fn finish_restart(
        &self,
        tx: Transaction<'static, DB>,
        job: &Job,
        result: DeployResult,
        now: Millis,
    ) -> Result<bool> {
        self.end_and_plan(tx, job, JobEnd::Done, true, now, |l| {
            lifecycle::restart::finish(l, job, &result, now)
        })
        .await
    }

    /// `JobStore::renew_job_lease`: one fenced statement. Lock: the job row.
    pub async fn renew_job_lease(
        &self,
        mut tx: Transaction<'static, DB>,
        job: &Job,
        now: Millis,
        lease: Duration,
    ) -> Result<bool> {
        let id: Option<i64> = sqlx::query_scalar(self.sql.renew_job_lease)
            .bind(job.id)
            .bind(job.claim.as_str())
            .bind(now.saturating_add_ms(millis(lease)).0)
            .bind(now.0)
            .fetch_optional(&mut *tx)
            .await?;
        Self::commit(tx).await?;
        Ok(id.is_some())
    }

    /// `JobStore::requeue_running_jobs`: one statement. Only for a store no other server
    /// shares, at start-up.
    pub async fn requeue_running_jobs(&self, mut tx: Transaction<'static, DB>) -> Result<u64> {
        let ids: Vec<i64> = sqlx::query_scalar(self.sql.requeue_running_jobs)
            .fetch_all(&mut *tx)
            .await?;
        Self::commit(tx).await?;
        Ok(ids.len() as u64)
    }

    // ---- teams and tokens ----

    async fn insert_token(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        token: &NewToken,
        now: Millis,
    ) -> Result<TokenInfo> {
        let id: i64 = sqlx::query_scalar(self.sql.insert_token)
            .bind(team.0)
            .bind(token.name.as_str())
            .bind(token.digest.0.as_str())
            .bind(now.0)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| {
                let e = e.into();
                if is_unique_violation(&e, "tokens_digest_key") {
                    StoreError::Conflict("token").into()
                } else {
                    e
                }
            })?;
        Ok(TokenInfo {
            id,
            team_id: team,
            name: token.name.clone(),
            created_at: now,
        })
    }

    async fn insert_team(
        &self,
        conn: &mut DB::Connection,
        name: &str,
        max_stacks: Option<i64>,
        now: Millis,
    ) -> Result<Option<Team>> {
        let row: Option<TeamRow> = sqlx::query_as(self.sql.insert_team)
            .bind(name)
            .bind(max_stacks)
            .bind(now.0)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.map(Team::from))
    }

    /// `TeamStore::bootstrap_default_team`.
    pub async fn bootstrap_default_team(
        &self,
        mut tx: Transaction<'static, DB>,
        admin: NewToken,
        now: Millis,
    ) -> Result<bool> {
        let any: Option<i64> = sqlx::query_scalar(self.sql.any_team)
            .fetch_optional(&mut *tx)
            .await?;
        if any.is_some() {
            return Ok(false);
        }
        let Some(team) = self.insert_team(&mut tx, "default", None, now).await? else {
            return Ok(false);
        };
        self.insert_token(&mut tx, team.id, &admin, now).await?;
        self.insert_audit(&mut tx, &lifecycle::team::bootstrapped(team.id, now))
            .await?;
        Self::commit(tx).await?;
        Ok(true)
    }

    /// `TeamStore::create_team`.
    pub async fn create_team(
        &self,
        mut tx: Transaction<'static, DB>,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<(Team, TokenInfo)> {
        let Some(team) = self
            .insert_team(&mut tx, name.as_str(), max_stacks, ctx.now)
            .await?
        else {
            return Err(StoreError::Conflict("team").into());
        };
        let info = self.insert_token(&mut tx, team.id, &token, ctx.now).await?;
        let audit = lifecycle::team::created(team.id, &team.name, max_stacks, &ctx);
        self.insert_audit(&mut tx, &audit).await?;
        Self::commit(tx).await?;
        Ok((team, info))
    }

    /// `TeamStore::create_token`.
    pub async fn create_token(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<TokenInfo> {
        let exists: Option<i64> = sqlx::query_scalar(self.sql.team_exists)
            .bind(team.0)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(corrupt("the token's team does not exist"));
        }
        let info = self.insert_token(&mut tx, team, &token, ctx.now).await?;
        self.insert_audit(&mut tx, &lifecycle::team::token_created(&info, &ctx))
            .await?;
        Self::commit(tx).await?;
        Ok(info)
    }

    /// `TeamStore::revoke_token`.
    pub async fn revoke_token(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> Result<bool> {
        let revoked: Option<i64> = sqlx::query_scalar(self.sql.revoke_token)
            .bind(token_id)
            .bind(team.0)
            .bind(ctx.now.0)
            .fetch_optional(&mut *tx)
            .await?;
        if revoked.is_none() {
            return Ok(false);
        }
        let audit = lifecycle::team::token_revoked(team, token_id, &ctx);
        self.insert_audit(&mut tx, &audit).await?;
        Self::commit(tx).await?;
        Ok(true)
    }

    /// `TeamStore::authenticate`.
    pub async fn authenticate(
        &self,
        conn: &mut DB::Connection,
        digest: &TokenDigest,
    ) -> Result<Option<Principal>> {
        let row: Option<PrincipalRow> = sqlx::query_as(self.sql.authenticate)
            .bind(digest.0.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.map(Principal::from))
    }

    /// `TeamStore::create_session`: one insert, in the transaction the store opened for it.
    pub async fn create_session(
        &self,
        mut tx: Transaction<'static, DB>,
        session: &TokenDigest,
        token_id: i64,
        now: Millis,
        expires_at: Millis,
    ) -> Result<()> {
        sqlx::query(self.sql.insert_session)
            .bind(session.0.as_str())
            .bind(token_id)
            .bind(now.0)
            .bind(expires_at.0)
            .execute(&mut *tx)
            .await?;
        Self::commit(tx).await
    }

    /// `TeamStore::session_principal`.
    pub async fn session_principal(
        &self,
        conn: &mut DB::Connection,
        session: &TokenDigest,
        now: Millis,
    ) -> Result<Option<Principal>> {
        let row: Option<PrincipalRow> = sqlx::query_as(self.sql.session_principal)
            .bind(session.0.as_str())
            .bind(now.0)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.map(Principal::from))
    }

    /// `TeamStore::delete_session`.
    pub async fn delete_session(
        &self,
        mut tx: Transaction<'static, DB>,
        session: &TokenDigest,
    ) -> Result<bool> {
        let deleted: Option<String> = sqlx::query_scalar(self.sql.delete_session)
            .bind(session.0.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        Self::commit(tx).await?;
        Ok(deleted.is_some())
    }

    /// `TeamStore::list_tokens`.
    pub async fn list_tokens(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
    ) -> Result<Vec<TokenInfo>> {
        let rows: Vec<TokenRow> = sqlx::query_as(self.sql.list_tokens)
            .bind(team.0)
            .fetch_all(&mut *conn)
            .await?;
        Ok(rows.into_iter().map(TokenInfo::from).collect())
    }

    // ---- reads ----

    /// The listing's `total`: carried by the page's rows, else counted (an empty page).
    async fn total<R>(
        &self,
        conn: &mut DB::Connection,
        rows: &[Counted<R>],
        count: sqlx::query::QueryScalar<'_, DB, i64, DB::Arguments>,
    ) -> Result<i64> {
        match rows.first() {
            Some(r) => Ok(r.total),
            None => Ok(count.fetch_one(&mut *conn).await?),
        }
    }

    /// `StackStore::get_stack`: one statement, one snapshot.
    pub async fn get_stack(
        &self,
        conn: &mut DB::Connection,
        access: Access,
        slug: &StackSlug,
    ) -> Result<Option<StackDetail>> {
        let row: Option<DetailRow> = sqlx::query_as(self.sql.get_stack)
            .bind(slug.as_str())
            .bind(access_team(access))
            .fetch_optional(&mut *conn)
            .await?;
        row.map(StackDetail::try_from).transpose()
    }

    /// `StackStore::list_stacks`: one statement (the page and its total) on `conn`.
    pub async fn list_stacks(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        filter: &StackFilter,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Stack>> {
        let limit = limit.max(1);
        let (before_at, before_id) = parse_stack_cursor(cursor);
        let status = filter.status.map(|s| s.as_str());
        let env = filter.env.as_deref();
        let rows: Vec<Counted<StackRow>> = sqlx::query_as(self.sql.list_stacks)
            .bind(team.0)
            .bind(before_at)
            .bind(before_id)
            .bind(limit.saturating_add(1))
            .bind(status)
            .bind(env)
            .fetch_all(&mut *conn)
            .await?;
        let count = sqlx::query_scalar(self.sql.count_all_team_stacks)
            .bind(team.0)
            .bind(status)
            .bind(env);
        let total = self.total(conn, &rows, count).await?;
        let items = decode(rows.into_iter().map(|r| r.row).collect())?;
        Ok(Page::from_overfetch(items, limit, total, stack_cursor))
    }

    /// `StackStore::count_stacks`.
    pub async fn count_stacks(&self, conn: &mut DB::Connection, team: TeamId) -> Result<i64> {
        Ok(sqlx::query_scalar(self.sql.count_team_stacks)
            .bind(team.0)
            .fetch_one(&mut *conn)
            .await?)
    }

    /// `StackStore::list_releases`.
    pub async fn list_releases(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
    ) -> Result<Vec<Release>> {
        let rows: Vec<ReleaseRow> = sqlx::query_as(self.sql.list_releases)
            .bind(stack.0)
            .fetch_all(&mut *conn)
            .await?;
        decode(rows)
    }

    /// `StackStore::expired_stacks`.
    pub async fn expired_stacks(
        &self,
        conn: &mut DB::Connection,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<StackSlug>> {
        let slugs: Vec<String> = sqlx::query_scalar(self.sql.expired_stacks)
            .bind(now.0)
            .bind(limit.max(1))
            .fetch_all(&mut *conn)
            .await?;
        slugs.iter().map(|s| slug(s)).collect()
    }

    /// `StackStore::running_stacks`: one statement, one snapshot. At most one release of a
    /// stack is live (a deploy going live supersedes the others in its transaction).
    pub async fn running_stacks(
        &self,
        conn: &mut DB::Connection,
        keyring: &Keyring,
    ) -> Result<Vec<(Stack, Release, EnvMap)>> {
        let rows: Vec<DeployRow> = sqlx::query_as(self.sql.running_stacks)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(|r| r.decode(keyring)).collect()
    }

    /// `JobStore::deploy_context`: one statement, one snapshot.
    pub async fn deploy_context(
        &self,
        conn: &mut DB::Connection,
        job: &Job,
        keyring: &Keyring,
    ) -> Result<Option<(Stack, Release, EnvMap)>> {
        let row: Option<DeployRow> = sqlx::query_as(self.sql.deploy_context)
            .bind(job.stack_id.0)
            .bind(job.release)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            return Ok(Some(row.decode(keyring)?));
        }
        let stack: Option<StackRow> = sqlx::query_as(self.sql.stack_by_id)
            .bind(job.stack_id.0)
            .fetch_optional(&mut *conn)
            .await?;
        match stack {
            None => Ok(None),
            Some(_) => Err(corrupt("the job's release does not exist")),
        }
    }

    /// `EventStore::list_events`.
    pub async fn list_events(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StackEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(self.sql.list_events)
            .bind(stack.0)
            .bind(after)
            .bind(limit.max(1))
            .fetch_all(&mut *conn)
            .await?;
        decode(rows)
    }

    /// `EventStore::list_audit`: one statement (the page and its total) on `conn`.
    pub async fn list_audit(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>> {
        let limit = filter.limit.max(1);
        let before = parse_id_cursor(filter.cursor.as_deref());
        let (stack, kind) = (filter.stack.as_deref(), filter.kind.as_deref());
        let rows: Vec<Counted<AuditEntryRow>> = sqlx::query_as(self.sql.list_audit)
            .bind(team.0)
            .bind(stack)
            .bind(kind)
            .bind(before)
            .bind(limit.saturating_add(1))
            .fetch_all(&mut *conn)
            .await?;
        let count = sqlx::query_scalar(self.sql.count_audit)
            .bind(team.0)
            .bind(stack)
            .bind(kind);
        let total = self.total(conn, &rows, count).await?;
        let items = decode(rows.into_iter().map(|r| r.row).collect())?;
        Ok(Page::from_overfetch(items, limit, total, |e| {
            e.id.to_string()
        }))
    }

    /// The stack row as the env path sees it, locked (`lock`) or not, every value opened.
    pub async fn env_head(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        lock: bool,
        keyring: &Keyring,
    ) -> Result<Option<(EnvHead, EnvCodec)>> {
        self.env_head_opening(conn, stack, lock, keyring, Opening::All)
            .await
    }

    /// [`Self::env_head`], opening the map's values as `opening` says.
    async fn env_head_opening(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        lock: bool,
        keyring: &Keyring,
        opening: Opening,
    ) -> Result<Option<(EnvHead, EnvCodec)>> {
        let sql = if lock {
            self.sql.lock_env_head
        } else {
            self.sql.env_head
        };
        let row: Option<EnvHeadRow> = sqlx::query_as(sql)
            .bind(stack.0)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| r.decode(keyring, stack, opening)).transpose()
    }

    /// `EnvStore::get_env` with `reveal`: the values are handed out only if the audit row
    /// `stack.env.revealed` commits. Lock: the stack row.
    pub async fn reveal_env(
        &self,
        mut tx: Transaction<'static, DB>,
        stack: StackId,
        ctx: AuditCtx,
        keyring: &Keyring,
    ) -> Result<Option<EnvOutcome>> {
        let Some((head, _)) = self.env_head(&mut tx, stack, false, keyring).await? else {
            return Ok(None);
        };
        let audit = stackyard_core::envlog::revealed(head.team_id, &head.slug, head.version, ctx);
        self.insert_audit(&mut tx, &audit).await?;
        Self::commit(tx).await?;
        Ok(Some(head.outcome()))
    }

    /// Rebuilds each wanted version's map from the newest snapshot at or below it plus the
    /// changes after that snapshot. Versions that no longer exist (pruned) are left out, which
    /// the planner reports as `VersionNotFound`. Rollbacks are rare: two statements a target.
    async fn rebuild_versions(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        wanted: &BTreeSet<i64>,
        codec: &EnvCodec,
    ) -> Result<BTreeMap<i64, EnvMap>> {
        let mut out = BTreeMap::new();
        for &version in wanted {
            let snap: Option<(i64, String)> = sqlx::query_as(self.sql.env_snapshot_at)
                .bind(stack.0)
                .bind(version)
                .fetch_optional(&mut *conn)
                .await?;
            // Pruning removes whole prefixes ending just below a snapshot, so no snapshot at
            // or below the version means the version itself is gone.
            let Some((snap_version, snapshot)) = snap else {
                continue;
            };
            let base = codec.open_map(&snapshot, snap_version, Opening::All)?;
            let rows: Vec<String> = sqlx::query_scalar(self.sql.env_changes_between)
                .bind(stack.0)
                .bind(snap_version)
                .bind(version)
                .fetch_all(&mut *conn)
                .await?;
            if i64::try_from(rows.len()).ok() != Some(version - snap_version) {
                return Err(corrupt("the env history has a gap"));
            }
            let changes = (snap_version + 1..)
                .zip(&rows)
                .map(|(v, c)| codec.open_changes(c, v))
                .collect::<Result<Vec<ChangeValues>>>()?;
            out.insert(version, envlog::replay(base, changes));
        }
        Ok(out)
    }

    /// Reads the stack's env (under its lock when `lock`) and plans `writes` on it
    /// (`envlog::plan_batch`); refused as a whole when the stack is gone or being deleted.
    pub async fn plan_env_batch(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        writes: &[EnvWrite],
        lock: bool,
        now: Millis,
        keyring: &Keyring,
    ) -> Result<std::result::Result<EnvBatch, EnvBatchError>> {
        // Values whose key looks secret stay closed (the planner compares and measures them
        // through digest and length, the answers mask them) unless a rollback needs the
        // whole map in clear to diff against.
        let opening = if writes
            .iter()
            .any(|w| matches!(w.op, EnvOp::Rollback { .. }))
        {
            Opening::All
        } else {
            Opening::Shown
        };
        let head = self
            .env_head_opening(conn, stack, lock, keyring, opening)
            .await?;
        let (head, codec) = match head {
            None => return Ok(Err(EnvBatchError::NotFound)),
            Some((h, _)) if h.deleting => return Ok(Err(EnvBatchError::Deleting)),
            Some(h) => h,
        };
        let wanted = envlog::rollback_targets(writes, head.version);
        let targets = self.rebuild_versions(conn, stack, &wanted, &codec).await?;
        // A stack still stored plain is sealed by its first locked write, before the batch
        // writes anything, so no new value is ever stored plain.
        let codec = match codec {
            EnvCodec::Plain if lock => self.seal_stack(conn, stack, &head, keyring).await?,
            codec => codec,
        };
        let plan = envlog::plan_batch(head.env, head.version, writes, &targets, now);
        Ok(Ok(EnvBatch {
            team_id: head.team_id,
            slug: head.slug,
            plan,
            codec,
        }))
    }

    /// `EnvStore::apply_env_writes`: the batch planned under the stack's lock (taken by the
    /// first read of `tx`), written by the store's `writer`, committed once. The deleting
    /// check, the merge, the size rule, the version bump, the history, the audit rows and the
    /// idempotency records all decide and commit under that lock, in one transaction.
    pub async fn apply_env_writes<W: EnvBatchWriter<DB>>(
        &self,
        mut tx: Transaction<'static, DB>,
        stack: StackId,
        writes: &[EnvWrite],
        keep_versions: i64,
        writer: &W,
        keyring: &Keyring,
    ) -> Result<std::result::Result<Vec<EnvWriteResult>, EnvBatchError>> {
        let Some(now) = writes.iter().map(|w| w.ctx.now).max() else {
            return Ok(Ok(Vec::new()));
        };
        let batch = match self
            .plan_env_batch(&mut tx, stack, writes, true, now, keyring)
            .await?
        {
            Ok(batch) => batch,
            Err(refused) => return Ok(Err(refused)),
        };
        let plan = &batch.plan;
        if plan.records.is_empty() && plan.completions.is_empty() {
            // Nothing to write: dropping the transaction rolls it back.
            return Ok(Ok(batch.plan.outcomes));
        }
        // The prune floor only moves when a snapshot is written.
        let floor = if plan.wrote_snapshot() {
            envlog::prune_floor(plan.version, keep_versions)
        } else {
            None
        };
        writer.write(&mut tx, stack, &batch, now, floor).await?;
        Self::commit(tx).await?;
        Ok(Ok(batch.plan.outcomes))
    }

    /// `EnvStore::preview_env_write`: the batch of one write planned without a lock, nothing
    /// written. History rows at or below the head's version never change (pruning only
    /// removes them, which the planner then reports), so separate statements agree.
    pub async fn preview_env_write(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        write: &EnvWrite,
        keyring: &Keyring,
    ) -> Result<std::result::Result<EnvWriteResult, EnvBatchError>> {
        let writes = std::slice::from_ref(write);
        let batch = match self
            .plan_env_batch(conn, stack, writes, false, write.ctx.now, keyring)
            .await?
        {
            Ok(batch) => batch,
            Err(refused) => return Ok(Err(refused)),
        };
        let first = batch.plan.outcomes.into_iter().next();
        Ok(Ok(first.ok_or_else(|| {
            corrupt("the planner returned no outcome")
        })?))
    }

    /// `EnvStore::list_env_versions`: one statement (the page and its total) on `conn`.
    pub async fn list_env_versions(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<EnvVersionInfo>> {
        let limit = limit.max(1);
        let rows: Vec<Counted<EnvVersionRow>> = sqlx::query_as(self.sql.list_env_versions)
            .bind(stack.0)
            .bind(parse_id_cursor(cursor))
            .bind(limit.saturating_add(1))
            .fetch_all(&mut *conn)
            .await?;
        let count = sqlx::query_scalar(self.sql.count_env_versions).bind(stack.0);
        let total = self.total(conn, &rows, count).await?;
        let items = decode(rows.into_iter().map(|r| r.row).collect())?;
        Ok(Page::from_overfetch(items, limit, total, |v| {
            v.version.to_string()
        }))
    }

    // ---- encryption at rest ----

    /// Seals a stack whose env documents are stored plain (`data_key` NULL), on `conn` inside
    /// a transaction holding the stack's lock (`head` read under it): a new data key, wrapped
    /// by the master key the database's canary names, and every document re-stored sealed —
    /// the current map, each version's change and snapshot, each release's copy.
    pub async fn seal_stack(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        head: &EnvHead,
        keyring: &Keyring,
    ) -> Result<EnvCodec> {
        self.reseal_stack(conn, stack, head, &EnvCodec::Plain, keyring)
            .await
    }

    /// [`Self::seal_stack`] from documents stored by `plain` (plain text, or sealed by the
    /// data key being replaced): every document opened with it and sealed by a new data key.
    async fn reseal_stack(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        head: &EnvHead,
        plain: &EnvCodec,
        keyring: &Keyring,
    ) -> Result<EnvCodec> {
        self.follow_canary(conn, keyring).await?;
        let owner = KeyOwner::stack(stack);
        let (key, wrapped) = keyring.new_data_key(owner);
        let sealed = EnvCodec::Sealed {
            owner,
            key: std::sync::Arc::new(key),
        };
        let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(self.sql.env_rows_of)
            .bind(stack.0)
            .fetch_all(&mut *conn)
            .await?;
        for (version, changes, snapshot) in rows {
            let changes = sealed.seal_changes(&plain.open_changes(&changes, version)?, version)?;
            let snapshot = match snapshot {
                Some(s) => {
                    Some(sealed.seal_map(&plain.open_map(&s, version, Opening::All)?, version)?)
                }
                None => None,
            };
            sqlx::query(self.sql.seal_env_row)
                .bind(stack.0)
                .bind(version)
                .bind(changes)
                .bind(snapshot)
                .execute(&mut *conn)
                .await?;
        }
        let releases: Vec<(i64, i64, String)> = sqlx::query_as(self.sql.release_envs_of)
            .bind(stack.0)
            .fetch_all(&mut *conn)
            .await?;
        for (version, env_version, env) in releases {
            let env = sealed.seal_map(
                &plain.open_map(&env, env_version, Opening::All)?,
                env_version,
            )?;
            sqlx::query(self.sql.seal_release_env)
                .bind(stack.0)
                .bind(version)
                .bind(env)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(self.sql.seal_stack_head)
            .bind(stack.0)
            .bind(sealed.seal_map(&head.env, head.version)?)
            .bind(wrapped)
            .execute(&mut *conn)
            .await?;
        Ok(sealed)
    }

    /// Before a new data key is wrapped, in its transaction: under the keyring row's shared
    /// lock, a rotation moving the canary either waits for this transaction (and its pass
    /// finds our key) or has moved it (and the keyring follows it to the new key).
    async fn follow_canary(&self, conn: &mut DB::Connection, keyring: &Keyring) -> Result<()> {
        // (No canary only in tests that open a store without start-up.)
        let canary: Option<Vec<u8>> = sqlx::query_scalar(self.sql.keyring_canary_shared)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(canary) = canary {
            keyring.follow_canary(&canary).map_err(|_| {
                corrupt(
                    "the master key was rotated and this server does not have the new key: \
                     add it to the key file, or restart with it (README: rotating the master key)",
                )
            })?;
        }
        Ok(())
    }

    /// The team vault's data key (`teams.vault_key`), created at the first use: one
    /// compare-and-set, so two first writes agree on one key.
    async fn team_vault_key(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        keyring: &Keyring,
    ) -> Result<DataKey> {
        let owner = KeyOwner::team_vault(team);
        let stored: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT vault_key FROM teams WHERE id = $1")
                .bind(team.0)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(Some(wrapped)) = stored {
            return keyring
                .unwrap(owner, &wrapped)
                .map_err(|_| corrupt("a team vault's data key did not open"));
        }
        self.follow_canary(conn, keyring).await?;
        let (key, wrapped) = keyring.new_data_key(owner);
        let stored: Option<Vec<u8>> = sqlx::query_scalar(
            "UPDATE teams SET vault_key = COALESCE(vault_key, $2) WHERE id = $1 RETURNING vault_key",
        )
        .bind(team.0)
        .bind(wrapped.clone())
        .fetch_optional(&mut *conn)
        .await?;
        match stored {
            Some(w) if w == wrapped => Ok(key),
            Some(w) => keyring
                .unwrap(owner, &w)
                .map_err(|_| corrupt("a team vault's data key did not open")),
            None => Err(corrupt("the team of a vault write does not exist")),
        }
    }

    /// The start-up pass for one stack: sealed under its lock if it is still plain. `false`:
    /// it was sealed (or deleted) meanwhile.
    pub async fn seal_stack_if_plain(
        &self,
        mut tx: Transaction<'static, DB>,
        stack: StackId,
        keyring: &Keyring,
    ) -> Result<bool> {
        let Some((head, codec)) = self.env_head(&mut tx, stack, true, keyring).await? else {
            return Ok(false);
        };
        if !matches!(codec, EnvCodec::Plain) {
            return Ok(false);
        }
        self.seal_stack(&mut tx, stack, &head, keyring).await?;
        Self::commit(tx).await?;
        Ok(true)
    }

    /// `KeyStore::rekey_stack`: under the stack's lock (the one env writes take), every env
    /// document of the stack is sealed by a new data key, in one transaction. `false`: the
    /// stack is gone.
    pub async fn rekey_stack(
        &self,
        mut tx: Transaction<'static, DB>,
        stack: StackId,
        keyring: &Keyring,
    ) -> Result<bool> {
        let Some((head, codec)) = self.env_head(&mut tx, stack, true, keyring).await? else {
            return Ok(false);
        };
        self.reseal_stack(&mut tx, stack, &head, &codec, keyring)
            .await?;
        Self::commit(tx).await?;
        Ok(true)
    }

    /// Up to `limit` stacks still stored plain, by id.
    pub async fn plain_stacks(
        &self,
        conn: &mut DB::Connection,
        limit: i64,
    ) -> Result<Vec<StackId>> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM stacks WHERE data_key IS NULL ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
        Ok(ids.into_iter().map(StackId).collect())
    }

    /// The start-up pass over resources: each row whose URL is still plain is sealed by one
    /// compare-and-set statement. Returns how many were sealed.
    pub async fn seal_plain_resources(
        &self,
        conn: &mut DB::Connection,
        keyring: &Keyring,
    ) -> Result<u64> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT token, id, connection_url FROM resources WHERE data_key IS NULL",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut sealed = 0;
        for (token, id, url) in rows {
            let (url, wrapped) = crate::seal::seal_resource_url(keyring, &id, &url);
            let done: Option<String> = sqlx::query_scalar(
                "UPDATE resources SET connection_url = $2, data_key = $3 \
                 WHERE token = $1 AND data_key IS NULL RETURNING token",
            )
            .bind(token)
            .bind(url)
            .bind(wrapped)
            .fetch_optional(&mut *conn)
            .await?;
            sealed += u64::from(done.is_some());
        }
        Ok(sealed)
    }

    /// Every wrapped data key, for `admin rotate-master-key`.
    pub async fn wrapped_keys(&self, conn: &mut DB::Connection) -> Result<Vec<WrappedKey>> {
        let stacks: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, data_key FROM stacks WHERE data_key IS NOT NULL")
                .fetch_all(&mut *conn)
                .await?;
        let resources: Vec<(String, String, Vec<u8>)> =
            sqlx::query_as("SELECT token, id, data_key FROM resources WHERE data_key IS NOT NULL")
                .fetch_all(&mut *conn)
                .await?;
        let teams: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, vault_key FROM teams WHERE vault_key IS NOT NULL")
                .fetch_all(&mut *conn)
                .await?;
        let teams = teams.into_iter().map(|(id, wrapped)| WrappedKey {
            owner: KeyOwner::team_vault(TeamId(id)),
            row: WrappedRow::TeamVault(id),
            wrapped,
        });
        let stacks = stacks.into_iter().map(|(id, wrapped)| WrappedKey {
            owner: stackyard_core::crypto::KeyOwner::stack(StackId(id)),
            row: WrappedRow::Stack(id),
            wrapped,
        });
        let resources = resources
            .into_iter()
            .map(|(token, id, wrapped)| WrappedKey {
                owner: stackyard_core::crypto::KeyOwner::resource(&id),
                row: WrappedRow::Resource(token),
                wrapped,
            });
        let certs: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT domain_id, data_key FROM certificates")
                .fetch_all(&mut *conn)
                .await?;
        let certs = certs.into_iter().map(|(id, wrapped)| WrappedKey {
            owner: KeyOwner::certificate(&id),
            row: WrappedRow::Certificate(id),
            wrapped,
        });
        let accounts: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT directory, data_key FROM acme_accounts")
                .fetch_all(&mut *conn)
                .await?;
        let accounts = accounts.into_iter().map(|(dir, wrapped)| WrappedKey {
            owner: KeyOwner::acme_account(&dir),
            row: WrappedRow::AcmeAccount(dir),
            wrapped,
        });
        Ok(stacks
            .chain(resources)
            .chain(teams)
            .chain(certs)
            .chain(accounts)
            .collect())
    }

    /// Replaces one wrapped key if it is still `key.wrapped` (one compare-and-set statement).
    pub async fn swap_wrapped_key(
        &self,
        conn: &mut DB::Connection,
        key: &WrappedKey,
        new: &[u8],
    ) -> Result<bool> {
        let q = match &key.row {
            WrappedRow::Stack(id) => sqlx::query_scalar(
                "UPDATE stacks SET data_key = $2 WHERE id = $1 AND data_key = $3 RETURNING data_key",
            )
            .bind(*id),
            WrappedRow::TeamVault(id) => sqlx::query_scalar(
                "UPDATE teams SET vault_key = $2 WHERE id = $1 AND vault_key = $3 \
                 RETURNING vault_key",
            )
            .bind(*id),
            WrappedRow::Resource(token) => sqlx::query_scalar(
                "UPDATE resources SET data_key = $2 WHERE token = $1 AND data_key = $3 \
                 RETURNING data_key",
            )
            .bind(token.clone()),
            WrappedRow::Certificate(id) => sqlx::query_scalar(
                "UPDATE certificates SET data_key = $2 WHERE domain_id = $1 AND data_key = $3 \
                 RETURNING data_key",
            )
            .bind(id.clone()),
            WrappedRow::AcmeAccount(dir) => sqlx::query_scalar(
                "UPDATE acme_accounts SET data_key = $2 WHERE directory = $1 AND data_key = $3 \
                 RETURNING data_key",
            )
            .bind(dir.clone()),
        };
        let done: Option<Vec<u8>> = q
            .bind(new.to_vec())
            .bind(key.wrapped.clone())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(done.is_some())
    }

    // ---- keyring ----

    /// `KeyStore::master_canary`: one statement.
    pub async fn master_canary(&self, conn: &mut DB::Connection) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT canary FROM keyring WHERE id = 1")
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    /// `KeyStore::swap_master_canary`: one compare-and-set statement, so concurrent first
    /// starts and a rotation cannot both win. Lock: the keyring row (its primary key for the
    /// first insert).
    pub async fn swap_master_canary(
        &self,
        mut tx: Transaction<'static, DB>,
        expected: Option<&[u8]>,
        canary: &[u8],
        now: Millis,
    ) -> Result<bool> {
        // `RETURNING` says whether the row was written, alike in both dialects.
        let swapped: Option<i32> = match expected {
            None => sqlx::query_scalar(
                "INSERT INTO keyring (id, canary, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING RETURNING 1",
            )
            .bind(canary)
            .bind(now.0),
            Some(old) => sqlx::query_scalar(
                "UPDATE keyring SET canary = $1, updated_at = $2 WHERE id = 1 AND canary = $3 \
                 RETURNING 1",
            )
            .bind(canary)
            .bind(now.0)
            .bind(old),
        }
        .fetch_optional(&mut *tx)
        .await?;
        let done = swapped.is_some();
        Self::commit(tx).await?;
        Ok(done)
    }

    // ---- housekeeping ----

    /// `Housekeeping::idempotency_abandon`: one statement; a completed record stays. Lock:
    /// the one idempotency row.
    pub async fn idempotency_abandon(
        &self,
        mut tx: Transaction<'static, DB>,
        scope: &str,
        key: &str,
    ) -> Result<()> {
        sqlx::query(self.sql.abandon_idempotency)
            .bind(scope)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        Self::commit(tx).await
    }

    /// `Housekeeping::count_anonymous_create`: one atomic upsert. Lock: the counter row;
    /// concurrent callers (on any server) queue on it and each gets the count its own
    /// increment made.
    pub async fn count_anonymous_create(
        &self,
        mut tx: Transaction<'static, DB>,
        fingerprint: &str,
        now: Millis,
    ) -> Result<i64> {
        let count = sqlx::query_scalar(self.sql.count_anonymous_create)
            .bind(fingerprint)
            .bind(now.utc_day())
            .fetch_one(&mut *tx)
            .await?;
        Self::commit(tx).await?;
        Ok(count)
    }

    // ---- resources: the same statements on both stores (`resources` is identical in both
    // schemas); only the team lock is each store's own (`Sql::lock_team_cap`) ----

    /// `ResourceStore::insert_resource`. Lock order: a capped team's row, then the new row.
    pub async fn insert_resource(
        &self,
        mut tx: Transaction<'static, DB>,
        new: NewResource,
        keyring: &Keyring,
    ) -> Result<(), CreateResourceError> {
        let r = &new.resource;
        if let (Some(team), Some(max)) = (r.team_id, new.max_per_team) {
            // The team row's lock (PostgreSQL `FOR UPDATE`; SQLite's one writer) makes capped
            // creates of one team queue, so the count below sees every committed one.
            let _: Option<i64> = sqlx::query_scalar(self.sql.lock_team_cap)
                .bind(team.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::from)?;
            let count: i64 = sqlx::query_scalar(resource_sql::COUNT_TEAM)
                .bind(team.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::from)?;
            if count >= max {
                return Err(CreateResourceError::LimitReached { max });
            }
        }
        let (url, wrapped) = crate::seal::seal_resource_url(keyring, &r.id, &r.connection_url);
        sqlx::query(resource_sql::INSERT)
            .bind(r.token.as_str())
            .bind(r.id.as_str())
            .bind(r.kind.as_str())
            .bind(r.name.as_str())
            .bind(r.team_id.map(|t| t.0))
            .bind(new.fingerprint.as_deref())
            .bind(r.tier.as_str())
            .bind(r.status.as_str())
            .bind(url)
            .bind(r.created_at.0)
            .bind(r.expires_at.map(|t| t.0))
            .bind(r.stack.as_ref().map(|s| s.stack_id.0))
            .bind(r.stack.as_ref().map(|s| s.env.as_str()))
            .bind(wrapped)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        Self::commit(tx).await?;
        Ok(())
    }

    /// `ResourceStore::mark_resource_ready`: the status, the audit row and the idempotency
    /// record commit together.
    pub async fn mark_resource_ready(
        &self,
        mut tx: Transaction<'static, DB>,
        r: &Resource,
        ctx: AuditCtx,
        idempotency: Option<Idempotent<Resource>>,
    ) -> Result<bool> {
        let changed: Option<String> = sqlx::query_scalar(resource_sql::SET_STATUS_FROM)
            .bind(r.token.as_str())
            .bind(ResourceStatus::Ready.as_str())
            .bind(ResourceStatus::Provisioning.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if changed.is_none() {
            return Ok(false);
        }
        self.insert_audit(&mut tx, &resource::created(r, &ctx))
            .await?;
        if let Some(i) = idempotency {
            self.complete_idempotency(&mut tx, &i.record(r), ctx.now)
                .await?;
        }
        Self::commit(tx).await?;
        Ok(true)
    }

    /// One resource of `team` (any team when `None`).
    pub async fn get_resource(
        &self,
        conn: &mut DB::Connection,
        team: Option<TeamId>,
        token: &ResourceToken,
        keyring: &Keyring,
    ) -> Result<Option<Resource>> {
        let row: Option<ResourceRow> = sqlx::query_as(resource_sql::GET)
            .bind(token.as_str())
            .bind(team.map(|t| t.0))
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| r.decode(keyring)).transpose()
    }

    /// `ResourceStore::reveal_resource`: the URL leaves only if its audit row commits.
    pub async fn reveal_resource(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        token: &ResourceToken,
        ctx: AuditCtx,
        keyring: &Keyring,
    ) -> Result<Option<Resource>> {
        let r = self
            .get_resource(&mut tx, Some(team), token, keyring)
            .await?;
        let Some(r) = r.filter(|r| r.status == ResourceStatus::Ready) else {
            return Ok(None);
        };
        self.insert_audit(&mut tx, &resource::url_read(&r, &ctx))
            .await?;
        Self::commit(tx).await?;
        Ok(Some(r))
    }

    /// `ResourceStore::stack_resource`.
    pub async fn stack_resource(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        env: &str,
        keyring: &Keyring,
    ) -> Result<Option<Resource>> {
        let row: Option<ResourceRow> = sqlx::query_as(resource_sql::GET_BY_STACK)
            .bind(stack.0)
            .bind(env)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|r| r.decode(keyring)).transpose()
    }

    /// `ResourceStore::stack_resources`.
    pub async fn stack_resources(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        keyring: &Keyring,
    ) -> Result<Vec<Resource>> {
        let rows: Vec<ResourceRow> = sqlx::query_as(resource_sql::LIST_BY_STACK)
            .bind(stack.0)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(|r| r.decode(keyring)).collect()
    }

    /// `ResourceStore::reveal_granted_resource`: the URL leaves only if its audit row commits.
    pub async fn reveal_granted_resource(
        &self,
        mut tx: Transaction<'static, DB>,
        owner: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
        keyring: &Keyring,
    ) -> Result<Option<Resource>> {
        let r = self.get_resource(&mut tx, owner, token, keyring).await?;
        let Some(r) = r.filter(|r| r.status == ResourceStatus::Ready && r.team_id == owner) else {
            return Ok(None);
        };
        self.insert_audit(&mut tx, &resource::url_read(&r, &ctx))
            .await?;
        Self::commit(tx).await?;
        Ok(Some(r))
    }

    /// `ResourceStore::list_resources`: one statement (the page and its total).
    pub async fn list_resources(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
        keyring: &Keyring,
    ) -> Result<Page<Resource>> {
        let limit = limit.max(1);
        let (at, token) = parse_resource_cursor(cursor);
        let rows: Vec<Counted<ResourceRow>> = sqlx::query_as(resource_sql::LIST)
            .bind(team.0)
            .bind(at)
            .bind(token.as_str())
            .bind(limit.saturating_add(1))
            .fetch_all(&mut *conn)
            .await?;
        let count = sqlx::query_scalar(resource_sql::COUNT_ALL).bind(team.0);
        let total = self.total(conn, &rows, count).await?;
        let items = rows
            .into_iter()
            .map(|r| r.row.decode(keyring))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, limit, total, |r: &Resource| {
            format!("{}:{}", r.created_at.0, r.token)
        }))
    }

    /// `ResourceStore::mark_resource_deleting`. No row lock is taken first: the one write is a
    /// conditional status update, so of two concurrent callers only one writes the audit row,
    /// and a `provisioning` row marked here can no longer become `ready`.
    pub async fn mark_resource_deleting(
        &self,
        mut tx: Transaction<'static, DB>,
        team: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
        keyring: &Keyring,
    ) -> Result<Option<Resource>> {
        let Some(mut r) = self.get_resource(&mut tx, team, token, keyring).await? else {
            return Ok(None);
        };
        let changed: Option<String> = sqlx::query_scalar(resource_sql::SET_STATUS)
            .bind(token.as_str())
            .bind(ResourceStatus::Deleting.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if changed.is_some() {
            self.insert_audit(&mut tx, &resource::deleted(&r, &ctx))
                .await?;
        }
        r.status = ResourceStatus::Deleting;
        Self::commit(tx).await?;
        Ok(Some(r))
    }

    /// `ResourceStore::remove_resource`.
    pub async fn remove_resource(
        &self,
        mut tx: Transaction<'static, DB>,
        token: &ResourceToken,
    ) -> Result<()> {
        sqlx::query(resource_sql::DELETE)
            .bind(token.as_str())
            .execute(&mut *tx)
            .await?;
        Self::commit(tx).await
    }

    /// `ResourceStore::resources_to_reconcile`.
    pub async fn resources_to_reconcile(
        &self,
        conn: &mut DB::Connection,
        provisioning_before: Millis,
        with_ready: bool,
        keyring: &Keyring,
    ) -> Result<Vec<Resource>> {
        let rows: Vec<ResourceRow> = sqlx::query_as(resource_sql::TO_RECONCILE)
            .bind(provisioning_before.0)
            .bind(with_ready)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(|r| r.decode(keyring)).collect()
    }

    /// `ResourceStore::expired_resources`.
    pub async fn expired_resources(
        &self,
        conn: &mut DB::Connection,
        now: Millis,
        limit: i64,
        keyring: &Keyring,
    ) -> Result<Vec<Resource>> {
        let rows: Vec<ResourceRow> = sqlx::query_as(resource_sql::EXPIRED)
            .bind(now.0)
            .bind(limit.max(1))
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(|r| r.decode(keyring)).collect()
    }

    // ---- the team vault: the same statements on both stores (`vault_sql`) ----

    /// Writes `value` as the key's next version in the open transaction. Lock: the key's head.
    #[allow(clippy::too_many_arguments)] // the row's coordinates, its value and the keyring
    async fn write_vault_version(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        env: &str,
        key: &str,
        value: &[u8],
        now: Millis,
        keyring: &Keyring,
    ) -> Result<i64> {
        let version: i64 = sqlx::query_scalar(vault_sql::BUMP_HEAD)
            .bind(team.0)
            .bind(env)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        let dk = self.team_vault_key(conn, team, keyring).await?;
        let v = seal_vault_value(&dk, team, env, key, version, value);
        sqlx::query(vault_sql::INSERT_VALUE)
            .bind(team.0)
            .bind(env)
            .bind(key)
            .bind(version)
            .bind(v.sealed.as_slice())
            .bind(v.digest.as_slice())
            .bind(v.length)
            .bind(now.0)
            .execute(&mut *conn)
            .await?;
        Ok(version)
    }

    /// The newest (or `version`) `(version, plaintext)` of a key.
    async fn vault_value(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        env: &str,
        key: &str,
        version: Option<i64>,
        keyring: &Keyring,
    ) -> Result<Option<VaultValue>> {
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as(vault_sql::GET_VALUE)
            .bind(team.0)
            .bind(env)
            .bind(key)
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((version, sealed)) = row else {
            return Ok(None);
        };
        let dk = self.team_vault_key(conn, team, keyring).await?;
        Ok(Some(VaultValue {
            version,
            value: open_vault_value(&dk, team, env, key, version, &sealed)?,
        }))
    }

    async fn vault_keys(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        env: &EnvironmentName,
    ) -> Result<BTreeSet<VaultKey>> {
        let keys: Vec<String> = sqlx::query_scalar(vault_sql::LIST_KEYS)
            .bind(team.0)
            .bind(env.as_str())
            .fetch_all(&mut *conn)
            .await?;
        keys.iter()
            .map(|k| VaultKey::parse(k).map_err(|_| corrupt("a stored vault key")))
            .collect()
    }

    /// `VaultStore::put_vault_value`. Lock: the key's head row.
    #[allow(clippy::too_many_arguments)] // the trait method's arguments, as they come
    pub async fn put_vault_value(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        value: &str,
        write: VaultWrite,
        ctx: AuditCtx,
        keyring: &Keyring,
    ) -> Result<i64> {
        let version = self
            .write_vault_version(
                &mut tx,
                team,
                env.as_str(),
                key.as_str(),
                value.as_bytes(),
                ctx.now,
                keyring,
            )
            .await?;
        self.insert_audit(
            &mut tx,
            &vault::written(write, team, env, key, version, &ctx),
        )
        .await?;
        Self::commit(tx).await?;
        Ok(version)
    }

    /// `VaultStore::read_vault_value`: the value leaves only if its audit row commits.
    #[allow(clippy::too_many_arguments)] // the trait method's arguments, as they come
    pub async fn read_vault_value(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        version: Option<i64>,
        ctx: AuditCtx,
        keyring: &Keyring,
    ) -> Result<Option<VaultValue>> {
        let Some(v) = self
            .vault_value(&mut tx, team, env.as_str(), key.as_str(), version, keyring)
            .await?
        else {
            return Ok(None);
        };
        self.insert_audit(&mut tx, &vault::read(team, env, key, v.version, &ctx))
            .await?;
        Self::commit(tx).await?;
        Ok(Some(v))
    }

    /// `VaultStore::list_vault_keys`.
    pub async fn list_vault_keys(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        env: &EnvironmentName,
    ) -> Result<Vec<VaultKey>> {
        Ok(self
            .vault_keys(conn, team, env)
            .await?
            .into_iter()
            .collect())
    }

    /// `VaultStore::delete_vault_key`. Lock: the key's head row (kept: it holds the version
    /// counter, so a later write does not reuse a version a release recorded).
    pub async fn delete_vault_key(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        ctx: AuditCtx,
    ) -> Result<bool> {
        // `RETURNING` says whether a row was touched, alike in both dialects.
        for sql in [vault_sql::LOCK_HEAD, vault_sql::DELETE_KEY] {
            let touched: Vec<i64> = sqlx::query_scalar(sql)
                .bind(team.0)
                .bind(env.as_str())
                .bind(key.as_str())
                .fetch_all(&mut *tx)
                .await?;
            if touched.is_empty() {
                return Ok(false);
            }
        }
        self.insert_audit(&mut tx, &vault::deleted(team, env, key, &ctx))
            .await?;
        Self::commit(tx).await?;
        Ok(true)
    }

    /// `VaultStore::copy_vault`. Lock: the target keys' head rows, in key order (the plan's),
    /// so two copies into one env cannot deadlock.
    pub async fn copy_vault(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        copy: &VaultCopy,
        ctx: AuditCtx,
        keyring: &Keyring,
    ) -> Result<CopyOutcome> {
        let out = self
            .copy_vault_in(&mut tx, team, copy, &ctx, keyring)
            .await?;
        if out.copied > 0 {
            Self::commit(tx).await?;
        }
        Ok(out)
    }

    /// A vault copy (with its audit row when it writes) in the caller's transaction.
    async fn copy_vault_in(
        &self,
        tx: &mut DB::Connection,
        team: TeamId,
        copy: &VaultCopy,
        ctx: &AuditCtx,
        keyring: &Keyring,
    ) -> Result<CopyOutcome> {
        let from = self.vault_keys(&mut *tx, team, &copy.from).await?;
        let to = self.vault_keys(&mut *tx, team, &copy.to).await?;
        let out = vault::outcome(vault::plan_copy(copy, &from, &to), copy.dry_run);
        if out.copied == 0 {
            return Ok(out);
        }
        for (key, _) in out.plan.iter().filter(|(_, a)| a.writes()) {
            let v = self
                .vault_value(
                    &mut *tx,
                    team,
                    copy.from.as_str(),
                    key.as_str(),
                    None,
                    keyring,
                )
                .await?
                .ok_or_else(|| corrupt("a vault key vanished during a copy"))?;
            self.write_vault_version(
                &mut *tx,
                team,
                copy.to.as_str(),
                key.as_str(),
                v.value.as_bytes(),
                ctx.now,
                keyring,
            )
            .await?;
        }
        self.insert_audit(&mut *tx, &vault::copied(team, copy, &out, ctx))
            .await?;
        Ok(out)
    }

    /// The newest version of every key `env` and `services` refer to, from the vault env
    /// `environment` of `team`: what a new release records.
    async fn vault_versions(
        &self,
        conn: &mut DB::Connection,
        team: Option<TeamId>,
        environment: &str,
        env: &EnvMap,
        services: &[ReleaseService],
    ) -> Result<Result<Vec<(String, i64)>, VaultRefError>> {
        let keys = vault::references(env, services);
        if keys.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let Some(team) = team else {
            return Ok(Err(VaultRefError::RequiresAuth));
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let version: Option<i64> = if VaultKey::parse(&key).is_ok() {
                sqlx::query_scalar(vault_sql::NEWEST_VERSION)
                    .bind(team.0)
                    .bind(environment)
                    .bind(key.as_str())
                    .fetch_one(&mut *conn)
                    .await?
            } else {
                None
            };
            match version {
                Some(v) => out.push((key, v)),
                None => {
                    return Ok(Err(VaultRefError::Missing {
                        key,
                        env: environment.to_owned(),
                    }));
                }
            }
        }
        Ok(Ok(out))
    }

    /// When the env map is at a version an env rollback to N wrote, its `vault://` references
    /// go back too: each takes the version the newest release built from env version N
    /// recorded, where that version still exists in the vault (else the newest, as `refs`
    /// has it). The rollback's target is read from its audit row, written with the version.
    async fn rolled_back_vault_refs(
        &self,
        conn: &mut DB::Connection,
        stack: &Stack,
        env_version: i64,
        mut refs: Vec<(String, i64)>,
    ) -> Result<Vec<(String, i64)>> {
        let Some(team) = stack.team_id.filter(|_| !refs.is_empty()) else {
            return Ok(refs);
        };
        let newest: Option<String> = sqlx::query_scalar(
            "SELECT CAST(metadata AS TEXT) FROM audit_log \
             WHERE stack_slug = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
        )
        .bind(stack.slug.as_str())
        .bind(envlog::AUDIT_ENV_ROLLED_BACK)
        .fetch_optional(&mut *conn)
        .await?;
        let target = newest
            .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
            .filter(|m| m["version"].as_i64() == Some(env_version))
            .and_then(|m| m["to_version"].as_i64());
        let Some(target) = target else {
            return Ok(refs);
        };
        let release: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(version) FROM releases WHERE stack_id = $1 AND env_version = $2",
        )
        .bind(stack.id.0)
        .bind(target)
        .fetch_one(&mut *conn)
        .await?;
        let Some(release) = release else {
            return Ok(refs);
        };
        let pinned: Vec<(Option<i64>, String, String, i64)> =
            sqlx::query_as(vault_sql::REFS_OF_RELEASE)
                .bind(stack.id.0)
                .bind(release)
                .fetch_all(&mut *conn)
                .await?;
        for (key, version) in &mut refs {
            let Some((_, env, _, old)) = pinned
                .iter()
                .find(|(_, e, k, _)| k == key && e.as_str() == stack.environment.as_str())
            else {
                continue;
            };
            let exists: Option<i64> = sqlx::query_scalar(vault_sql::GET_VERSION)
                .bind(team.0)
                .bind(env.as_str())
                .bind(key.as_str())
                .bind(*old)
                .fetch_optional(&mut *conn)
                .await?;
            if exists.is_some() {
                *version = *old;
            }
        }
        Ok(refs)
    }

    /// Records the `(key, version)`s of the release `plan` inserts.
    async fn record_vault_refs(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        plan: &Plan,
        refs: &[(String, i64)],
    ) -> Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let release = plan
            .releases
            .iter()
            .find_map(|r| match r {
                ReleaseWrite::Insert { version, .. } => Some(*version),
                ReleaseWrite::SetStatus { .. } => None,
            })
            .ok_or_else(|| corrupt("vault references without a new release"))?;
        let environment: String =
            sqlx::query_scalar("SELECT environment FROM stacks WHERE id = $1")
                .bind(stack.0)
                .fetch_one(&mut *conn)
                .await?;
        for (key, version) in refs {
            sqlx::query(vault_sql::INSERT_REF)
                .bind(stack.0)
                .bind(release)
                .bind(environment.as_str())
                .bind(key.as_str())
                .bind(*version)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// `VaultStore::release_vault_values`: one snapshot read per reference.
    pub async fn release_vault_values(
        &self,
        conn: &mut DB::Connection,
        stack: StackId,
        release: i64,
        keyring: &Keyring,
    ) -> Result<Result<BTreeMap<String, String>, VaultRefError>> {
        let refs: Vec<(Option<i64>, String, String, i64)> =
            sqlx::query_as(vault_sql::REFS_OF_RELEASE)
                .bind(stack.0)
                .bind(release)
                .fetch_all(&mut *conn)
                .await?;
        let mut out = BTreeMap::new();
        for (team, env, key, version) in refs {
            let Some(team) = team.map(TeamId) else {
                return Ok(Err(VaultRefError::RequiresAuth));
            };
            match self
                .vault_value(conn, team, &env, &key, Some(version), keyring)
                .await?
            {
                Some(v) => {
                    out.insert(key, v.value);
                }
                None => return Ok(Err(VaultRefError::Missing { key, env })),
            }
        }
        Ok(Ok(out))
    }

    // ---- env families and promotion (`FamilyStore`), custom domains (`DomainStore`) ----

    /// `FamilyStore::family`: read without locks.
    pub async fn family(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        slug: &StackSlug,
    ) -> Result<Option<Vec<FamilyMember>>> {
        let root: Option<i64> = sqlx::query_scalar(
            "SELECT COALESCE(parent_stack_id, id) FROM stacks WHERE slug = $1 AND team_id = $2",
        )
        .bind(slug.as_str())
        .bind(team.0)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(root) = root else { return Ok(None) };
        let rows: Vec<FamilyRow> = sqlx::query_as(family_sql::MEMBERS)
            .bind(root)
            .bind(team.0)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter()
            .map(FamilyRow::decode)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// `FamilyStore::promote`, in `tx`. Locks: the team's row when it is capped, then the
    /// source's row, then the target's (their order is the same for every promote of one
    /// family into one env; promotes crossing between two stacks in opposite directions may
    /// deadlock on PostgreSQL, which aborts one: a retryable 503).
    pub async fn promote(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        source_slug: &StackSlug,
        p: Promotion,
        keyring: &Keyring,
    ) -> std::result::Result<Promoted, PromoteError> {
        let promoted = self
            .promote_in(&mut tx, team, source_slug, p, keyring)
            .await?;
        // Two promotes racing to create one env's stack: the family index refuses the second.
        Self::commit(tx).await.map_err(promote_unique)?;
        Ok(promoted)
    }

    /// `FamilyStore::request_promotion`. Lock: the source's row (the checks), then the insert.
    pub async fn request_promotion(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        source_slug: &StackSlug,
        p: &Promotion,
        mut a: Approval,
    ) -> std::result::Result<Approval, PromoteError> {
        let Some(source) = self
            .lock_stack(&mut tx, StackRef::Slug(Access::Team(team), source_slug))
            .await?
        else {
            return Err(PromoteError::NotFound);
        };
        lifecycle::promote::source_release(&source, p.from.as_deref(), &p.to)?;
        a.from = source.stack.environment.clone();
        a.status = ApprovalStatus::Pending;
        sqlx::query(
            "INSERT INTO promotions (id, team_id, source_slug, from_env, to_env, name, \
             copy_vault, requested_by, status, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10)",
        )
        .bind(a.id.as_str())
        .bind(team.0)
        .bind(source_slug.as_str())
        .bind(a.from.as_str())
        .bind(a.to.as_str())
        .bind(a.name.as_deref())
        .bind(i64::from(a.copy_vault))
        .bind(a.requested_by)
        .bind(a.created_at.0)
        .bind(a.expires_at.0)
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
        let data = serde_json::json!({
            "approval_id": a.id, "from": a.from, "to": a.to,
            "expires_at": a.expires_at.to_rfc3339(),
        });
        let plan = Plan {
            audit: Some(AuditRecord {
                at: p.ctx.now,
                team_id: Some(team),
                actor: p.ctx.actor.0.clone(),
                kind: lifecycle::audit_kind::PROMOTION_REQUESTED,
                stack_slug: Some(source.stack.slug.clone()),
                request_id: p.ctx.request_id.clone(),
                metadata: data.clone(),
            }),
            events: vec![NewEvent {
                kind: "promotion.pending",
                data,
            }],
            ..Plan::nothing(p.ctx.now)
        };
        self.commit_plan(tx, Some(&source.stack), &plan).await?;
        Ok(a)
    }

    /// The team's approval `id`, locked (PostgreSQL: `FOR UPDATE`; SQLite: the writer).
    async fn lock_approval(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        id: &str,
    ) -> Result<Option<Approval>> {
        let row: Option<ApprovalRow> = sqlx::query_as(self.sql.lock_promotion)
            .bind(id)
            .bind(team.0)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(ApprovalRow::decode).transpose()
    }

    /// `FamilyStore::decide_promotion`. Lock: the approval's row.
    pub async fn decide_promotion(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        id: &str,
        approve: bool,
        by: i64,
        ctx: AuditCtx,
    ) -> std::result::Result<Approval, ApprovalError> {
        let mut a = self
            .lock_approval(&mut tx, team, id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        match a.status {
            ApprovalStatus::Pending => {}
            ApprovalStatus::Executed => return Err(ApprovalError::AlreadyExecuted),
            other => return Err(ApprovalError::WrongState(other.as_str())),
        }
        if ctx.now.0 >= a.expires_at.0 {
            return Err(ApprovalError::Expired);
        }
        if by == a.requested_by {
            return Err(ApprovalError::OwnRequest);
        }
        a.status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Rejected
        };
        a.decided_by = Some(by);
        sqlx::query(
            "UPDATE promotions SET status = $2, decided_by = $3, decided_at = $4 WHERE id = $1",
        )
        .bind(a.id.as_str())
        .bind(a.status.as_str())
        .bind(by)
        .bind(ctx.now.0)
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
        let audit = AuditRecord {
            at: ctx.now,
            team_id: Some(team),
            actor: ctx.actor.0.clone(),
            kind: if approve {
                lifecycle::audit_kind::PROMOTION_APPROVED
            } else {
                lifecycle::audit_kind::PROMOTION_REJECTED
            },
            stack_slug: Some(a.source.clone()),
            request_id: ctx.request_id.clone(),
            metadata: serde_json::json!({ "approval_id": a.id, "from": a.from, "to": a.to }),
        };
        self.insert_audit(&mut tx, &audit).await?;
        Self::commit(tx).await?;
        Ok(a)
    }

    /// `FamilyStore::execute_promotion`. Locks: the approval's row, then the promote's.
    pub async fn execute_promotion(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        source_slug: &StackSlug,
        id: &str,
        p: Promotion,
        keyring: &Keyring,
    ) -> std::result::Result<Promoted, ApprovalError> {
        let a = self
            .lock_approval(&mut tx, team, id)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        match a.status {
            ApprovalStatus::Approved => {}
            ApprovalStatus::Executed => return Err(ApprovalError::AlreadyExecuted),
            ApprovalStatus::Rejected => return Err(ApprovalError::Rejected),
            ApprovalStatus::Pending if p.ctx.now.0 >= a.expires_at.0 => {
                return Err(ApprovalError::Expired);
            }
            ApprovalStatus::Pending => return Err(ApprovalError::WrongState("pending")),
        }
        if &a.source != source_slug || a.to != p.to {
            return Err(ApprovalError::Mismatch);
        }
        // What was approved is what runs: its env check, name and vault copy.
        let p = Promotion {
            from: Some(a.from.clone()),
            name: a.name.clone(),
            copy_vault: a.copy_vault,
            ..p
        };
        let promoted = self
            .promote_in(&mut tx, team, source_slug, p, keyring)
            .await?;
        sqlx::query("UPDATE promotions SET status = 'executed', target_slug = $2 WHERE id = $1")
            .bind(a.id.as_str())
            .bind(promoted.stack.slug.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        Self::commit(tx)
            .await
            .map_err(promote_unique)
            .map_err(PromoteError::from)?;
        Ok(promoted)
    }

    /// `FamilyStore::list_promotions`.
    pub async fn list_promotions(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<Approval>> {
        let rows: Vec<ApprovalRow> = sqlx::query_as(concat!(
            "SELECT ",
            crate::approval_cols!(),
            " FROM promotions WHERE team_id = $1 AND ($2 IS NULL OR status = $2) \
             ORDER BY created_at DESC, id LIMIT 200"
        ))
        .bind(team.0)
        .bind(status.map(|s| s.as_str()))
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter().map(ApprovalRow::decode).collect()
    }

    /// [`Self::promote`] in the caller's transaction (an approval's execution adds its own
    /// row to it).
    async fn promote_in(
        &self,
        tx: &mut Transaction<'static, DB>,
        team: TeamId,
        source_slug: &StackSlug,
        p: Promotion,
        keyring: &Keyring,
    ) -> std::result::Result<Promoted, PromoteError> {
        let cap = self.team_cap(&mut **tx, team).await?;
        let Some(source) = self
            .lock_stack(&mut **tx, StackRef::Slug(Access::Team(team), source_slug))
            .await?
        else {
            return Err(PromoteError::NotFound);
        };
        let live = lifecycle::promote::source_release(&source, p.from.as_deref(), &p.to)?.clone();
        let from = source.stack.environment.clone();
        let (root, manifest): (i64, String) = sqlx::query_as(
            "SELECT COALESCE(parent_stack_id, id), manifest FROM stacks WHERE id = $1",
        )
        .bind(source.stack.id.0)
        .fetch_one(&mut **tx)
        .await
        .map_err(Error::from)?;
        let target_id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM stacks WHERE COALESCE(parent_stack_id, id) = $1 AND environment = $2",
        )
        .bind(root)
        .bind(p.to.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(Error::from)?;
        let target = match target_id {
            Some(id) => Some(
                self.lock_stack(&mut **tx, StackRef::Id(StackId(id)))
                    .await?
                    .ok_or_else(|| corrupt("a family's stack vanished under its lock"))?,
            ),
            None => None,
        };
        if target
            .as_ref()
            .is_some_and(|t| t.stack.status == StackStatus::Deleting)
        {
            return Err(PromoteError::Deleting);
        }
        let root_slug: String = sqlx::query_scalar("SELECT slug FROM stacks WHERE id = $1")
            .bind(root)
            .fetch_optional(&mut **tx)
            .await
            .map_err(Error::from)?
            .unwrap_or_else(|| source.stack.slug.as_str().to_owned());
        let mut artifacts = Vec::new();
        for digest in live
            .services
            .iter()
            .map(|s| s.artifact.as_str())
            .filter(|d| !d.is_empty())
            .collect::<BTreeSet<_>>()
        {
            let size: Option<i64> =
                sqlx::query_scalar("SELECT size FROM artifacts WHERE digest = $1")
                    .bind(digest)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(Error::from)?;
            let size = size.ok_or_else(|| corrupt("a live release's artifact has no row"))?;
            artifacts.push((digest.to_owned(), size));
        }

        // The vault first, so the references below resolve against what it copied.
        let mut copied = Vec::new();
        if p.copy_vault
            && let (Ok(f), Ok(t)) = (EnvironmentName::parse(&from), EnvironmentName::parse(&p.to))
        {
            let copy = VaultCopy {
                from: f,
                to: t,
                keys: None,
                dry_run: false,
                overwrite: false,
            };
            let out = self
                .copy_vault_in(&mut **tx, team, &copy, &p.ctx, keyring)
                .await?;
            copied = out
                .plan
                .iter()
                .filter(|(_, a)| a.writes())
                .map(|(k, _)| k.as_str().to_owned())
                .collect();
        }
        // Source env < target env: the target keeps its own values.
        let source_env = self
            .env_head(&mut **tx, source.stack.id, false, keyring)
            .await?
            .map(|(h, _)| h)
            .ok_or(PromoteError::NotFound)?;
        let target_env = match &target {
            Some(t) => self
                .env_head(&mut **tx, t.stack.id, false, keyring)
                .await?
                .map(|(h, _)| h.env)
                .unwrap_or_default(),
            None => EnvMap::new(),
        };
        let mut merged = source_env.env.to_map();
        merged.extend(target_env.to_map());
        let merged = EnvMap::from_map(merged);
        let refs = self
            .vault_versions(&mut **tx, Some(team), &p.to, &merged, &live.services)
            .await??;

        let (plan, outcome) = match &target {
            Some(t) => {
                let planned = lifecycle::release::plan(
                    t,
                    NewRelease {
                        services: Some(live.services.clone()),
                        artifacts,
                        manifest: Some(manifest),
                        ctx: p.ctx.clone(),
                        idempotency: None,
                    },
                )
                .map_err(|e| match e {
                    ReleaseError::Deleting => PromoteError::Deleting,
                    ReleaseError::NotFound => PromoteError::NotFound,
                    ReleaseError::Vault(v) => PromoteError::Vault(v),
                    ReleaseError::Store(s) => PromoteError::Store(s),
                })?;
                let (stack, release) = planned.outcome;
                (
                    planned.plan,
                    (PromoteAction::UpdatedExisting, stack, release),
                )
            }
            None => {
                let new = NewStack {
                    slug: p.new_slug.clone(),
                    name: p.name.clone().unwrap_or_else(|| source.stack.name.clone()),
                    environment: p.to.clone(),
                    team_id: Some(team),
                    fingerprint: None,
                    tier: source.stack.tier.clone(),
                    expires_at: None,
                    manifest,
                    services: live.services.clone(),
                    artifacts,
                    ctx: p.ctx.clone(),
                    idempotency: None,
                };
                let planned = lifecycle::create::plan(new, cap).map_err(|e| match e {
                    CreateStackError::LimitReached { max } => PromoteError::LimitReached { max },
                    CreateStackError::Vault(v) => PromoteError::Vault(v),
                    CreateStackError::Store(s) => PromoteError::Store(s),
                })?;
                let stack = planned.outcome;
                let release = ReleaseInfo {
                    version: 1,
                    status: ReleaseStatus::Pending,
                    env_version: 0,
                    created_at: p.ctx.now,
                };
                (planned.plan, (PromoteAction::Created, stack, release))
            }
        };
        let (action, stack, release) = outcome;
        let mut promoted = Promoted {
            action,
            stack,
            release,
            parent: slug(&root_slug)?,
            source: source.stack.slug.clone(),
            source_release: live.info.version,
            vault_keys_copied: copied,
        };
        let mut plan = plan;
        plan.idempotency = p.idempotency.as_ref().map(|i| IdempotencyRecord {
            status: action.status(),
            ..i.record(&promoted)
        });
        let id = self
            .write_plan(&mut **tx, target.as_ref().map(|t| &t.stack), &plan)
            .await
            .map_err(promote_unique)?;
        promoted.stack.id = id;
        if action == PromoteAction::Created {
            sqlx::query("UPDATE stacks SET parent_stack_id = $2 WHERE id = $1")
                .bind(id.0)
                .bind(root)
                .execute(&mut **tx)
                .await
                .map_err(Error::from)?;
        }
        // The release's env is the overlay, sealed by the target's data key.
        let (head, codec) = self
            .env_head(&mut **tx, id, true, keyring)
            .await?
            .ok_or_else(|| corrupt("the promote's target vanished"))?;
        let codec = match codec {
            EnvCodec::Plain => self.seal_stack(&mut **tx, id, &head, keyring).await?,
            codec => codec,
        };
        let from_json = serde_json::json!({
            "stack": promoted.source.as_str(),
            "release": live.info.version,
            "env_version": source_env.version,
        });
        sqlx::query(self.sql.seal_release_env)
            .bind(id.0)
            .bind(promoted.release.version)
            .bind(codec.seal_map(&merged, promoted.release.env_version)?)
            .execute(&mut **tx)
            .await
            .map_err(Error::from)?;
        sqlx::query("UPDATE releases SET promoted_from = $3 WHERE stack_id = $1 AND version = $2")
            .bind(id.0)
            .bind(promoted.release.version)
            .bind(from_json.to_string())
            .execute(&mut **tx)
            .await
            .map_err(Error::from)?;
        self.record_vault_refs(&mut **tx, id, &plan, &refs).await?;
        let audit = AuditRecord {
            at: p.ctx.now,
            team_id: Some(team),
            actor: p.ctx.actor.0.clone(),
            kind: lifecycle::audit_kind::PROMOTED,
            stack_slug: Some(promoted.source.clone()),
            request_id: p.ctx.request_id.clone(),
            metadata: serde_json::json!({
                "from": from,
                "to": p.to,
                "target": promoted.stack.slug.as_str(),
                "action": action.as_str(),
                "release": promoted.release.version,
                "source_release": live.info.version,
                "vault_keys_copied": promoted.vault_keys_copied.len(),
            }),
        };
        self.insert_audit(&mut **tx, &audit).await?;
        Ok(promoted)
    }

    /// `DomainStore::add_domain`. Locks: the team's row (the cap), then the stack's.
    pub async fn add_domain(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        slug: &StackSlug,
        new: NewDomain,
    ) -> std::result::Result<Domain, DomainError> {
        if let Some(max) = new.max_per_team {
            sqlx::query_scalar::<_, Option<i64>>(self.sql.lock_team_cap)
                .bind(team.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::from)?;
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM domains WHERE team_id = $1")
                .bind(team.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::from)?;
            if count >= max {
                return Err(DomainError::LimitReached { max });
            }
        }
        let Some(locked) = self
            .lock_stack(&mut tx, StackRef::Slug(Access::Team(team), slug))
            .await?
        else {
            return Err(DomainError::NotFound);
        };
        if locked.stack.status == StackStatus::Deleting {
            return Err(DomainError::Deleting);
        }
        let taken: Option<String> =
            sqlx::query_scalar("SELECT id FROM domains WHERE hostname = $1")
                .bind(new.hostname.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::from)?;
        if taken.is_some() {
            return Err(DomainError::HostnameTaken);
        }
        let domain = Domain {
            id: new.id,
            team,
            stack: locked.stack.id,
            stack_slug: slug.clone(),
            hostname: new.hostname,
            token: new.token,
            status: DomainStatus::PendingVerification,
            created_at: new.ctx.now,
            verified_at: None,
            last_check_at: None,
            last_check_err: None,
            missing_since: None,
            cert_error: None,
            cert_not_after: None,
        };
        let inserted = sqlx::query(
            "INSERT INTO domains (id, team_id, stack_id, hostname, token, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(domain.id.as_str())
        .bind(team.0)
        .bind(domain.stack.0)
        .bind(domain.hostname.as_str())
        .bind(domain.token.as_str())
        .bind(domain.status.as_str())
        .bind(domain.created_at.0)
        .execute(&mut *tx)
        .await
        .map_err(Error::from);
        match inserted {
            Err(e) if is_unique_violation(&e, "domains_hostname_key") => {
                return Err(DomainError::HostnameTaken);
            }
            other => other?,
        };
        let audit = domain_audit(&domain, lifecycle::audit_kind::DOMAIN_ADDED, &new.ctx);
        self.insert_audit(&mut tx, &audit).await?;
        Self::commit(tx).await.map_err(|e| {
            if is_unique_violation(&e, "domains_hostname_key") {
                DomainError::HostnameTaken
            } else {
                DomainError::Store(e.into())
            }
        })?;
        Ok(domain)
    }

    /// `DomainStore::list_domains`.
    pub async fn list_domains(
        &self,
        conn: &mut DB::Connection,
        team: TeamId,
        slug: &StackSlug,
    ) -> Result<Option<Vec<Domain>>> {
        let stack: Option<i64> =
            sqlx::query_scalar("SELECT id FROM stacks WHERE slug = $1 AND team_id = $2")
                .bind(slug.as_str())
                .bind(team.0)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(stack) = stack else { return Ok(None) };
        let rows: Vec<DomainRow> = sqlx::query_as(domain_sql::BY_STACK)
            .bind(stack)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter()
            .map(DomainRow::decode)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// `DomainStore::save_domain_check`: one statement on the domain's row.
    pub async fn save_domain_check(
        &self,
        mut tx: Transaction<'static, DB>,
        d: &Domain,
    ) -> Result<bool> {
        let done: Option<String> = sqlx::query_scalar(
            "UPDATE domains SET status = $2, verified_at = $3, last_check_at = $4, \
             last_check_err = $5, missing_since = $6 WHERE id = $1 RETURNING id",
        )
        .bind(d.id.as_str())
        .bind(d.status.as_str())
        .bind(d.verified_at.map(|t| t.0))
        .bind(d.last_check_at.map(|t| t.0))
        .bind(d.last_check_err.as_deref())
        .bind(d.missing_since.map(|t| t.0))
        .fetch_optional(&mut *tx)
        .await?;
        if !d.status.is_verified() {
            // Ownership lapsed: its certificate is no longer this team's to serve.
            sqlx::query("DELETE FROM certificates WHERE domain_id = $1")
                .bind(d.id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        Self::commit(tx).await?;
        Ok(done.is_some())
    }

    /// `DomainStore::remove_domain`.
    pub async fn remove_domain(
        &self,
        mut tx: Transaction<'static, DB>,
        team: TeamId,
        slug: &StackSlug,
        id: &str,
        ctx: AuditCtx,
    ) -> Result<bool> {
        let row: Option<DomainRow> = sqlx::query_as(domain_sql::BY_ID)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(d) = row.map(DomainRow::decode).transpose()? else {
            return Ok(false);
        };
        if d.team != team || &d.stack_slug != slug {
            return Ok(false);
        }
        sqlx::query("DELETE FROM domains WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let audit = domain_audit(&d, lifecycle::audit_kind::DOMAIN_REMOVED, &ctx);
        self.insert_audit(&mut tx, &audit).await?;
        Self::commit(tx).await?;
        Ok(true)
    }

    /// `DomainStore::domains_to_recheck`.
    pub async fn domains_to_recheck(
        &self,
        conn: &mut DB::Connection,
        before: Millis,
        limit: i64,
    ) -> Result<Vec<Domain>> {
        let rows: Vec<DomainRow> = sqlx::query_as(domain_sql::TO_RECHECK)
            .bind(before.0)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(DomainRow::decode).collect()
    }

    /// `DomainStore::domain_route_target`.
    pub async fn domain_route_target(
        &self,
        conn: &mut DB::Connection,
        d: &Domain,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(domain_sql::TARGET)
            .bind(d.stack.0)
            .fetch_optional(&mut *conn)
            .await?)
    }

    /// `DomainStore::domain_routes`.
    pub async fn domain_routes(&self, conn: &mut DB::Connection) -> Result<Vec<DomainRoute>> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(domain_sql::ROUTES)
            .fetch_all(&mut *conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(hostname, url)| {
                url.map(|service_url| DomainRoute {
                    hostname,
                    service_url,
                })
            })
            .collect())
    }

    /// `DomainStore::certificates_due`.
    pub async fn certificates_due(
        &self,
        conn: &mut DB::Connection,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<Domain>> {
        let rows: Vec<DomainRow> = sqlx::query_as(domain_sql::CERTS_DUE)
            .bind(now.0)
            .bind(now.0 - stackyard_core::domain::CERT_ORDER_LEASE_MS)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter().map(DomainRow::decode).collect()
    }

    /// `DomainStore::claim_certificate_order`: one compare-and-set statement.
    pub async fn claim_certificate_order(
        &self,
        mut tx: Transaction<'static, DB>,
        id: &str,
        now: Millis,
    ) -> Result<bool> {
        let done: Option<String> = sqlx::query_scalar(domain_sql::CLAIM_ORDER)
            .bind(id)
            .bind(now.0)
            .bind(now.0 - stackyard_core::domain::CERT_ORDER_LEASE_MS)
            .fetch_optional(&mut *tx)
            .await?;
        Self::commit(tx).await?;
        Ok(done.is_some())
    }

    /// `DomainStore::save_certificate`. The domain's row is updated first, so it is locked
    /// (PostgreSQL) while the certificate row is written, and a removal waits or wins.
    pub async fn save_certificate(
        &self,
        mut tx: Transaction<'static, DB>,
        keyring: &Keyring,
        id: &str,
        cert: NewCertificate,
        now: Millis,
    ) -> Result<bool> {
        let marked: Option<String> = sqlx::query_scalar(domain_sql::MARK_CERTIFIED)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if marked.is_none() {
            return Ok(false);
        }
        let renewal = sqlx::query_scalar::<_, String>(
            "SELECT domain_id FROM certificates WHERE domain_id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        let (sealed, wrapped) = crate::seal::seal_owned(
            keyring,
            KeyOwner::certificate(id),
            &format!("{CERT_KEY_NAME}/{id}"),
            cert.key_pem.as_bytes(),
        );
        sqlx::query(domain_sql::UPSERT_CERT)
            .bind(id)
            .bind(cert.chain_pem.as_str())
            .bind(sealed)
            .bind(wrapped)
            .bind(cert.not_before.0)
            .bind(cert.not_after.0)
            .bind(stackyard_core::domain::renew_at(cert.not_before, cert.not_after).0)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        let extra = serde_json::json!({ "renewal": renewal, "not_after": cert.not_after.0 });
        self.audit_certificate(
            &mut tx,
            id,
            lifecycle::audit_kind::DOMAIN_CERTIFICATE_ISSUED,
            now,
            extra,
        )
        .await?;
        Self::commit(tx).await?;
        Ok(true)
    }

    /// The system's audit row of a certificate event of domain `id`, with `extra` metadata.
    async fn audit_certificate(
        &self,
        tx: &mut Transaction<'static, DB>,
        id: &str,
        kind: &'static str,
        now: Millis,
        extra: serde_json::Value,
    ) -> Result<()> {
        let row: Option<DomainRow> = sqlx::query_as(domain_sql::BY_ID)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(d) = row.map(DomainRow::decode).transpose()? else {
            return Ok(());
        };
        let ctx = AuditCtx {
            actor: Actor::system(),
            request_id: None,
            now,
        };
        let mut audit = domain_audit(&d, kind, &ctx);
        if let (Some(m), serde_json::Value::Object(extra)) = (audit.metadata.as_object_mut(), extra)
        {
            m.extend(extra);
        }
        self.insert_audit(tx, &audit).await
    }

    /// `DomainStore::save_certificate_failure`.
    pub async fn save_certificate_failure(
        &self,
        mut tx: Transaction<'static, DB>,
        id: &str,
        error: &str,
        refused: bool,
        now: Millis,
    ) -> Result<bool> {
        let status: Option<String> = sqlx::query_scalar(domain_sql::FAILURE)
            .bind(id)
            .bind(error)
            .bind(refused)
            .fetch_optional(&mut *tx)
            .await?;
        if refused && status.as_deref() == Some(DomainStatus::Failed.as_str()) {
            let extra = serde_json::json!({ "error": error });
            self.audit_certificate(
                &mut tx,
                id,
                lifecycle::audit_kind::DOMAIN_CERTIFICATE_REFUSED,
                now,
                extra,
            )
            .await?;
        }
        Self::commit(tx).await?;
        Ok(status.is_some())
    }

    /// `DomainStore::certificates`.
    pub async fn certificates(
        &self,
        conn: &mut DB::Connection,
        keyring: &Keyring,
    ) -> Result<Vec<DomainCertificate>> {
        let rows: Vec<CertificateRow> = sqlx::query_as(domain_sql::SERVED)
            .fetch_all(&mut *conn)
            .await?;
        rows.into_iter()
            .map(|r| {
                let key = crate::seal::open_owned(
                    keyring,
                    KeyOwner::certificate(&r.id),
                    &format!("{CERT_KEY_NAME}/{}", r.id),
                    &r.key_sealed,
                    &r.data_key,
                )?;
                Ok(DomainCertificate {
                    hostname: r.hostname,
                    chain_pem: r.chain_pem,
                    key_pem: String::from_utf8(key)
                        .map_err(|_| corrupt("a certificate key is not PEM text"))?,
                    not_after: Millis(r.not_after),
                })
            })
            .collect()
    }

    /// `DomainStore::acme_account`.
    pub async fn acme_account(
        &self,
        conn: &mut DB::Connection,
        keyring: &Keyring,
        directory: &str,
    ) -> Result<Option<String>> {
        let row: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT credentials, data_key FROM acme_accounts WHERE directory = $1")
                .bind(directory)
                .fetch_optional(&mut *conn)
                .await?;
        row.map(|(sealed, wrapped)| {
            let plain = crate::seal::open_owned(
                keyring,
                KeyOwner::acme_account(directory),
                ACME_ACCOUNT_NAME,
                &sealed,
                &wrapped,
            )?;
            String::from_utf8(plain).map_err(|_| corrupt("ACME credentials are not text"))
        })
        .transpose()
    }

    /// `DomainStore::save_acme_account`: insert unless present, then read what is stored.
    pub async fn save_acme_account(
        &self,
        mut tx: Transaction<'static, DB>,
        keyring: &Keyring,
        directory: &str,
        credentials: &str,
        now: Millis,
    ) -> Result<String> {
        let (sealed, wrapped) = crate::seal::seal_owned(
            keyring,
            KeyOwner::acme_account(directory),
            ACME_ACCOUNT_NAME,
            credentials.as_bytes(),
        );
        sqlx::query(
            "INSERT INTO acme_accounts (directory, credentials, data_key, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (directory) DO NOTHING",
        )
        .bind(directory)
        .bind(sealed)
        .bind(wrapped)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        let stored = self.acme_account(&mut *tx, keyring, directory).await?;
        Self::commit(tx).await?;
        stored.ok_or_else(|| corrupt("the ACME account row vanished"))
    }
}

/// Names a certificate's key is sealed under (with the domain id) and an ACME account's.
const CERT_KEY_NAME: &str = "certificate_key";
const ACME_ACCOUNT_NAME: &str = "acme_account";

/// A value as the vault stores it: sealed, with its keyed digest and plaintext length.
#[derive(Debug, Clone)]
pub struct SealedValue {
    pub sealed: Vec<u8>,
    pub digest: Vec<u8>,
    pub length: i64,
}

/// The name a vault value is sealed and digested under: `<env>/<key>`.
fn vault_name(env: &str, key: &str) -> String {
    format!("{env}/{key}")
}

/// Seals one vault value: the only place a vault plaintext becomes bytes for the database.
/// Bound to the team's vault, `<env>/<key>` and the version, so a sealed value moved to
/// another row does not open.
pub fn seal_vault_value(
    dk: &DataKey,
    team: TeamId,
    env: &str,
    key: &str,
    version: i64,
    plaintext: &[u8],
) -> SealedValue {
    let name = vault_name(env, key);
    let ad = ValueAd {
        owner: KeyOwner::team_vault(team),
        name: &name,
        version,
    };
    SealedValue {
        sealed: dk.seal(ad, plaintext),
        digest: dk.digest(&name, plaintext).0.to_vec(),
        length: i64::try_from(plaintext.len()).unwrap_or(i64::MAX),
    }
}

/// Opens what [`seal_vault_value`] sealed for the same team, env, key and version.
pub fn open_vault_value(
    dk: &DataKey,
    team: TeamId,
    env: &str,
    key: &str,
    version: i64,
    sealed: &[u8],
) -> Result<String> {
    let name = vault_name(env, key);
    let ad = ValueAd {
        owner: KeyOwner::team_vault(team),
        name: &name,
        version,
    };
    let plain = dk
        .open(ad, sealed)
        .map_err(|_| corrupt("a vault value did not open"))?;
    String::from_utf8(plain).map_err(|_| corrupt("a vault value is not UTF-8"))
}

/// The vault statements, valid on both dialects (the tables are identical but for the byte
/// columns' type name).
mod vault_sql {
    /// `$1` team, `$2` env, `$3` key → the key's next version. The upsert takes the head row's
    /// lock until commit: writers of one key queue here.
    pub const BUMP_HEAD: &str = "INSERT INTO vault_heads (team_id, env, key, version) \
         VALUES ($1, $2, $3, 1) ON CONFLICT (team_id, env, key) \
         DO UPDATE SET version = vault_heads.version + 1 RETURNING version";
    /// `$1` team, `$2` env, `$3` key: takes the head row's lock without changing it.
    pub const LOCK_HEAD: &str = "UPDATE vault_heads SET version = version \
         WHERE team_id = $1 AND env = $2 AND key = $3 RETURNING version";
    pub const INSERT_VALUE: &str = "INSERT INTO vault_values \
         (team_id, env, key, version, sealed, digest, length, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    /// `$1` team, `$2` env, `$3` key, `$4` version or NULL (the newest) → `(version, sealed)`.
    pub const GET_VALUE: &str = "SELECT version, sealed FROM vault_values \
         WHERE team_id = $1 AND env = $2 AND key = $3 AND ($4 IS NULL OR version = $4) \
         ORDER BY version DESC LIMIT 1";
    /// `$1` team, `$2` env, `$3` key, `$4` version → that version, if it exists.
    pub const GET_VERSION: &str = "SELECT version FROM vault_values \
         WHERE team_id = $1 AND env = $2 AND key = $3 AND version = $4";
    /// `$1` team, `$2` env, `$3` key → the newest version, if any.
    pub const NEWEST_VERSION: &str = "SELECT MAX(version) FROM vault_values \
         WHERE team_id = $1 AND env = $2 AND key = $3";
    pub const LIST_KEYS: &str = "SELECT DISTINCT key FROM vault_values \
         WHERE team_id = $1 AND env = $2 ORDER BY key";
    pub const DELETE_KEY: &str =
        "DELETE FROM vault_values WHERE team_id = $1 AND env = $2 AND key = $3 RETURNING version";
    /// `$1` stack, `$2` release, `$3` env, `$4` key, `$5` version.
    pub const INSERT_REF: &str = "INSERT INTO release_vault_refs \
         (stack_id, release, env, key, version) VALUES ($1, $2, $3, $4, $5)";
    /// `$1` stack, `$2` release → `(team_id, env, key, version)` of each recorded reference.
    pub const REFS_OF_RELEASE: &str = "SELECT s.team_id, r.env, r.key, r.version \
         FROM release_vault_refs r JOIN stacks s ON s.id = r.stack_id \
         WHERE r.stack_id = $1 AND r.release = $2 ORDER BY r.key";
}

/// The `(created_at, token)` a `list_resources` page starts below (newest first). A cursor we
/// cannot read starts from the newest resource rather than failing the request.
fn parse_resource_cursor(cursor: Option<&str>) -> (i64, String) {
    cursor
        .and_then(|c| c.split_once(':'))
        .and_then(|(at, token)| Some((at.parse().ok()?, token.to_owned())))
        // `~` sorts after every hex digit and `-`, so the first page starts above every token.
        .unwrap_or((i64::MAX, "~".to_owned()))
}

/// The resource statements, valid on both dialects: the `resources` table has the same
/// columns and types in both schemas, and `IS` compares NULL with NULL in both.
mod resource_sql {
    macro_rules! cols {
        () => {
            "token, id, kind, name, team_id, tier, status, connection_url, created_at, expires_at, \
             stack_id, stack_env, data_key"
        };
    }
    /// `cols!` and the owning stack's slug (NULL for a caller's resource, or once the stack
    /// row is gone).
    macro_rules! select_cols {
        () => {
            concat!(
                cols!(),
                ", (SELECT slug FROM stacks WHERE stacks.id = resources.stack_id) AS stack_slug"
            )
        };
    }
    pub const INSERT: &str = concat!(
        "INSERT INTO resources (",
        cols!(),
        ", fingerprint) VALUES ($1, $2, $3, $4, $5, $7, $8, $9, $10, $11, $12, $13, $14, $6)"
    );
    /// `$1` team: its resources not being deleted, stack-owned ones excluded.
    pub const COUNT_TEAM: &str = "SELECT COUNT(*) FROM resources WHERE team_id = $1 \
         AND status <> 'deleting' AND stack_id IS NULL";
    /// `$1` stack, `$2` env name.
    pub const GET_BY_STACK: &str = concat!(
        "SELECT ",
        select_cols!(),
        " FROM resources WHERE stack_id = $1 AND stack_env = $2"
    );
    /// `$1` stack.
    pub const LIST_BY_STACK: &str = concat!(
        "SELECT ",
        select_cols!(),
        " FROM resources WHERE stack_id = $1 ORDER BY created_at, token"
    );
    pub const COUNT_ALL: &str = "SELECT COUNT(*) FROM resources WHERE team_id = $1";
    /// `$1` token, `$2` team or NULL for any.
    pub const GET: &str = concat!(
        "SELECT ",
        select_cols!(),
        " FROM resources WHERE token = $1 AND ($2 IS NULL OR team_id = $2)"
    );
    pub const LIST: &str = concat!(
        "SELECT ",
        select_cols!(),
        ", (SELECT COUNT(*) FROM resources WHERE team_id = $1) AS total FROM resources \
         WHERE team_id = $1 AND (created_at, token) < ($2, $3) \
         ORDER BY created_at DESC, token DESC LIMIT $4"
    );
    /// `$1` token, `$2` new status, `$3` the status it must have.
    pub const SET_STATUS_FROM: &str =
        "UPDATE resources SET status = $2 WHERE token = $1 AND status = $3 RETURNING token";
    /// `$1` token, `$2` new status (a no-op, no row, when it already has it).
    pub const SET_STATUS: &str =
        "UPDATE resources SET status = $2 WHERE token = $1 AND status <> $2 RETURNING token";
    pub const DELETE: &str = "DELETE FROM resources WHERE token = $1";
    pub const TO_RECONCILE: &str = concat!(
        "SELECT ",
        select_cols!(),
        " FROM resources WHERE status = 'deleting' \
         OR (status = 'provisioning' AND created_at < $1) OR (status = 'ready' AND $2) \
         ORDER BY created_at"
    );
    pub const EXPIRED: &str = concat!(
        "SELECT ",
        select_cols!(),
        " FROM resources WHERE status = 'ready' AND expires_at IS NOT NULL \
         AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
    );
}

/// A slug drawn twice, or another source of the family creating this env's stack at the same
/// moment (PostgreSQL; SQLite's one writer serialises promotes): a conflict, not an outage.
fn promote_unique(e: Error) -> Error {
    if is_unique_violation(&e, "stacks_slug_key") || is_unique_violation(&e, "stacks_family_env") {
        StoreError::Conflict("the family's stack of that env").into()
    } else {
        e
    }
}

/// The family statements, valid on both dialects.
mod family_sql {
    /// `$1` the family's root id, `$2` team: root first, then by creation.
    pub const MEMBERS: &str = "SELECT s.slug, s.name, s.environment, s.status, s.tier, \
         s.created_at, s.parent_stack_id IS NULL AS is_root, \
         (SELECT p.slug FROM stacks p WHERE p.id = s.parent_stack_id) AS parent_slug, \
         (SELECT v.url FROM services v WHERE v.stack_id = s.id AND v.expose IS TRUE \
            AND v.url IS NOT NULL ORDER BY v.position LIMIT 1) AS url, \
         (SELECT MAX(r.created_at) FROM releases r WHERE r.stack_id = s.id) AS last_deploy_at \
         FROM stacks s WHERE COALESCE(s.parent_stack_id, s.id) = $1 AND s.team_id = $2 \
         ORDER BY is_root DESC, s.created_at, s.id";
}

/// Custom domains (`DomainStore`): the same statements on both stores.
mod domain_sql {
    pub const BY_STACK: &str = concat!(
        "SELECT ",
        crate::domain_cols!(),
        crate::domain_from!(),
        " WHERE d.stack_id = $1 ORDER BY d.created_at, d.id"
    );
    pub const BY_ID: &str = concat!(
        "SELECT ",
        crate::domain_cols!(),
        crate::domain_from!(),
        " WHERE d.id = $1"
    );
    pub const TO_RECHECK: &str = concat!(
        "SELECT ",
        crate::domain_cols!(),
        crate::domain_from!(),
        " WHERE d.status IN ('verified', 'routed', 'certificate_ready', 'failed') \
         AND (d.last_check_at IS NULL OR d.last_check_at < $1) \
         ORDER BY d.last_check_at LIMIT $2"
    );
    /// `$1` stack → the URL of its first exposed service that has one.
    pub const TARGET: &str = "SELECT url FROM services WHERE stack_id = $1 AND expose IS TRUE \
         AND url IS NOT NULL ORDER BY position LIMIT 1";
    pub const ROUTES: &str = "SELECT d.hostname, \
         (SELECT v.url FROM services v WHERE v.stack_id = d.stack_id AND v.expose IS TRUE \
            AND v.url IS NOT NULL ORDER BY v.position LIMIT 1) AS url \
         FROM domains d JOIN stacks s ON s.id = d.stack_id \
         WHERE d.status IN ('verified', 'routed', 'certificate_ready', 'failed') \
         AND s.status <> 'deleting'";
    /// `$1` now, `$2` claims before this are stale, `$3` limit.
    pub const CERTS_DUE: &str = concat!(
        "SELECT ",
        crate::domain_cols!(),
        crate::domain_from!(),
        " WHERE d.status IN ('verified', 'routed', 'certificate_ready') \
         AND s.status <> 'deleting' AND (c.domain_id IS NULL OR c.renew_at <= $1) \
         AND (d.cert_attempt_at IS NULL OR d.cert_attempt_at < $2) \
         ORDER BY d.created_at LIMIT $3"
    );
    pub const CLAIM_ORDER: &str = "UPDATE domains SET cert_attempt_at = $2 WHERE id = $1 \
         AND status IN ('verified', 'routed', 'certificate_ready') \
         AND (cert_attempt_at IS NULL OR cert_attempt_at < $3) RETURNING id";
    pub const MARK_CERTIFIED: &str = "UPDATE domains SET status = 'certificate_ready', \
         cert_error = NULL, cert_attempt_at = NULL WHERE id = $1 \
         AND status IN ('verified', 'routed', 'certificate_ready') RETURNING id";
    pub const UPSERT_CERT: &str = "INSERT INTO certificates (domain_id, chain_pem, key_sealed, \
         data_key, not_before, not_after, renew_at, issued_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (domain_id) DO UPDATE SET \
         chain_pem = excluded.chain_pem, key_sealed = excluded.key_sealed, \
         data_key = excluded.data_key, not_before = excluded.not_before, \
         not_after = excluded.not_after, renew_at = excluded.renew_at, \
         issued_at = excluded.issued_at";
    pub const FAILURE: &str = "UPDATE domains SET cert_error = $2, \
         status = CASE WHEN $3 AND status IN ('verified', 'routed', 'certificate_ready') \
         THEN 'failed' ELSE status END WHERE id = $1 RETURNING status";
    pub const SERVED: &str = "SELECT d.id, d.hostname, c.chain_pem, c.key_sealed, c.data_key, \
         c.not_after FROM certificates c JOIN domains d ON d.id = c.domain_id \
         WHERE d.status IN ('verified', 'routed', 'certificate_ready', 'failed')";
}

/// A domain's audit row: its hostname and id (never the token: it is public, but irrelevant).
fn domain_audit(d: &Domain, kind: &'static str, ctx: &AuditCtx) -> AuditRecord {
    AuditRecord {
        at: ctx.now,
        team_id: Some(d.team),
        actor: ctx.actor.0.clone(),
        kind,
        stack_slug: Some(d.stack_slug.clone()),
        request_id: ctx.request_id.clone(),
        metadata: serde_json::json!({ "domain_id": d.id, "hostname": d.hostname }),
    }
}
