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

/// A certificate issued for a domain. The key is sealed at rest by a data key of its own.
#[derive(Clone)]
pub struct NewCertificate {
    /// The chain as PEM, leaf first.
    pub chain_pem: String,
    /// The private key as PEM.
    pub key_pem: String,
    pub not_before: Millis,
    pub not_after: Millis,
}

impl std::fmt::Debug for NewCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCertificate")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A stored certificate of a verified domain, opened: what the TLS listener serves.
#[derive(Clone)]
pub struct DomainCertificate {
    pub hostname: String,
    pub chain_pem: String,
    pub key_pem: String,
    pub not_after: Millis,
}

impl std::fmt::Debug for DomainCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainCertificate")
            .field("hostname", &self.hostname)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
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

    /// Verified domains (stacks not being deleted) without a certificate or whose renewal is
    /// due at `now`, not claimed by an order within `CERT_ORDER_LEASE_MS`; at most `limit`.
    fn certificates_due(
        &self,
        now: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Domain>, StoreError>> + Send;

    /// Claims the certificate order of domain `id` at `now` (one statement, compare-and-set
    /// on the claim's time): false when another order holds it within the lease or the domain
    /// is no longer verified.
    fn claim_certificate_order(
        &self,
        id: &str,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores the certificate of domain `id` (replacing an older one) and marks the domain
    /// `certificate_ready`, in one transaction; false (nothing written) when the domain is
    /// gone or no longer verified. The key is sealed. Audit `domain.certificate_issued`.
    fn save_certificate(
        &self,
        id: &str,
        cert: NewCertificate,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records why an order for domain `id` failed; `refused` (the CA said no) also marks it
    /// `failed` (audit `domain.certificate_refused`). The claim stays: the next try is after
    /// the lease.
    fn save_certificate_failure(
        &self,
        id: &str,
        error: &str,
        refused: bool,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The certificates of every verified domain, keys opened.
    fn certificates(
        &self,
    ) -> impl Future<Output = Result<Vec<DomainCertificate>, StoreError>> + Send;

    /// The ACME account credentials (JSON) stored for `directory`, opened.
    fn acme_account(
        &self,
        directory: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Stores `credentials` for `directory` unless some are stored already (two servers
    /// registering at once); returns the stored ones, which the caller then uses.
    fn save_acme_account(
        &self,
        directory: &str,
        credentials: &str,
        now: Millis,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}
