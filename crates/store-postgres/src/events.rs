//! `EventStore` on PostgreSQL: stack events and the audit log. Every writer of a stack's events
//! holds the stack's row lock when it takes an id, so ids follow commit order per stack, across
//! every server sharing the database.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::model::{AuditEntry, Page, StackEvent, StackId, TeamId};
use stackyard_core::store::{AuditFilter, EventStore, StoreError};

impl EventStore for PgStore {
    async fn list_events(
        &self,
        stack: StackId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StackEvent>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_events(&mut c, stack, after, limit).await
        };
        Ok(self.read(read).await?)
    }

    async fn list_audit(
        &self,
        team: TeamId,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let filter = &filter;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_audit(&mut c, team, filter.clone()).await
        };
        Ok(self.read(read).await?)
    }
}
