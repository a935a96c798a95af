//! `StackStore` on PostgreSQL: stacks and releases. Lifecycle writes lock the stack row (and a
//! capped team's row, for the cap); `get_stack`, the most polled read, is one statement.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::*;
use stackyard_core::store::{
    CreateStackError, NewRelease, NewStack, ReleaseError, RestartError, RestartQueued, StackFilter,
    StackStore, StoreError,
};
use stackyard_core::time::Millis;

impl StackStore for PgStore {
    async fn create_stack(&self, new: NewStack) -> std::result::Result<Stack, CreateStackError> {
        OPS.create_stack(self.begin().await?, new).await
    }

    async fn get_stack(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> std::result::Result<Option<StackDetail>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.get_stack(&mut c, access, slug).await
        };
        Ok(self.read(read).await?)
    }

    async fn list_stacks(
        &self,
        team: TeamId,
        filter: &StackFilter,
        limit: i64,
        cursor: Option<&str>,
    ) -> std::result::Result<Page<Stack>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_stacks(&mut c, team, filter, limit, cursor).await
        };
        Ok(self.read(read).await?)
    }

    async fn count_stacks(&self, team: TeamId) -> std::result::Result<i64, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.count_stacks(&mut c, team).await };
        Ok(self.read(read).await?)
    }

    async fn request_deletion(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> std::result::Result<Option<Stack>, StoreError> {
        Ok(OPS
            .request_deletion(self.begin().await?, access, slug, ctx)
            .await?)
    }

    async fn create_release(
        &self,
        access: Access,
        slug: &StackSlug,
        release: NewRelease,
    ) -> std::result::Result<(Stack, ReleaseInfo), ReleaseError> {
        let keyring = self.keys.get()?;
        OPS.create_release(self.begin().await?, access, slug, release, keyring)
            .await
    }

    async fn list_releases(&self, stack: StackId) -> std::result::Result<Vec<Release>, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.list_releases(&mut c, stack).await };
        Ok(self.read(read).await?)
    }

    async fn expired_stacks(
        &self,
        now: Millis,
        limit: i64,
    ) -> std::result::Result<Vec<StackSlug>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.expired_stacks(&mut c, now, limit).await
        };
        Ok(self.read(read).await?)
    }

    async fn running_stacks(
        &self,
    ) -> std::result::Result<Vec<(Stack, Release, EnvMap)>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.running_stacks(&mut c, keyring).await
        };
        Ok(self.read(read).await?)
    }

    async fn request_restart(
        &self,
        access: Access,
        slug: &StackSlug,
        service: Option<ServiceName>,
        ctx: AuditCtx,
    ) -> Result<RestartQueued, RestartError> {
        let tx = self.begin().await?;
        OPS.request_restart(tx, access, slug, service.as_ref(), ctx)
            .await
    }
}
