//! Custom domains of stacks (`crate::domain`).

use super::StoreError;
use crate::domain::Domain;
use crate::ids::StackSlug;
use crate::model::{AuditCtx, TeamId};
use crate::time::Millis;
use std::future::Future;

/// A domain to add, validated.
#[derive(Debug, Clone)]
pub struct NewDomain {
    pub id: String,
    pub hostname: String,
    pub token: String,
    /// `--max-domains`: the team's cap.
    pub max_per_team: Option<i64>,
    pub ctx: AuditCtx,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("stack not found")]
    NotFound,
    #[error("the stack is being deleted")]
    Deleting,
    #[error("the hostname is taken")]
    HostnameTaken,
    #[error("the team already has its maximum of {max} domains")]
    LimitReached { max: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A routed domain and where it goes: the URL of its stack's first exposed service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRoute {
    pub hostname: String,
    pub service_url: String,
}

pub trait DomainStore: Clone + Send + Sync + 'static {
    /// Adds a `pending_verification` domain to the team's stack `slug`, under the team's row
    /// lock (the cap) and the stack's (not `deleting`); the hostname is unique across every
    /// team (`HostnameTaken`). Audit `domain.added`.
    fn add_domain(
        &self,
        team: TeamId,
        slug: &StackSlug,
        new: NewDomain,
    ) -> impl Future<Output = Result<Domain, DomainError>> + Send;

    /// The domains of the team's stack `slug`, oldest first; `None` when there is no such stack.
    fn list_domains(
        &self,
        team: TeamId,
        slug: &StackSlug,
    ) -> impl Future<Output = Result<Option<Vec<Domain>>, StoreError>> + Send;

    /// Stores `domain` as a check left it (status, times, error), if it still exists.
    fn save_domain_check(
        &self,
        domain: &Domain,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the team's domain `id` of stack `slug`. Audit `domain.removed`.
    fn remove_domain(
        &self,
        team: TeamId,
        slug: &StackSlug,
        id: &str,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Verified domains last checked before `before`, at most `limit`.
    fn domains_to_recheck(
        &self,
        before: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Domain>, StoreError>> + Send;

    /// Whether the stack of `domain` has an exposed service with a URL to route to.
    fn domain_route_target(
        &self,
        domain: &Domain,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Every routed domain with its target URL (stacks not being deleted).
    fn domain_routes(&self) -> impl Future<Output = Result<Vec<DomainRoute>, StoreError>> + Send;
}
