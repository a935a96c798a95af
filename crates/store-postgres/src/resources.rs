//! `ResourceStore` on PostgreSQL. Writes take only the resource's row (and a capped team's
//! row, first, when inserting); reads retry on a fresh connection.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::ids::ResourceToken;
use stackyard_core::model::{AuditCtx, Page, StackId, TeamId};
use stackyard_core::resource::{NewResource, Resource};
use stackyard_core::store::{CreateResourceError, Idempotent, ResourceStore, StoreError};
use stackyard_core::time::Millis;

impl ResourceStore for PgStore {
    async fn insert_resource(&self, new: NewResource) -> Result<(), CreateResourceError> {
        let keyring = self.keys.get().map_err(CreateResourceError::from)?;
        let tx = self.begin().await.map_err(StoreError::from)?;
        OPS.insert_resource(tx, new, keyring).await
    }

    async fn mark_resource_ready(
        &self,
        resource: &Resource,
        ctx: AuditCtx,
        idempotency: Option<Idempotent<Resource>>,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .mark_resource_ready(self.begin().await?, resource, ctx, idempotency)
            .await?)
    }

    async fn get_resource(
        &self,
        team: TeamId,
        token: &ResourceToken,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.get_resource(&mut c, Some(team), token, keyring).await
        };
        Ok(self.read(read).await?)
    }

    async fn reveal_resource(
        &self,
        team: TeamId,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .reveal_resource(self.begin().await?, team, token, ctx, keyring)
            .await?)
    }

    async fn find_resource(&self, token: &ResourceToken) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.get_resource(&mut c, None, token, keyring).await
        };
        Ok(self.read(read).await?)
    }

    async fn reveal_granted_resource(
        &self,
        owner: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .reveal_granted_resource(self.begin().await?, owner, token, ctx, keyring)
            .await?)
    }

    async fn stack_resource(
        &self,
        stack: StackId,
        env: &str,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.stack_resource(&mut c, stack, env, keyring).await
        };
        Ok(self.read(read).await?)
    }

    async fn stack_resources(&self, stack: StackId) -> Result<Vec<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.stack_resources(&mut c, stack, keyring).await
        };
        Ok(self.read(read).await?)
    }

    async fn list_resources(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_resources(&mut c, team, limit, cursor, keyring)
                .await
        };
        Ok(self.read(read).await?)
    }

    async fn mark_resource_deleting(
        &self,
        team: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> Result<Option<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .mark_resource_deleting(self.begin().await?, team, token, ctx, keyring)
            .await?)
    }

    async fn remove_resource(&self, token: &ResourceToken) -> Result<(), StoreError> {
        Ok(OPS.remove_resource(self.begin().await?, token).await?)
    }

    async fn resources_to_reconcile(
        &self,
        provisioning_before: Millis,
        with_ready: bool,
    ) -> Result<Vec<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.resources_to_reconcile(&mut c, provisioning_before, with_ready, keyring)
                .await
        };
        Ok(self.read(read).await?)
    }

    async fn expired_resources(
        &self,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<Resource>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.expired_resources(&mut c, now, limit, keyring).await
        };
        Ok(self.read(read).await?)
    }
}
