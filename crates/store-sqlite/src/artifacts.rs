//! `ArtifactStore` on SQLite: uploaded tarballs kept as blobs (statements in `store_sql::Ops`).
//! With one server per SQLite file no other replica needs them, but a server keeping them
//! (its runtime's pods fetch code over HTTP) behaves the same on either backend.

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::store::{ArtifactStore, StoreError};
use stackyard_core::time::Millis;

impl ArtifactStore for SqliteStore {
    async fn put_artifact_blob(
        &self,
        digest: &str,
        bytes: &[u8],
        now: Millis,
    ) -> Result<(), StoreError> {
        // The single writer (`BEGIN IMMEDIATE`).
        let tx = self.write_tx().await?;
        Ok(OPS.put_artifact_blob(tx, digest, bytes, now).await?)
    }

    async fn artifact_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(OPS
            .artifact_blob(&mut *self.reader().await?, digest)
            .await?)
    }

    async fn delete_artifact_blobs(
        &self,
        digests: &[String],
        touched_before: Millis,
    ) -> Result<u64, StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS
            .delete_artifact_blobs(tx, Some(digests), touched_before)
            .await?)
    }

    async fn sweep_artifact_blobs(&self, touched_before: Millis) -> Result<u64, StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS.delete_artifact_blobs(tx, None, touched_before).await?)
    }
}
