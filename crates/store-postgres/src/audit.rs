//! The audit log: the row every mutation writes inside its own transaction, and the
//! team-scoped listing. Metadata holds key names and counts, never env values.

use crate::PgStore;
use crate::error::{Result, col};
use sqlx::PgConnection;
use stackyard_core::model::{AuditEntry, Page, TeamId};
use stackyard_core::store::{AuditFilter, parse_id_cursor};
use stackyard_core::time::Millis;

/// One audit row to insert.
pub(crate) struct AuditRow<'a> {
    pub at: Millis,
    pub team_id: Option<TeamId>,
    pub actor: &'a str,
    pub kind: &'a str,
    pub stack_slug: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub metadata: serde_json::Value,
}

/// Inserts `row` on `conn`, which is inside the caller's write transaction.
pub(crate) async fn insert(conn: &mut PgConnection, row: AuditRow<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(row.at.0)
    .bind(row.team_id.map(|t| t.0))
    .bind(row.actor)
    .bind(row.kind)
    .bind(row.stack_slug)
    .bind(row.request_id)
    .bind(row.metadata)
    .execute(conn)
    .await?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn list_audit_impl(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>> {
        let limit = filter.limit.max(1);
        let before = parse_id_cursor(filter.cursor.as_deref());
        let (stack, kind) = (filter.stack.as_deref(), filter.kind.as_deref());
        // One statement, so the page and `total` come from one snapshot. The extra row tells
        // whether another page exists.
        let (rows, total) = self
            .read(|mut c| async move {
                let rows = sqlx::query(
                    "SELECT id, at, actor, kind, stack_slug, request_id, metadata, \
                       (SELECT COUNT(*) FROM audit_log WHERE team_id = $1 \
                          AND ($2::text IS NULL OR stack_slug = $2) \
                          AND ($3::text IS NULL OR kind = $3)) AS total \
                     FROM audit_log \
                     WHERE team_id = $1 AND ($2::text IS NULL OR stack_slug = $2) \
                       AND ($3::text IS NULL OR kind = $3) AND id < $4 \
                     ORDER BY id DESC LIMIT $5",
                )
                .bind(team.0)
                .bind(stack)
                .bind(kind)
                .bind(before)
                .bind(limit.saturating_add(1))
                .fetch_all(&mut *c)
                .await?;
                let total = match rows.first() {
                    Some(r) => col(r, "total")?,
                    None => {
                        sqlx::query_scalar(
                            "SELECT COUNT(*) FROM audit_log WHERE team_id = $1 \
                               AND ($2::text IS NULL OR stack_slug = $2) \
                               AND ($3::text IS NULL OR kind = $3)",
                        )
                        .bind(team.0)
                        .bind(stack)
                        .bind(kind)
                        .fetch_one(&mut *c)
                        .await?
                    }
                };
                Ok((rows, total))
            })
            .await?;

        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(AuditEntry {
                id: col(row, "id")?,
                at: Millis(col(row, "at")?),
                actor: col(row, "actor")?,
                kind: col(row, "kind")?,
                stack_id: col(row, "stack_slug")?,
                request_id: col(row, "request_id")?,
                metadata: col(row, "metadata")?,
            });
        }
        Ok(Page::from_overfetch(items, limit, total, |e| {
            e.id.to_string()
        }))
    }
}
