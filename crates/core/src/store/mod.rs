//! The storage traits: every durable read and write Stackyard makes, named after the domain
//! operation, one trait per aggregate so that a consumer names exactly what it uses (the env
//! queue an `EnvStore`, the job workers a `JobStore`). `Store` is their sum; the server holds
//! one. `stackyard-store-sqlite` and `stackyard-store-postgres` implement every trait, and one
//! test suite (`stackyard_testkit::suite`) runs against both.
//!
//! Rules every implementation keeps:
//! - Each method is one transaction; a method that changes something writes its audit row and
//!   its stack events (`EventStore::list_events`) in that same transaction, so all exist or
//!   none does. What a lifecycle step writes is decided in `crate::lifecycle` (and
//!   `crate::envlog` for env batches); the stores read its inputs under the lock and write the
//!   plan.
//! - Writes that read before they write take the stack's (or team's) lock first: PostgreSQL
//!   `SELECT … FOR UPDATE` under `lock_timeout`, SQLite `BEGIN IMMEDIATE` under `busy_timeout`.
//!   A lock wait over the configured bound is `StoreError::LockTimeout`.
//! - Every read or write of a stack is filtered by `Access`; a stack the caller may not see is
//!   reported exactly like one that does not exist.

mod artifacts;
mod domains;
mod env;
mod events;
mod family;
mod housekeeping;
mod idempotency;
mod jobs;
mod keys;
mod resources;
mod stacks;
mod teams;
mod vault;

pub use artifacts::ArtifactStore;
pub use domains::{
    DomainCertificate, DomainError, DomainRoute, DomainStore, NewCertificate, NewDomain,
};
pub use env::{
    EnvBatchError, EnvOp, EnvStore, EnvWrite, EnvWriteError, EnvWriteResult, batch_deadline,
};
pub use events::{AuditFilter, EventStore};
pub use family::{
    Approval, ApprovalError, ApprovalStatus, FamilyMember, FamilyStore, PromoteAction,
    PromoteError, Promoted, Promotion,
};
pub use housekeeping::Housekeeping;
pub use idempotency::{
    IDEMPOTENCY_TTL, IdempotencyBegin, IdempotencyRecord, IdempotencyRequest, Idempotent,
};
pub use jobs::{DeployResult, JobStore};
pub use keys::{KeyStore, SealReport, WrappedKey, WrappedRow};
pub use resources::{CreateResourceError, ResourceStore};
pub use stacks::{
    CreateStackError, NewRelease, NewStack, ReleaseError, RestartError, RestartQueued, StackFilter,
    StackStore,
};
pub use teams::{NewToken, TeamStore};
pub use vault::VaultStore;

use crate::model::Stack;
use std::time::Duration;

/// Every storage operation: what the server holds. Implemented for every type that implements
/// all the per-aggregate traits.
pub trait Store:
    TeamStore
    + StackStore
    + EnvStore
    + JobStore
    + EventStore
    + Housekeeping
    + ResourceStore
    + KeyStore
    + VaultStore
    + FamilyStore
    + DomainStore
    + ArtifactStore
{
}

impl<T> Store for T where
    T: TeamStore
        + StackStore
        + EnvStore
        + JobStore
        + EventStore
        + Housekeeping
        + ResourceStore
        + KeyStore
        + VaultStore
        + FamilyStore
        + DomainStore
        + ArtifactStore
{
}

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
    /// Bound on everything a write transaction waits for before it holds its lock (spec: 3 s):
    /// a pooled connection, the database's lock, and, for env writes, the batches queued
    /// ahead in this process. Past it the write is `StoreError::LockTimeout`, nothing written.
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
