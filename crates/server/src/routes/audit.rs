//! `GET /api/v1/audit`: the team's audit log, newest first.

use crate::app::AppState;
use crate::auth::TeamCaller;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::routes::{page_limit, views};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use stackyard_core::store::{AuditFilter, Store};

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    stack: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", description = "The team's audit rows, newest first. Auth required.",
    params(("stack" = Option<String>, Query), ("kind" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "{ok, items, next_cursor}"), (status = 401, description = "unauthorized"), (status = 503, description = "fetch_failed")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({
        "ok": true,
        "items": page.items.iter().map(views::audit_entry).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}
