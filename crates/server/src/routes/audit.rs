//! `GET /api/v1/audit`: the team's audit log, newest first.

use crate::auth::TeamCaller;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::routes::page_limit;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use stackyard_api::{AuditItem, AuditPage};
use stackyard_core::store::{AuditFilter, Store};

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    stack: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", description = "The team's audit rows, newest first. Auth required.",
    security(("bearer" = [])),
    params(("stack" = Option<String>, Query, description = "Only rows about this stack (its slug)"),
        ("kind" = Option<String>, Query, description = "Only rows of this kind, e.g. `stack.created`"),
        ("limit" = Option<i64>, Query, description = "Page size, clamped to 1-200; default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "A page of audit rows", body = AuditPage),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let filter = AuditFilter {
        stack: q.stack.filter(|s| !s.is_empty()),
        kind: q.kind.filter(|s| !s.is_empty()),
        limit: page_limit(q.limit),
        cursor: q.cursor.filter(|s| !s.is_empty()),
    };
    let page = state
        .store
        .list_audit(p.team.id, filter)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(AuditPage {
        ok: true,
        items: page.items.iter().map(AuditItem::from).collect(),
        next_cursor: page.next_cursor,
    }))
}
