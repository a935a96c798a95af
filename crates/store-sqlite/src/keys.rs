//! `KeyStore` on SQLite: the master key's canary (statements in `store_sql::Ops`).

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::store::{KeyStore, StoreError};
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
}
