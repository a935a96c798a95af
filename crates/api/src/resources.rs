//! `/db/new`, `/cache/new` and `/api/v1/resources*`: PostgreSQL databases and Redis key spaces
//! provisioned for a caller, InstaNode-compatible.

use crate::schema::{self, time};
use serde::{Deserialize, Serialize};
use stackyard_core::resource::{Resource, ResourceKind, ResourceStatus, TierLimits};
use utoipa::ToSchema;

/// `POST /db/new` and `POST /cache/new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateResourceRequest {
    /// 1-64 characters: letters, digits, spaces, `_` and `-`, starting with a letter or digit.
    #[schema(
        example = "orders",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9][A-Za-z0-9 _-]*$"
    )]
    pub name: String,
}

/// What the resource's tier may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResourceLimits {
    /// Advertised size; not enforced by the server.
    pub storage_mb: i64,
    /// Concurrent connections (PostgreSQL: the role's `CONNECTION LIMIT`).
    pub connections: i64,
    /// Lifetime of an anonymous resource (`6h`); absent for a team's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

impl ResourceLimits {
    pub fn new(limits: TierLimits, expires_in: Option<String>) -> Self {
        Self {
            storage_mb: limits.storage_mb,
            connections: limits.connections,
            expires_in,
        }
    }
}

/// `POST /db/new` / `POST /cache/new` 201: the resource, ready to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedResource {
    pub ok: bool,
    /// The public id (32 hex characters).
    pub id: String,
    /// The handle every other route (and `needs:`) takes: a UUID.
    #[schema(example = "6f9619ff-8b86-4011-b42d-00c04fc964ff")]
    pub token: String,
    pub name: String,
    #[schema(value_type = schema::ResourceKind)]
    pub resource_type: ResourceKind,
    /// `postgres://…` or `redis://…`, with the password.
    pub connection_url: String,
    /// `anonymous` or the team's tier.
    pub tier: String,
    /// The environment variable InstaNode's clients put the URL in.
    #[schema(example = "DATABASE_URL")]
    pub env: String,
    pub limits: ResourceLimits,
    pub note: String,
    /// When an anonymous resource is dropped; `null` for a team's.
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    /// Redis only: the prefix every key must start with (`sy:<id>:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

/// A resource in a listing (no connection URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResourceItem {
    pub id: String,
    #[schema(example = "6f9619ff-8b86-4011-b42d-00c04fc964ff")]
    pub token: String,
    #[schema(value_type = schema::ResourceKind)]
    pub resource_type: ResourceKind,
    pub tier: String,
    #[schema(value_type = schema::ResourceStatus)]
    pub status: ResourceStatus,
    pub name: String,
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The stack that owns it (`needs: [postgres]` in its manifest): its id (`stk-…`); absent
    /// for a resource created with `POST /db/new` or `/cache/new`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl From<&Resource> for ResourceItem {
    fn from(r: &Resource) -> Self {
        Self {
            id: r.id.clone(),
            token: r.token.to_string(),
            resource_type: r.kind,
            tier: r.tier.clone(),
            status: r.status,
            name: r.name.to_string(),
            expires_at: r.expires_at.map(time),
            created_at: time(r.created_at),
            stack: r.stack.as_ref().and_then(|s| s.slug.clone()),
        }
    }
}

/// `GET /api/v1/resources`: the team's resources, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResourceList {
    pub ok: bool,
    pub items: Vec<ResourceItem>,
    /// All the team's resources, not just this page.
    pub total: i64,
    /// Pass as `?cursor=` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/resources/:token`: the resource with its connection URL (an audited read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResourceDetail {
    pub ok: bool,
    #[serde(flatten)]
    pub item: ResourceItem,
    pub connection_url: String,
}

/// `DELETE /api/v1/resources/:token` 200: the database or user is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeletedResource {
    pub ok: bool,
    #[schema(example = "6f9619ff-8b86-4011-b42d-00c04fc964ff")]
    pub token: String,
    /// Always `deleted`.
    #[schema(example = "deleted")]
    pub status: String,
}
