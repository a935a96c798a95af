//! Resources: a PostgreSQL database or a Redis key space provisioned for a caller. What a
//! resource is, its generated names, its tier's limits and the audit record of each step are
//! decided here; the server runs the DDL and the stores keep the row.

use crate::ids::{ResourceName, ResourceToken, random_hex};
use crate::lifecycle::AuditRecord;
use crate::model::{AuditCtx, StackId, TeamId};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Which server a resource lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Postgres,
    Redis,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Postgres => "postgres",
            ResourceKind::Redis => "redis",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "postgres" => Some(ResourceKind::Postgres),
            "redis" => Some(ResourceKind::Redis),
            _ => None,
        }
    }
}

/// `provisioning` (row written, DDL not known to have run) → `ready` → `deleting` (row kept
/// until the database or user is dropped) → gone. A row is written before any DDL and removed
/// only after the drop, so the row always names whatever may exist in the resource server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceStatus {
    Provisioning,
    Ready,
    Deleting,
}

impl ResourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Provisioning => "provisioning",
            ResourceStatus::Ready => "ready",
            ResourceStatus::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "provisioning" => Some(ResourceStatus::Provisioning),
            "ready" => Some(ResourceStatus::Ready),
            "deleting" => Some(ResourceStatus::Deleting),
            _ => None,
        }
    }
}

/// A stored resource. `connection_url` carries the password (stored unencrypted until
/// encryption at rest lands): never log it, and never `Debug`-print a `Resource`.
#[derive(Clone, PartialEq, Eq)]
pub struct Resource {
    /// The public id: 32 hex characters (128 random bits).
    pub id: String,
    pub token: ResourceToken,
    pub kind: ResourceKind,
    pub name: ResourceName,
    pub team_id: Option<TeamId>,
    pub tier: String,
    pub status: ResourceStatus,
    pub connection_url: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    /// The stack that owns it (`needs: [postgres]`), `None` for one a caller created.
    pub stack: Option<StackOwner>,
}

/// A stack-owned resource's owner: the stack and the env name it is injected as, which is how
/// a redeploy finds it again. Dropped by the stack's teardown; not counted against
/// `--max-resources` (the stack itself is counted against the team's stacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackOwner {
    pub stack_id: StackId,
    pub env: String,
    /// The stack's slug as read with the row (`None` when written, or once the stack is gone).
    pub slug: Option<String>,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("id", &self.id)
            .field("token", &self.token)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("stack", &self.stack)
            .finish_non_exhaustive()
    }
}

impl Resource {
    /// The PostgreSQL role and database, or the Redis ACL user: `sy_<id>`. Derived from the
    /// generated id, never from user input, so it needs no quoting beyond an identifier's.
    pub fn server_name(&self) -> String {
        server_name(&self.id)
    }

    /// The Redis key prefix the resource's user is confined to: `sy:<id>:`.
    pub fn key_prefix(&self) -> String {
        format!("sy:{}:", self.id)
    }
}

pub fn server_name(id: &str) -> String {
    format!("sy_{id}")
}

/// A new random resource id (128 bits).
pub fn generate_id() -> String {
    random_hex(16)
}

/// What a tier may use. `storage_mb` is advertised, not enforced (PostgreSQL and Redis have
/// no per-database quota); `connections` is the role's `CONNECTION LIMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierLimits {
    pub storage_mb: i64,
    pub connections: i64,
}

pub fn tier_limits(tier: &str) -> TierLimits {
    if tier == ANONYMOUS_TIER {
        TierLimits {
            storage_mb: 10,
            connections: 2,
        }
    } else {
        TierLimits {
            storage_mb: 1024,
            connections: 20,
        }
    }
}

pub const ANONYMOUS_TIER: &str = "anonymous";

/// A resource row to write `provisioning`, before any DDL.
#[derive(Debug, Clone)]
pub struct NewResource {
    pub resource: Resource,
    /// The anonymous caller's network, for the record.
    pub fingerprint: Option<String>,
    /// The team's cap (`--max-resources`); `None`: no cap. Ignored for anonymous resources.
    pub max_per_team: Option<i64>,
}

fn audit(kind: &'static str, r: &Resource, ctx: &AuditCtx) -> AuditRecord {
    AuditRecord {
        at: ctx.now,
        team_id: r.team_id,
        actor: ctx.actor.0.clone(),
        kind,
        stack_slug: None,
        request_id: ctx.request_id.clone(),
        // The token and kind name the resource; the URL (with its password) is never audited.
        metadata: serde_json::json!({ "resource": r.token, "resource_type": r.kind.as_str() }),
    }
}

/// Audit `resource.created`, written when the row becomes `ready`.
pub fn created(r: &Resource, ctx: &AuditCtx) -> AuditRecord {
    audit("resource.created", r, ctx)
}

/// Audit `resource.url_read`: every read that hands out the connection URL after creation.
pub fn url_read(r: &Resource, ctx: &AuditCtx) -> AuditRecord {
    audit("resource.url_read", r, ctx)
}

/// Audit `resource.deleted`, written when the row becomes `deleting`.
pub fn deleted(r: &Resource, ctx: &AuditCtx) -> AuditRecord {
    audit("resource.deleted", r, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_version_4_uuids_that_parse() {
        for _ in 0..100 {
            let t = ResourceToken::generate();
            assert_eq!(ResourceToken::parse(t.as_str()), Ok(t.clone()));
            assert_eq!(&t.as_str()[14..15], "4");
            assert!("89ab".contains(&t.as_str()[19..20]));
        }
    }

    #[test]
    fn resource_names_follow_the_stack_name_rule() {
        assert!(ResourceName::parse("my db_1-x").is_ok());
        assert!(ResourceName::parse(&"a".repeat(64)).is_ok());
        for bad in ["", " lead", "-x", "a;b", "ünï", &"a".repeat(65)] {
            assert!(ResourceName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_that_are_not_lowercase_uuids_are_refused() {
        for bad in [
            "",
            "not-a-uuid",
            "6F9619FF-8B86-D011-B42D-00C04FC964FF",
            "6f9619ff8b86d011b42d00c04fc964ff",
        ] {
            assert!(ResourceToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
