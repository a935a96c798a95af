//! What happened: stack events (the `GET /stacks/:slug/events` stream) and the audit log.

use super::StoreError;
use crate::model::{AuditEntry, Page, StackEvent, StackId, TeamId};
use std::future::Future;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    pub stack: Option<String>,
    pub kind: Option<String>,
    pub limit: i64,
    pub cursor: Option<String>,
}

pub trait EventStore: Clone + Send + Sync + 'static {
    /// The stack's events with `id > after`, oldest first, at most `limit`. Events outlive the
    /// stack (the last one of a torn-down stack is `stack.deleted`) until `prune` removes them.
    ///
    /// Every change writes its events in its own transaction, under the stack's lock, so ids
    /// increase in commit order per stack and `after` is a resumable cursor (`Last-Event-ID`).
    /// Which change writes which events is decided in `crate::lifecycle` (`crate::envlog` for
    /// `env.version`); their kinds and data are `crate::model::NewEvent`'s constructors.
    fn list_events(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StackEvent>, StoreError>> + Send;

    /// The team's audit rows, newest first, filtered and paged.
    fn list_audit(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> impl Future<Output = Result<Page<AuditEntry>, StoreError>> + Send;
}
