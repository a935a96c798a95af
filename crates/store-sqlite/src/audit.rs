//! The audit log: the row every mutation writes inside its own transaction, and the
//! team-scoped listing.

use crate::SqliteStore;
use crate::error::{col, db_err, json_col};
use sqlx::SqliteConnection;
use stackyard_core::model::{AuditEntry, Page, TeamId};
use stackyard_core::store::{AuditFilter, StoreError, parse_id_cursor};
use stackyard_core::time::Millis;

/// One audit row to insert. `metadata` holds key names and counts, never env values.
pub(crate) struct AuditRow<'a> {
    pub at: Millis,
    pub team_id: Option<TeamId>,
    pub actor: &'a str,
    pub kind: &'a str,
    pub stack_slug: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub metadata: serde_json::Value,
}

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Inserts `row` on `conn`, which is inside the caller's write transaction.
pub(crate) async fn insert(
    conn: &mut SqliteConnection,
    row: AuditRow<'_>,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_AUDIT)
        .bind(row.at.0)
        .bind(row.team_id.map(|t| t.0))
        .bind(row.actor)
        .bind(row.kind)
        .bind(row.stack_slug)
        .bind(row.request_id)
        .bind(row.metadata.to_string())
        .execute(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn list_audit_impl(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let limit = filter.limit.max(1);
        let before = parse_id_cursor(filter.cursor.as_deref());
        // Read-only: one snapshot so that `total` and the page agree.
        let mut tx = self.read_tx().await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE team_id = $1 \
             AND ($2 IS NULL OR stack_slug = $2) AND ($3 IS NULL OR kind = $3)",
        )
        .bind(team.0)
        .bind(filter.stack.as_deref())
        .bind(filter.kind.as_deref())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let rows = sqlx::query(
            "SELECT id, at, actor, kind, stack_slug, request_id, metadata FROM audit_log \
             WHERE team_id = $1 AND ($2 IS NULL OR stack_slug = $2) AND ($3 IS NULL OR kind = $3) \
             AND id < $4 ORDER BY id DESC LIMIT $5",
        )
        .bind(team.0)
        .bind(filter.stack.as_deref())
        .bind(filter.kind.as_deref())
        .bind(before)
        .bind(limit.saturating_add(1))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;

        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(AuditEntry {
                id: col(row, "id")?,
                at: Millis(col(row, "at")?),
                actor: col(row, "actor")?,
                kind: col(row, "kind")?,
                stack_id: col(row, "stack_slug")?,
                request_id: col(row, "request_id")?,
                metadata: json_col(row, "metadata")?,
            });
        }
        Ok(Page::from_overfetch(items, limit, total, |e| {
            e.id.to_string()
        }))
    }
}
