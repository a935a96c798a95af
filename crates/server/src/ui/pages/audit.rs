//! The team's audit log (`/ui/audit`): the rows of `GET /api/v1/audit`, newest first, filtered
//! by stack and kind and paged by the API's cursor.

use crate::ui::{ApiFailure, Layout, Nav, Session, UiResult, UiState, render_with};
use crate::ui::{encode, when};
use askama::Template;
use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use stackyard_api::{AuditItem, AuditPage};
use stackyard_core::envlog;
use stackyard_core::lifecycle::audit_kind as lifecycle;
use stackyard_core::store::Store;
use stackyard_core::vault::audit_kind as vault;

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new().route("/audit", get(list))
}

/// The kinds the kind field suggests, sorted: every kind the server writes. The field takes any
/// text, so a kind added later is still filterable before it is listed here.
const KINDS: &[&str] = &[
    lifecycle::DOMAIN_ADDED,
    lifecycle::DOMAIN_CERTIFICATE_ISSUED,
    lifecycle::DOMAIN_CERTIFICATE_REFUSED,
    lifecycle::DOMAIN_REMOVED,
    lifecycle::PROMOTION_APPROVED,
    lifecycle::PROMOTION_REJECTED,
    lifecycle::PROMOTION_REQUESTED,
    lifecycle::STACK_CREATED,
    lifecycle::DELETED,
    lifecycle::DELETION_REQUESTED,
    lifecycle::DEPLOY_FAILED,
    lifecycle::DEPLOYED,
    envlog::AUDIT_ENV_REVEALED,
    envlog::AUDIT_ENV_ROLLED_BACK,
    envlog::AUDIT_ENV_UPDATED,
    lifecycle::PROMOTED,
    lifecycle::REDEPLOY_REQUESTED,
    lifecycle::RESTART_REQUESTED,
    lifecycle::TEAM_CREATED,
    lifecycle::TOKEN_CREATED,
    lifecycle::TOKEN_REVOKED,
    vault::COPIED,
    vault::DELETED,
    vault::READ,
    vault::ROTATED,
    vault::SET,
];

#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    stack: String,
    #[serde(default)]
    kind: String,
    cursor: Option<String>,
}

/// One audit row as the table shows it.
#[derive(Debug, PartialEq)]
struct Row {
    /// The API's own timestamp, for `<time datetime>`.
    at: String,
    when: String,
    actor: String,
    kind: String,
    stack: Option<String>,
    request_id: String,
    metadata: String,
}

impl From<&AuditItem> for Row {
    fn from(a: &AuditItem) -> Self {
        Self {
            at: a.at.clone(),
            when: when(&a.at),
            actor: a.actor.clone(),
            kind: a.kind.clone(),
            stack: a.stack_id.clone().filter(|s| !s.is_empty()),
            request_id: a.request_id.clone().unwrap_or_default(),
            metadata: compact(&a.metadata),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditView {
    layout: Layout,
    rows: Vec<Row>,
    stack: String,
    kind: String,
    kinds: &'static [&'static str],
    /// Whether this is a later page (so "first page" is worth offering).
    paged: bool,
    next: Option<String>,
    /// The API's refusal of the filter, shown above an empty table.
    error: Option<ApiFailure>,
}

/// `GET /ui/audit?stack=&kind=&cursor=`. A refused filter (4xx) is shown on the page with the
/// API's status; anything else is the error page.
async fn list(session: Session, Query(q): Query<AuditQuery>) -> UiResult {
    let stack = q.stack.trim().to_owned();
    let kind = q.kind.trim().to_owned();
    let cursor = q.cursor.filter(|c| !c.is_empty());
    let path = api_path(&stack, &kind, cursor.as_deref());
    let (status, rows, next, error) = match session.api.get::<AuditPage>(&path).await {
        Ok(page) => (
            StatusCode::OK,
            page.items.iter().map(Row::from).collect(),
            page.next_cursor,
            None,
        ),
        Err(f) if f.is_refusal() => (f.status, Vec::new(), None, Some(f)),
        Err(f) => return Err(f.into()),
    };
    Ok(render_with(
        status,
        &AuditView {
            layout: Layout::new(&session, Nav::Audit),
            rows,
            stack,
            kind,
            kinds: KINDS,
            paged: cursor.is_some(),
            next,
            error,
        },
    ))
}

/// The API request for a page: only the filters that are set, each percent-encoded.
fn api_path(stack: &str, kind: &str, cursor: Option<&str>) -> String {
    let mut path = String::from("/api/v1/audit");
    let mut sep = '?';
    for (name, value) in [
        ("stack", stack),
        ("kind", kind),
        ("cursor", cursor.unwrap_or("")),
    ] {
        if !value.is_empty() {
            path.push(sep);
            path.push_str(name);
            path.push('=');
            path.push_str(&encode(value));
            sep = '&';
        }
    }
    path
}

/// A row's metadata on one line of JSON; nothing for an empty object (or `null`).
fn compact(metadata: &serde_json::Value) -> String {
    match metadata {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_path_sends_only_the_filters_that_are_set() {
        assert_eq!(api_path("", "", None), "/api/v1/audit");
        assert_eq!(
            api_path("web-1a2b", "", None),
            "/api/v1/audit?stack=web-1a2b"
        );
        assert_eq!(
            api_path("", "stack.env.updated", Some("42")),
            "/api/v1/audit?kind=stack.env.updated&cursor=42"
        );
    }

    #[test]
    fn api_path_percent_encodes_what_the_user_typed() {
        assert_eq!(
            api_path("a&limit=1", "x y/#", Some("1?2")),
            "/api/v1/audit?stack=a%26limit%3D1&kind=x%20y%2F%23&cursor=1%3F2"
        );
    }

    #[test]
    fn metadata_is_one_line_of_json_and_empty_shows_nothing() {
        assert_eq!(
            compact(&json!({"set": ["A", "B"], "version": 3})),
            r#"{"set":["A","B"],"version":3}"#
        );
        assert_eq!(compact(&json!({})), "");
        assert_eq!(compact(&serde_json::Value::Null), "");
        assert_eq!(compact(&json!("text")), r#""text""#);
    }

    #[test]
    fn a_row_without_a_stack_or_request_id_has_neither() {
        let item = AuditItem {
            id: 7,
            at: "2026-12-06T01:48:24.123Z".into(),
            actor: "dashboard".into(),
            kind: "token.created".into(),
            stack_id: Some(String::new()),
            request_id: None,
            metadata: json!({"token_id": 3}),
        };
        let row = Row::from(&item);
        assert_eq!(row.stack, None);
        assert_eq!(row.request_id, "");
        assert_eq!(row.when, "2026-12-06 01:48 UTC");
        assert_eq!(row.metadata, r#"{"token_id":3}"#);
    }

    #[test]
    fn suggested_kinds_are_sorted_and_listed_once() {
        assert!(KINDS.windows(2).all(|w| w[0] < w[1]), "{KINDS:?}");
    }
}
