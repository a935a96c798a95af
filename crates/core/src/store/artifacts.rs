//! Artifact blobs: uploaded tarballs kept in the database as well as in a data directory, so
//! that every API replica sharing the database can serve a tarball another one received
//! (`kubernetes.md`: pods fetch their code from whichever replica answers).
//!
//! A blob is written before the release row that names it, like the file, and removed under
//! the same two conditions as the file: no release uses it, and it was last stored longer
//! ago than the grace period a create has to commit in. Storing a digest that exists keeps
//! its bytes and refreshes `touched_at`, as saving an existing file refreshes its
//! modification time, so a removal never takes a blob a create has just decided to rely on.

use super::StoreError;
use crate::time::Millis;
use std::future::Future;

pub trait ArtifactStore: Clone + Send + Sync + 'static {
    /// Stores `bytes` under `digest` (their SHA-256, computed by the caller). An existing blob
    /// keeps its bytes (they are the same by construction); either way its `touched_at`
    /// becomes `now`. Idempotent.
    fn put_artifact_blob(
        &self,
        digest: &str,
        bytes: &[u8],
        now: Millis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The bytes stored under `digest`, if any.
    fn artifact_blob(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Deletes the blobs of `digests` that no release uses and that were last stored before
    /// `touched_before` (a teardown's unused artifacts); returns how many went. The use is
    /// checked by the delete statement itself, so a release committed meanwhile keeps its blob.
    fn delete_artifact_blobs(
        &self,
        digests: &[String],
        touched_before: Millis,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes every blob no release uses that was last stored before `touched_before` (the
    /// periodic sweep: a create that failed after storing its blobs, a teardown whose removal
    /// came too soon); returns how many went.
    fn sweep_artifact_blobs(
        &self,
        touched_before: Millis,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
