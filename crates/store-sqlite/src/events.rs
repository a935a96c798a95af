//! Stack events (`GET /stacks/:slug/events`): rows written by each change inside its own write
//! transaction, read back by id. The single writer connection serialises every write, so ids
//! follow commit order.

use crate::SqliteStore;
use crate::error::{col, db_err, json_col};
use serde_json::{Value, json};
use sqlx::SqliteConnection;
use stackyard_core::model::{ReleaseStatus, StackEvent, StackId, StackStatus};
use stackyard_core::store::StoreError;
use stackyard_core::time::Millis;

/// One event to write. `data` holds statuses, versions and key names, never env values.
pub(crate) struct Event {
    pub kind: &'static str,
    pub data: Value,
}

impl Event {
    pub fn stack_status(status: StackStatus, error: Option<&str>) -> Event {
        Event {
            kind: "stack.status",
            data: json!({ "status": status.as_str(), "error": error }),
        }
    }

    pub fn release_status(release: i64, status: ReleaseStatus, error: Option<&str>) -> Event {
        Event {
            kind: "release.status",
            data: json!({ "release": release, "status": status.as_str(), "error": error }),
        }
    }

    pub fn release_created(release: i64, env_version: i64) -> Event {
        Event {
            kind: "release.created",
            data: json!({ "release": release, "env_version": env_version }),
        }
    }

    pub fn service_status(
        service: &str,
        status: &str,
        url: Option<&str>,
        error: Option<&str>,
    ) -> Event {
        Event {
            kind: "service.status",
            data: json!({ "service": service, "status": status, "url": url, "error": error }),
        }
    }
}

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
