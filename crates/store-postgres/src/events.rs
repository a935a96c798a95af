//! Stack events (`GET /stacks/:slug/events`): rows written by each change inside its own
//! transaction, read back by id. Every writer holds the stack's row lock when it takes an id
//! from the sequence, so a stack's ids follow commit order, whichever server wrote them.

use crate::PgStore;
use crate::error::{Result, col, json_col};

use sqlx::PgConnection;
use stackyard_core::model::{StackEvent, StackId};
use stackyard_core::time::Millis;

pub(crate) use stackyard_core::model::NewEvent as Event;

/// Writes `events` in order (ids ascend with it), in one statement inside the caller's
/// transaction, which must hold the stack's row lock.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    stack: StackId,
    slug: &str,
    at: Millis,
    events: &[Event],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
    sqlx::query(
        "INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) \
         SELECT $1, $2, e.kind, e.data::jsonb, $5 \
         FROM UNNEST($3::text[], $4::text[]) WITH ORDINALITY AS e(kind, data, ord) ORDER BY e.ord",
    )
    .bind(stack.0)
    .bind(slug)
    .bind(&kinds)
    .bind(&data)
    .bind(at.0)
    .execute(conn)
    .await?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn list_events_impl(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StackEvent>> {
        let limit = limit.max(1);
        let rows = self
            .read(|mut c| async move {
                Ok(sqlx::query(
                    "SELECT id, at, kind, data::text AS data FROM stack_events \
                     WHERE stack_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(stack.0)
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *c)
                .await?)
            })
            .await?;
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
