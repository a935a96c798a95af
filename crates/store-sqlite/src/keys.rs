//! `KeyStore` on SQLite: the master key's canary.

use crate::SqliteStore;
use stackyard_core::store::{KeyStore, StoreError};
use stackyard_core::time::Millis;
use stackyard_store_sql::Error;

impl KeyStore for SqliteStore {
    async fn master_canary(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT canary FROM keyring WHERE id = 1")
                .fetch_optional(&mut *self.reader().await?)
                .await
                .map_err(Error::from)?,
        )
    }

    async fn swap_master_canary(
        &self,
        expected: Option<&[u8]>,
        canary: &[u8],
        now: Millis,
    ) -> Result<bool, StoreError> {
        // The single writer: a compare-and-set in one statement under `BEGIN IMMEDIATE`.
        let mut tx = self.write_tx().await?;
        let done = match expected {
            None => sqlx::query(
                "INSERT INTO keyring (id, canary, updated_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(canary)
            .bind(now.0),
            Some(old) => sqlx::query(
                "UPDATE keyring SET canary = $1, updated_at = $2 WHERE id = 1 AND canary = $3",
            )
            .bind(canary)
            .bind(now.0)
            .bind(old),
        }
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?
        .rows_affected()
            == 1;
        tx.commit().await.map_err(Error::from)?;
        Ok(done)
    }
}
