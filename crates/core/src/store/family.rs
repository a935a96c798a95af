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
}
