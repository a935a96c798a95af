//! `StackStore` on SQLite: stacks and releases. Lifecycle writes run under `BEGIN IMMEDIATE`,
//! which serialises them (and makes the team-cap count race-free: SQLite's stand-in for
//! PostgreSQL's team row lock); reads run on the reader pool next to the writer (WAL).

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::*;
use stackyard_core::store::{
    CreateStackError, NewRelease, NewStack, ReleaseError, RestartError, RestartQueued, StackFilter,
    StackStore, StoreError,
};
use stackyard_core::time::Millis;

impl StackStore for SqliteStore {
    async fn create_stack(&self, new: NewStack) -> Result<Stack, CreateStackError> {
        OPS.create_stack(self.write_tx().await?, new).await
    }

    async fn get_stack(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> Result<Option<StackDetail>, StoreError> {
        // The most polled read: answered from memory until a write begins (`cache`).
        if let Some(hit) = self.details.get(access, slug) {
            return Ok(Some(hit));
        }
        let epoch = self.details.epoch();
        let detail = OPS
            .get_stack(&mut *self.reader().await?, access, slug)
            .await?;
        if let (Some(epoch), Some(d)) = (epoch, &detail) {
            self.details.put(epoch, d);
        }
        Ok(detail)
    }

    async fn list_stacks(
        &self,
        team: TeamId,
        filter: &StackFilter,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Stack>, StoreError> {
        Ok(OPS
            .list_stacks(&mut *self.reader().await?, team, filter, limit, cursor)
            .await?)
    }

    async fn count_stacks(&self, team: TeamId) -> Result<i64, StoreError> {
        Ok(OPS.count_stacks(&mut *self.reader().await?, team).await?)
    }

    async fn request_deletion(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> Result<Option<Stack>, StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS.request_deletion(tx, access, slug, ctx).await?)
    }

    async fn create_release(
        &self,
        access: Access,
        slug: &StackSlug,
        release: NewRelease,
    ) -> Result<(Stack, ReleaseInfo), ReleaseError> {
        let keyring = self.keys.get()?;
        let tx = self.write_tx().await?;
        OPS.create_release(tx, access, slug, release, keyring).await
    }

    async fn list_releases(&self, stack: StackId) -> Result<Vec<Release>, StoreError> {
        Ok(OPS.list_releases(&mut *self.reader().await?, stack).await?)
    }

    async fn expired_stacks(&self, now: Millis, limit: i64) -> Result<Vec<StackSlug>, StoreError> {
        Ok(OPS
            .expired_stacks(&mut *self.reader().await?, now, limit)
            .await?)
    }

    async fn running_stacks(&self) -> Result<Vec<(Stack, Release, EnvMap)>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .running_stacks(&mut *self.reader().await?, keyring)
            .await?)
    }

    async fn request_restart(
        &self,
        access: Access,
        slug: &StackSlug,
        service: Option<ServiceName>,
        ctx: AuditCtx,
    ) -> Result<RestartQueued, RestartError> {
        let tx = self.write_tx().await?;
        OPS.request_restart(tx, access, slug, service.as_ref(), ctx)
            .await
    }
}
