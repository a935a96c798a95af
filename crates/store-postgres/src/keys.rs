//! `KeyStore` on PostgreSQL: the master key's canary (statements in `store_sql::Ops`).

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::store::{KeyStore, StoreError};
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
}
