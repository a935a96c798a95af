//! `EventStore` on SQLite: stack events and the audit log. Events are written by each change
//! inside its own write transaction; the single writer connection serialises every write, so
//! ids follow commit order.

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::model::{AuditEntry, Page, StackEvent, StackId, TeamId};
use stackyard_core::store::{AuditFilter, EventStore, StoreError};

impl EventStore for SqliteStore {
    async fn list_events(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StackEvent>, StoreError> {
        Ok(OPS
            .list_events(&mut *self.reader().await?, stack, after, limit)
            .await?)
    }

    async fn list_audit(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>, StoreError> {
        Ok(OPS
            .list_audit(&mut *self.reader().await?, team, filter)
            .await?)
    }
}
