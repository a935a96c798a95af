//! `GET /api/v1/audit`.

use crate::schema::time;
use serde::{Deserialize, Serialize};
use stackyard_core::model::AuditEntry;
use utoipa::ToSchema;

/// One audit row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditItem {
    pub id: i64,
    #[schema(format = DateTime)]
    pub at: String,
    /// `token:<id>`, `anonymous`, `system` or `admin`.
    pub actor: String,
    /// e.g. `stack.created`, `stack.env.updated`, `token.revoked`.
    pub kind: String,
    /// The stack's slug, when the row is about one.
    #[schema(required = true)]
    pub stack_id: Option<String>,
    #[schema(required = true)]
    pub request_id: Option<String>,
    /// What the kind records (key names, versions, never env values).
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

impl From<&AuditEntry> for AuditItem {
    fn from(a: &AuditEntry) -> Self {
        Self {
            id: a.id,
            at: time(a.at),
            actor: a.actor.clone(),
            kind: a.kind.clone(),
            stack_id: a.stack_id.clone(),
            request_id: a.request_id.clone(),
            metadata: a.metadata.clone(),
        }
    }
}

/// A page of the team's audit log, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub ok: bool,
    pub items: Vec<AuditItem>,
    /// Pass as `?cursor=` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}
