//! `KeyStore` on SQLite: the master key's canary (statements in `store_sql::Ops`).

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::crypto::Keyring;
use stackyard_core::model::StackId;
use stackyard_core::store::{KeyStore, SealReport, StoreError, WrappedKey};
use stackyard_core::time::Millis;

impl KeyStore for SqliteStore {
    async fn master_canary(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(OPS.master_canary(&mut *self.reader().await?).await?)
    }

    async fn swap_master_canary(
        &self,
        expected: Option<&[u8]>,
        canary: &[u8],
        now: Millis,
    ) -> Result<bool, StoreError> {
        // The single writer (`BEGIN IMMEDIATE`).
        let tx = self.write_tx().await?;
        Ok(OPS.swap_master_canary(tx, expected, canary, now).await?)
    }

    fn install_keyring(&self, keyring: std::sync::Arc<Keyring>) {
        self.keys.install(keyring);
    }

    async fn seal_at_rest(&self) -> Result<SealReport, StoreError> {
        let keyring = self.keys.get()?;
        let mut report = SealReport::default();
        loop {
            let batch = OPS.plain_stacks(&mut *self.reader().await?, 100).await?;
            if batch.is_empty() {
                break;
            }
            for stack in batch {
                // Each stack in its own transaction (the single writer), so the pass resumes.
                if OPS
                    .seal_stack_if_plain(self.write_tx().await?, stack, keyring)
                    .await?
                {
                    report.stacks += 1;
                }
            }
        }
        let mut tx = self.write_tx().await?;
        report.resources = OPS.seal_plain_resources(&mut tx, keyring).await?;
        tx.commit()
            .await
            .map_err(stackyard_store_sql::Error::from)?;
        if report.stacks + report.resources > 0 {
            // The plain text the pass replaced may still sit in free pages of the file and in
            // the WAL: rewrite the file and empty the WAL, so no copy of it keeps the secrets.
            let mut conn = self
                .writer
                .acquire()
                .await
                .map_err(stackyard_store_sql::Error::from)?;
            for pragma in ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"] {
                sqlx::query(pragma)
                    .execute(&mut *conn)
                    .await
                    .map_err(stackyard_store_sql::Error::from)?;
            }
        }
        Ok(report)
    }

    async fn rekey_stack(&self, stack: StackId) -> Result<bool, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .rekey_stack(self.write_tx().await?, stack, keyring)
            .await?)
    }

    async fn wrapped_keys(&self) -> Result<Vec<WrappedKey>, StoreError> {
        Ok(OPS.wrapped_keys(&mut *self.reader().await?).await?)
    }

    async fn swap_wrapped_key(&self, key: &WrappedKey, new: &[u8]) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let swapped = OPS.swap_wrapped_key(&mut tx, key, new).await?;
        tx.commit()
            .await
            .map_err(stackyard_store_sql::Error::from)?;
        Ok(swapped)
    }
}
