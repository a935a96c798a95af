//! `ArtifactStore` on PostgreSQL: uploaded tarballs kept as blobs, so that every replica
//! serves what any one received (statements in `store_sql::Ops`).

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::store::{ArtifactStore, StoreError};
use stackyard_core::time::Millis;

impl ArtifactStore for PgStore {
    async fn put_artifact_blob(
        &self,
        digest: &str,
        bytes: &[u8],
        now: Millis,
    ) -> Result<(), StoreError> {
        // In a transaction so that waiting for the row (another replica storing the same
        // digest) is bounded by the lock timeout.
        let tx = self.begin().await?;
        Ok(OPS.put_artifact_blob(tx, digest, bytes, now).await?)
    }

    async fn artifact_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.artifact_blob(&mut c, digest).await
        };
        Ok(self.read(read).await?)
    }

    async fn delete_artifact_blobs(
        &self,
        digests: &[String],
        touched_before: Millis,
    ) -> Result<u64, StoreError> {
        let tx = self.begin().await?;
        Ok(OPS
            .delete_artifact_blobs(tx, Some(digests), touched_before)
            .await?)
    }

    async fn sweep_artifact_blobs(&self, touched_before: Millis) -> Result<u64, StoreError> {
        let tx = self.begin().await?;
        Ok(OPS.delete_artifact_blobs(tx, None, touched_before).await?)
    }
}
