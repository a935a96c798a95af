//! Env families and promotion (`/api/v1/stacks/:slug/family`, `…/promote`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One stack of a family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FamilyMember {
    pub slug: String,
    pub name: String,
    pub env: String,
    /// `building`, `deploying`, `healthy`, `failed` or `deleting`.
    pub status: String,
    pub tier: String,
    /// The first exposed service's URL, once it has one.
    pub url: Option<String>,
    pub is_root: bool,
    /// The root's slug, for a stack promoted from it.
    pub parent_stack_id: Option<String>,
    /// RFC 3339 time of its newest release.
    pub last_deploy_at: Option<String>,
    pub created_at: String,
}

/// `GET /api/v1/stacks/:slug/family`: the root first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Family {
    pub ok: bool,
    pub slug: String,
    pub family: Vec<FamilyMember>,
    pub total: usize,
}

/// `POST /api/v1/stacks/:slug/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The env the source is in; refused with 409 `env_mismatch` when it is not.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub from: Option<String>,
    /// The target env (`[A-Za-z0-9_-]{1,64}`), not the source's.
    #[schema(example = "staging", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub to: String,
    /// A new target's name (default: the source's).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9 _-]{0,63}$")]
    pub name: Option<String>,
    /// Copy the source env's vault keys that the target env lacks (never overwriting).
    #[serde(default = "yes")]
    pub copy_vault: bool,
    /// Runs the promote an approval allowed (once), for an env of `--approval-envs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

fn yes() -> bool {
    true
}

/// `POST /api/v1/stacks/:slug/promote` 202 (`created`) or 200 (`updated_existing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Promoted {
    pub ok: bool,
    /// `created` or `updated_existing`.
    pub action: String,
    /// The target stack.
    pub stack_id: String,
    pub env: String,
    /// The family's root.
    pub parent_id: String,
    /// The source stack.
    pub source: String,
    /// The source's release that was promoted.
    pub source_release: i64,
    /// The target's new release.
    pub release: i64,
    /// Always `building`.
    pub status: String,
    pub vault_keys_copied: usize,
    pub note: String,
}

/// `POST /api/v1/stacks/:slug/promote` 202 for an env that needs an approval: nothing ran yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromotionPending {
    pub ok: bool,
    /// Always `pending_approval`.
    pub status: String,
    pub approval_id: String,
    pub expires_at: String,
    pub from: String,
    pub to: String,
    pub source: String,
    pub agent_action: String,
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromotionItem {
    pub id: String,
    /// `pending`, `approved`, `rejected` or `executed`.
    pub status: String,
    pub source: String,
    pub from: String,
    pub to: String,
    pub created_at: String,
    pub expires_at: String,
    /// Whether it is past its expiry without having run.
    pub expired: bool,
    /// The stack the executed promote produced.
    pub target: Option<String>,
}

/// `POST /api/v1/promotions/:id/approve` and `/reject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromotionDecided {
    pub ok: bool,
    pub promotion: PromotionItem,
}

/// `GET /api/v1/promotions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromotionList {
    pub ok: bool,
    pub items: Vec<PromotionItem>,
    pub total: usize,
}
