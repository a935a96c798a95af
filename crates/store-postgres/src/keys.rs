//! `KeyStore` on PostgreSQL: the master key's canary (statements in `store_sql::Ops`).

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::crypto::Keyring;
use stackyard_core::model::StackId;
use stackyard_core::store::{KeyStore, SealReport, StoreError, WrappedKey};
use stackyard_core::time::Millis;

impl KeyStore for PgStore {
    async fn master_canary(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move { OPS.master_canary(&mut c).await };
        Ok(self.read(read).await?)
    }

    async fn swap_master_canary(
        &self,
        expected: Option<&[u8]>,
        canary: &[u8],
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .swap_master_canary(self.begin().await?, expected, canary, now)
            .await?)
    }

    fn install_keyring(&self, keyring: std::sync::Arc<Keyring>) {
        self.keys.install(keyring);
    }

    async fn seal_at_rest(&self) -> Result<SealReport, StoreError> {
        let keyring = self.keys.get()?;
        let mut report = SealReport::default();
        loop {
            let read = |mut c: PoolConnection<Postgres>| async move {
                OPS.plain_stacks(&mut c, 100).await
            };
            let batch = self.read(read).await?;
            if batch.is_empty() {
                break;
            }
            for stack in batch {
                // Each stack in its own transaction under its row lock, so the pass resumes
                // and servers writing meanwhile wait for it.
                if OPS
                    .seal_stack_if_plain(self.begin().await?, stack, keyring)
                    .await?
                {
                    report.stacks += 1;
                }
            }
        }
        let mut tx = self.begin().await?;
        report.resources = OPS.seal_plain_resources(&mut tx, keyring).await?;
        tx.commit()
            .await
            .map_err(stackyard_store_sql::Error::from)?;
        Ok(report)
    }

    async fn rekey_stack(&self, stack: StackId) -> Result<bool, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS.rekey_stack(self.begin().await?, stack, keyring).await?)
    }

    async fn wrapped_keys(&self) -> Result<Vec<WrappedKey>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move { OPS.wrapped_keys(&mut c).await };
        Ok(self.read(read).await?)
    }

    async fn swap_wrapped_key(&self, key: &WrappedKey, new: &[u8]) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let swapped = OPS.swap_wrapped_key(&mut tx, key, new).await?;
        tx.commit()
            .await
            .map_err(stackyard_store_sql::Error::from)?;
        Ok(swapped)
    }
}
