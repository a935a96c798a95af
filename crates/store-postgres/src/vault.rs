//! `VaultStore` on PostgreSQL (statements in `store_sql::Ops`). A write locks its key's
//! head row (an upsert), so writers of one key queue there; reads retry on a fresh connection.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::ids::{EnvironmentName, VaultKey};
use stackyard_core::model::{AuditCtx, StackId, TeamId};
use stackyard_core::store::{StoreError, VaultStore};
use stackyard_core::vault::{CopyOutcome, VaultCopy, VaultRefError, VaultValue, VaultWrite};
use std::collections::BTreeMap;

impl VaultStore for PgStore {
    async fn put_vault_value(
        &self,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        value: &str,
        write: VaultWrite,
        ctx: AuditCtx,
    ) -> Result<i64, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .put_vault_value(
                self.begin().await?,
                team,
                env,
                key,
                value,
                write,
                ctx,
                keyring,
            )
            .await?)
    }

    async fn read_vault_value(
        &self,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        version: Option<i64>,
        ctx: AuditCtx,
    ) -> Result<Option<VaultValue>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .read_vault_value(self.begin().await?, team, env, key, version, ctx, keyring)
            .await?)
    }

    async fn list_vault_keys(
        &self,
        team: TeamId,
        env: &EnvironmentName,
    ) -> Result<Vec<VaultKey>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_vault_keys(&mut c, team, env).await
        };
        Ok(self.read(read).await?)
    }

    async fn delete_vault_key(
        &self,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        ctx: AuditCtx,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .delete_vault_key(self.begin().await?, team, env, key, ctx)
            .await?)
    }

    async fn copy_vault(
        &self,
        team: TeamId,
        copy: &VaultCopy,
        ctx: AuditCtx,
    ) -> Result<CopyOutcome, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .copy_vault(self.begin().await?, team, copy, ctx, keyring)
            .await?)
    }

    async fn release_vault_values(
        &self,
        stack: StackId,
        release: i64,
    ) -> Result<Result<BTreeMap<String, String>, VaultRefError>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.release_vault_values(&mut c, stack, release, keyring)
                .await
        };
        Ok(self.read(read).await?)
    }
}
