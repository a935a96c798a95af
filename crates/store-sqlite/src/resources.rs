//! `ResourceStore` on SQLite. Writes run under `BEGIN IMMEDIATE` on the one writer.

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::ids::ResourceToken;
use stackyard_core::model::{AuditCtx, Page, StackId, TeamId};
use stackyard_core::resource::{NewResource, Resource};
use stackyard_core::store::{CreateResourceError, Idempotent, ResourceStore, StoreError};
use stackyard_core::time::Millis;

impl ResourceStore for SqliteStore {
    async fn insert_resource(&self, new: NewResource) -> Result<(), CreateResourceError> {
        let keyring = self.keys.get().map_err(CreateResourceError::from)?;
        let tx = self.write_tx().await.map_err(StoreError::from)?;
        OPS.insert_resource(tx, new, keyring).await
    }

    async fn mark_resource_ready(
        &self,
        resource: &Resource,
        ctx: AuditCtx,
        idempotency: Option<Idempotent<Resource>>,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .mark_resource_ready(self.write_tx().await?, resource, ctx, idempotency)
            .await?)
    }

    async fn get_resource(
        &self,
        team: TeamId,
        token: &ResourceToken,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .get_resource(&mut *self.reader().await?, Some(team), token, keyring)
            .await?)
    }

    async fn reveal_resource(
        &self,
        team: TeamId,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .reveal_resource(self.write_tx().await?, team, token, ctx, keyring)
            .await?)
    }

    async fn find_resource(&self, token: &ResourceToken) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .get_resource(&mut *self.reader().await?, None, token, keyring)
            .await?)
    }

    async fn reveal_granted_resource(
        &self,
        owner: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .reveal_granted_resource(self.write_tx().await?, owner, token, ctx, keyring)
            .await?)
    }

    async fn stack_resource(
        &self,
        stack: StackId,
        env: &str,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .stack_resource(&mut *self.reader().await?, stack, env, keyring)
            .await?)
    }

    async fn stack_resources(&self, stack: StackId) -> Result<Vec<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .stack_resources(&mut *self.reader().await?, stack, keyring)
            .await?)
    }

    async fn list_resources(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .list_resources(&mut *self.reader().await?, team, limit, cursor, keyring)
            .await?)
    }

    async fn mark_resource_deleting(
        &self,
        team: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .mark_resource_deleting(self.write_tx().await?, team, token, ctx, keyring)
            .await?)
    }

    async fn remove_resource(&self, token: &ResourceToken) -> Result<(), StoreError> {
        Ok(OPS.remove_resource(self.write_tx().await?, token).await?)
    }

    async fn resources_to_reconcile(
        &self,
        provisioning_before: Millis,
        with_ready: bool,
    ) -> Result<Vec<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .resources_to_reconcile(
                &mut *self.reader().await?,
                provisioning_before,
                with_ready,
                keyring,
            )
            .await?)
    }

    async fn expired_resources(
        &self,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .expired_resources(&mut *self.reader().await?, now, limit, keyring)
            .await?)
    }
}
