//! Env families and promotion (environments.md): a root stack and the stacks promoted from it,
//! one per env; a promote puts the source's live release on the family's stack for the target
//! env, creating it when there is none.

use super::{Idempotent, StoreError};
use crate::ids::StackSlug;
use crate::model::{AuditCtx, ReleaseInfo, Stack, StackStatus, TeamId};
use crate::time::Millis;
use std::future::Future;

/// One stack of a family, as `GET /api/v1/stacks/:slug/family` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyMember {
    pub slug: StackSlug,
    pub name: String,
    pub env: String,
    pub status: StackStatus,
    pub tier: String,
    /// The first exposed service's URL.
    pub url: Option<String>,
    pub is_root: bool,
    /// The root's slug, for a stack promoted from it (`None`: this is the root, or it is gone).
    pub parent: Option<StackSlug>,
    /// When its newest release was made.
    pub last_deploy_at: Option<Millis>,
    pub created_at: Millis,
}

/// `POST /api/v1/stacks/:slug/promote`, validated.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The env the caller believes the source is in (checked under the source's lock).
    pub from: Option<String>,
    pub to: String,
    /// The new target's name (default: the source's).
    pub name: Option<String>,
    /// Copy the vault keys of `from` missing in `to` (never overwriting).
    pub copy_vault: bool,
    /// The slug a new target gets.
    pub new_slug: StackSlug,
    pub ctx: AuditCtx,
    /// Rendered from the outcome; its status is the outcome's (202 created, 200 updated).
    pub idempotency: Option<Idempotent<Promoted>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteAction {
    Created,
    UpdatedExisting,
}

impl PromoteAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PromoteAction::Created => "created",
            PromoteAction::UpdatedExisting => "updated_existing",
        }
    }

    /// The HTTP status of the answer: a new stack is accepted, an update done.
    pub fn status(self) -> u16 {
        match self {
            PromoteAction::Created => 202,
            PromoteAction::UpdatedExisting => 200,
        }
    }
}

/// What a promote did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    pub action: PromoteAction,
    /// The target stack, as it is after the promote.
    pub stack: Stack,
    /// The target's new release.
    pub release: ReleaseInfo,
    /// The family's root.
    pub parent: StackSlug,
    pub source: StackSlug,
    /// The source's release that was promoted.
    pub source_release: i64,
    pub vault_keys_copied: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    #[error("stack not found")]
    NotFound,
    /// The source, or the family's stack for the target env, is being deleted.
    #[error("the stack is being deleted")]
    Deleting,
    /// The target env is the source's own.
    #[error("the target env is the source's")]
    InvalidTarget,
    #[error("the source stack's env is {actual}")]
    EnvMismatch { actual: String },
    #[error("the source stack has no live release")]
    NoLiveRelease,
    #[error("the source's live release has no services")]
    NoServices,
    #[error("the team already has its maximum of {max} stacks")]
    LimitReached { max: i64 },
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultRefError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A promote waiting for (or past) its approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// `apr_<128-bit hex>`.
    pub id: String,
    pub team: TeamId,
    pub source: StackSlug,
    pub from: String,
    pub to: String,
    pub name: Option<String>,
    pub copy_vault: bool,
    /// The token that asked for the promote.
    pub requested_by: i64,
    pub status: ApprovalStatus,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub decided_by: Option<i64>,
    /// The target the executed promote produced.
    pub target: Option<StackSlug>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Executed,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Executed => "executed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ApprovalStatus::Pending,
            ApprovalStatus::Approved,
            ApprovalStatus::Rejected,
            ApprovalStatus::Executed,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// Why an approval cannot be decided or executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no such approval")]
    NotFound,
    #[error("the approval expired")]
    Expired,
    #[error("the approval was already executed")]
    AlreadyExecuted,
    #[error("the approval was rejected")]
    Rejected,
    /// Deciding: it was decided already. Executing: it is not approved yet.
    #[error("the approval is {0}")]
    WrongState(&'static str),
    /// The requester's own token cannot decide its request.
    #[error("the requesting token cannot decide its own request")]
    OwnRequest,
    /// Executing it for another source or env than it was asked for.
    #[error("the approval is for another promote")]
    Mismatch,
    #[error(transparent)]
    Promote(#[from] PromoteError),
}

impl From<StoreError> for ApprovalError {
    fn from(e: StoreError) -> Self {
        ApprovalError::Promote(PromoteError::Store(e))
    }
}

pub trait FamilyStore: Clone + Send + Sync + 'static {
    /// The family of the team's stack `slug`, root first (then by creation), or `None` when
    /// the team has no such stack.
    fn family(
        &self,
        team: TeamId,
        slug: &StackSlug,
    ) -> impl Future<Output = Result<Option<Vec<FamilyMember>>, StoreError>> + Send;

    /// Promotes the live release of the team's stack `source` to the family's stack for
    /// `promotion.to`, in one transaction: under the team's lock when it is capped, then the
    /// source's (where `from`, the live release and `deleting` are decided) and the target's.
    /// A new target gets the source's services and artifacts (nothing is uploaded or built
    /// again), a deploy job and `parent_stack_id`; an existing one a new release like a
    /// redeploy. The release's env is the source's env overlaid by the target's own; vault
    /// references resolve in the target env, after `copy_vault`. Audit `stack.promoted` on
    /// the source with `{from, to, target, action, release, source_release}`.
    fn promote(
        &self,
        team: TeamId,
        source: &StackSlug,
        promotion: Promotion,
    ) -> impl Future<Output = Result<Promoted, PromoteError>> + Send;

    /// Records a promote that needs an approval (`pending`, expiring at `expires_at`), after
    /// the checks a promote makes on the source under its lock (so a request that could never
    /// run is refused now). Audit `promotion.requested` and event `promotion.pending` on the
    /// source, both with the approval id.
    fn request_promotion(
        &self,
        team: TeamId,
        source: &StackSlug,
        promotion: &Promotion,
        approval: Approval,
    ) -> impl Future<Output = Result<Approval, PromoteError>> + Send;

    /// Approves (`approve`) or rejects the team's pending approval `id` as token `by`, under
    /// the approval's row lock: `Expired` past its expiry, `WrongState` once decided,
    /// `OwnRequest` for the requesting token. Audit `promotion.approved` / `.rejected`.
    fn decide_promotion(
        &self,
        team: TeamId,
        id: &str,
        approve: bool,
        by: i64,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<Approval, ApprovalError>> + Send;

    /// Runs the promote an approved approval allows, once: in one transaction with the
    /// approval's row lock, which becomes `executed` (a second run: `AlreadyExecuted`).
    fn execute_promotion(
        &self,
        team: TeamId,
        source: &StackSlug,
        approval: &str,
        promotion: Promotion,
    ) -> impl Future<Output = Result<Promoted, ApprovalError>> + Send;

    /// The team's approvals (of one status, or all), newest first, at most 200.
    fn list_promotions(
        &self,
        team: TeamId,
        status: Option<ApprovalStatus>,
    ) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send;
}
