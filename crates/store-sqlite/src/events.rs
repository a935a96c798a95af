//! Stack events (`GET /stacks/:slug/events`): rows written by each change inside its own write
//! transaction, read back by id. The single writer connection serialises every write, so ids
//! follow commit order.

use crate::SqliteStore;
use crate::error::{col, db_err, json_col};

use sqlx::SqliteConnection;
use stackyard_core::model::{StackEvent, StackId};
use stackyard_core::store::StoreError;
use stackyard_core::time::Millis;

pub(crate) use stackyard_core::model::NewEvent as Event;

/// Writes `events` in order, inside the caller's write transaction.
pub(crate) async fn insert(
    conn: &mut SqliteConnection,
    stack: StackId,
    slug: &str,
    at: Millis,
    events: &[Event],
) -> Result<(), StoreError> {
    for e in events {
        sqlx::query(
            "INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(stack.0)
        .bind(slug)
        .bind(e.kind)
        .bind(e.data.to_string())
        .bind(at.0)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn list_events_impl(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StackEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, data FROM stack_events WHERE stack_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(stack.0)
        .bind(after)
        .bind(limit.max(1))
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(StackEvent {
                    id: col(row, "id")?,
                    at: Millis(col(row, "at")?),
                    kind: col(row, "kind")?,
                    data: json_col(row, "data")?,
                })
            })
            .collect()
    }
}
