//! A stack's environment map: batched writes (the group-commit hot path), dry runs, reads with
//! an audited reveal, and the version history. What a batch writes is decided in
//! `crate::envlog`.

use super::{Idempotent, StoreError};
use crate::env::{EnvError, EnvPatch};
use crate::model::{AuditCtx, EnvOutcome, EnvVersionInfo, Page, StackId};
use std::future::Future;
use std::time::Instant;

/// One env write queued for a stack: a merge or a rollback, with its own precondition.
#[derive(Debug, Clone)]
pub struct EnvWrite {
    pub op: EnvOp,
    /// `If-Match`: apply only if the version is still this.
    pub if_match: Option<i64>,
    pub ctx: AuditCtx,
    /// Completed with the write's own outcome in the batch's transaction (never for dry runs).
    pub idempotency: Option<Idempotent<EnvOutcome>>,
    /// When the writer stops waiting: its request's arrival plus the lock bound, so that time
    /// spent queued behind other batches counts too. `None`: the store's bound, from the start
    /// of the batch.
    pub deadline: Option<Instant>,
}

/// The deadline of a batch: its most impatient write's.
pub fn batch_deadline(writes: &[EnvWrite]) -> Option<Instant> {
    writes.iter().filter_map(|w| w.deadline).min()
}

#[derive(Debug, Clone)]
pub enum EnvOp {
    Patch(EnvPatch),
    Rollback { to_version: i64 },
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

/// One write's result within a batch.
pub type EnvWriteResult = Result<EnvOutcome, EnvWriteError>;

pub trait EnvStore: Clone + Send + Sync + 'static {
    /// Applies a batch of env writes to one stack in one transaction and one commit, in order,
    /// each checked on its own: a write that fails its precondition or the size rule is refused
    /// alone, the others commit. Each effective write gets its own version, version row, audit
    /// row and `env.version` event; a write that changes nothing gets none of them. Under the
    /// stack's lock: the stack must exist (`NotFound`) and not be `deleting` (`Deleting`).
    fn apply_env_writes(
        &self,
        stack: StackId,
        writes: &[EnvWrite],
    ) -> impl Future<Output = Result<Vec<EnvWriteResult>, EnvBatchError>> + Send;

    /// What `apply_env_writes` would do with one write, without writing anything.
    fn preview_env_write(
        &self,
        stack: StackId,
        write: EnvWrite,
    ) -> impl Future<Output = Result<EnvWriteResult, EnvBatchError>> + Send;

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
}
