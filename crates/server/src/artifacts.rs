//! Service tarballs on disk, stored once by SHA-256 digest under `<data dir>/artifacts/`, and
//! removed once no release of any stack uses them.
//!
//! A file is written to a temporary name, synced, then renamed, so a reader never sees a
//! partial artifact. Files are written before the database rows that name them, so a crash can
//! leave an unreferenced file but never a row without its file; such files, and those whose
//! last release was deleted, are removed by the teardown that deleted it
//! (`Artifacts::remove_unused`) or by the sweep (`Artifacts::sweep`, at start-up and then
//! periodically).
//!
//! The grace period makes removal safe against a create that is between writing its file and
//! committing the release that names it: a file is removed only when the store says nothing
//! uses it *and* it is older than the grace period, and a create that finds its file already
//! there refreshes its modification time instead of rewriting it. A create commits within its
//! lock timeout (seconds), far inside the grace period (minutes).
//!
//! **Shared** mode (a runtime whose pods fetch their code over HTTP from whichever API replica
//! answers, `kubernetes.md`): an upload also stores each tarball as a blob in the database
//! (`ArtifactStore`), after its file and before the release row, so every replica can serve
//! it. A replica asked for a tarball it has no file of reads the blob and keeps it as a file.
//! Blobs go under the same rules as files (unused, and untouched for the grace period); the
//! removals run in every mode, so blobs left behind after a change of runtime go too.
//!
//! The file work is synchronous (a std mutex, the blocking pool) and the store is async: the
//! async methods here do the file part on the blocking pool and the store part after it, so
//! the mutex is never held across an await.

use bytes::Bytes;
use stackyard_api::ArtifactUsage;
use stackyard_core::Millis;
use stackyard_core::ids::sha256_hex;
use stackyard_core::runtime::artifact_path;
use stackyard_core::store::{ArtifactStore, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The artifact files of one data directory, and in shared mode their blobs in the store.
pub struct Artifacts {
    data_dir: PathBuf,
    grace: Duration,
    /// Whether uploads also store their tarballs in the database (see the module doc).
    shared: bool,
    /// Orders a save's "the file exists: refresh it and rely on it" against a removal's "old
    /// enough: remove it", so that a removal never takes a file a create has just decided to
    /// rely on; guards the usage totals too. A std mutex: held only around a stat and a rename
    /// or unlink (or the sweep's directory scan), on the blocking pool, never across an await.
    usage: Mutex<ArtifactUsage>,
}

impl Artifacts {
    /// The artifacts under `data_dir`; its usage is counted by the first `sweep`. `shared`:
    /// uploads store blobs too (see the module doc).
    pub fn new(data_dir: &Path, grace: Duration, shared: bool) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            grace,
            shared,
            usage: Mutex::new(ArtifactUsage::default()),
        }
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Blobs last stored before this instant may be removed (if unused): the grace period,
    /// as for files.
    fn blob_cutoff(&self) -> Millis {
        let grace = i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX);
        crate::now().saturating_add_ms(grace.saturating_neg())
    }

    /// Stores an upload's tarballs, `(digest, bytes)` with digests the caller computed from
    /// the bytes: every file (on the blocking pool), then in shared mode every blob. Call it
    /// before the transaction that writes the rows naming them.
    pub async fn save_upload<S: ArtifactStore>(
        self: &Arc<Self>,
        store: &S,
        files: &BTreeMap<String, Bytes>,
    ) -> Result<(), SaveError> {
        let (this, to_write) = (self.clone(), files.clone());
        tokio::task::spawn_blocking(move || {
            to_write
                .iter()
                .try_for_each(|(digest, bytes)| this.save(digest, bytes))
        })
        .await
        .map_err(|_| SaveError::Interrupted)?
        .map_err(SaveError::File)?;
        if self.shared {
            for (digest, bytes) in files {
                store
                    .put_artifact_blob(digest, bytes, crate::now())
                    .await
                    .map_err(SaveError::Blob)?;
            }
        }
        Ok(())
    }

    /// The tarball of `digest` (a valid digest: the caller checked), from this data directory
    /// or else from the store, whose blob is then kept as a file here. `None`: neither has it.
    /// A blob whose bytes do not match its digest is reported and not served.
    pub async fn open<S: ArtifactStore>(
        self: &Arc<Self>,
        store: &S,
        digest: &str,
    ) -> Result<Option<Artifact>, StoreError> {
        let path = artifact_path(&self.data_dir, digest);
        match tokio::fs::File::open(&path).await {
            // Once open, a removal (unlink) cannot take the bytes from under the reader.
            Ok(file) => match file.metadata().await {
                Ok(meta) => {
                    return Ok(Some(Artifact::File {
                        file,
                        len: meta.len(),
                    }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "could not inspect an artifact")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "could not open an artifact")
            }
        }
        let Some(bytes) = store.artifact_blob(digest).await? else {
            return Ok(None);
        };
        let (this, digest) = (self.clone(), digest.to_owned());
        let checked = tokio::task::spawn_blocking(move || {
            if sha256_hex(&bytes) != digest {
                tracing::error!(digest = %digest, "a stored artifact blob does not match its digest");
                return None;
            }
            if let Err(e) = this.save(&digest, &bytes) {
                // Served all the same; the next request reads the blob again.
                tracing::warn!(error = %e, digest = %digest, "could not keep a fetched artifact as a file");
            }
            Some(bytes)
        })
        .await
        .map_err(|_| StoreError::Unavailable("the artifact check was interrupted".into()))?;
        Ok(checked.map(|b| Artifact::Bytes(Bytes::from(b))))
    }

    /// Removes the files and the blobs of `digests`, which the store reported no release uses
    /// any more, except those touched within the grace period. Returns how many files were
    /// removed; failures are logged (the sweep tries again).
    pub async fn remove_unused<S: ArtifactStore>(
        self: &Arc<Self>,
        store: &S,
        digests: Vec<String>,
    ) -> usize {
        let digests: Vec<String> = digests.into_iter().filter(|d| is_digest(d)).collect();
        let (this, to_remove) = (self.clone(), digests.clone());
        let removed = tokio::task::spawn_blocking(move || this.remove_unused_files(&to_remove))
            .await
            .unwrap_or_default();
        match store
            .delete_artifact_blobs(&digests, self.blob_cutoff())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(blobs = n, "removed artifact blobs no release uses"),
            Err(e) => tracing::warn!(error = %e, "could not remove unused artifact blobs"),
        }
        removed
    }

    /// The periodic sweep (`sweep_files`), then the blobs no release uses that were untouched
    /// for the grace period. Returns how many files were removed.
    pub async fn sweep<S: ArtifactStore>(
        self: &Arc<Self>,
        store: &S,
        used: BTreeSet<String>,
    ) -> usize {
        let this = self.clone();
        let removed = tokio::task::spawn_blocking(move || this.sweep_files(&used))
            .await
            .unwrap_or_default();
        match store.sweep_artifact_blobs(self.blob_cutoff()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(blobs = n, "swept artifact blobs no release uses"),
            Err(e) => tracing::warn!(error = %e, "could not sweep artifact blobs"),
        }
        removed
    }

    fn dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArtifactUsage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many artifact files there are and their total size.
    pub fn usage(&self) -> ArtifactUsage {
        *self.lock()
    }

    /// Stores `bytes` under `digest` (which the caller computed from them). An existing file
    /// is kept, its modification time set to now: the create relying on it then has the whole
    /// grace period to commit before a removal may take it.
    pub fn save(&self, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let final_path = artifact_path(&self.data_dir, digest);
        {
            let _order = self.lock();
            match std::fs::File::options().write(true).open(&final_path) {
                Ok(f) => return f.set_modified(SystemTime::now()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let dir = self.dir();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(
            ".{digest}.{}.tmp",
            stackyard_core::ids::random_hex(6)
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            {
                let mut usage = self.lock();
                let existed = final_path.exists();
                std::fs::rename(&tmp, &final_path)?;
                if !existed {
                    usage.count += 1;
                    usage.bytes += bytes.len() as u64;
                }
            }
            std::fs::File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes the files of `digests`, which the store reported no release uses any more,
    /// except those younger than the grace period (a create may be about to commit them).
    /// Returns how many were removed; failures are logged (the sweep tries again).
    pub fn remove_unused_files(&self, digests: &[String]) -> usize {
        let mut usage = self.lock();
        digests
            .iter()
            .filter(|d| is_digest(d))
            .filter(|d| self.remove_if_stale(&artifact_path(&self.data_dir, d), &mut usage))
            .count()
    }

    /// Removes every artifact file whose digest is not in `used` and every temporary file
    /// (a write a crash interrupted), if older than the grace period, and counts what is left.
    /// Returns how many files were removed.
    pub fn sweep_files(&self, used: &BTreeSet<String>) -> usize {
        let mut usage = self.lock();
        let entries = match std::fs::read_dir(self.dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the artifacts directory");
                return 0;
            }
        };
        let mut removed = 0;
        let mut left = ArtifactUsage::default();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match name.strip_suffix(".tar.gz").filter(|d| is_digest(d)) {
                Some(digest) if used.contains(digest) => {}
                Some(_) => {
                    if self.remove_if_stale(&path, &mut ArtifactUsage::default()) {
                        removed += 1;
                        continue;
                    }
                }
                None => {
                    if name.starts_with('.')
                        && name.ends_with(".tmp")
                        && self.remove_if_stale(&path, &mut ArtifactUsage::default())
                    {
                        removed += 1;
                    }
                    continue;
                }
            }
            left.count += 1;
            left.bytes += size;
        }
        *usage = left;
        removed
    }

    /// Removes `path` if it was last written or refreshed more than the grace period ago.
    /// The caller holds the lock.
    fn remove_if_stale(&self, path: &Path, usage: &mut ArtifactUsage) -> bool {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "could not inspect an artifact");
                return false;
            }
        };
        // A modification time in the future (a clock step back) counts as fresh.
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        if age < self.grace {
            return false;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {
                usage.count = usage.count.saturating_sub(1);
                usage.bytes = usage.bytes.saturating_sub(meta.len());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "could not remove an artifact");
                false
            }
        }
    }
}

/// How long a signed artifact URL stays valid (`kubernetes.md`: a 10-minute URL).
pub const URL_TTL: Duration = Duration::from_secs(600);

/// The signer of artifact URLs for a server whose proved master key is `master`.
///
/// It signs with `master`, the key the keyring starts with, and verifies with it and with
/// every other key the key source holds now. Not with the keyring's later keys: a rotation
/// while this server runs is followed by it only at its restart. Replicas sharing the
/// database share the key, so each verifies the others' URLs; during a rotation done as the
/// README says (the new key added to each key source, servers restarted, the old key dropped,
/// servers restarted again), a replica restarted with both keys accepts the URLs of one not
/// yet restarted, and once the old key is dropped every URL signed with it has long expired
/// (`URL_TTL`). What can fail is a URL signed with the new key reaching a replica that has
/// not restarted since the new key was added: refused until that replica restarts.
pub fn url_signer(
    master: &stackyard_core::crypto::MasterKey,
    keys: &crate::config::KeyArgs,
    data_dir: &Path,
) -> stackyard_core::artifact_url::ArtifactSigner {
    let known = crate::masterkey::load_all(keys, data_dir);
    stackyard_core::artifact_url::ArtifactSigner::from_master(master, URL_TTL).accepting(&known)
}

/// A SHA-256 digest in hex: the only names the removals act on, whatever the store returns.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A tarball to serve: an open file here, or the bytes of a blob another replica stored.
pub enum Artifact {
    File { file: tokio::fs::File, len: u64 },
    Bytes(Bytes),
}

/// Why an upload's tarballs were not all stored.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("writing an artifact file: {0}")]
    File(std::io::Error),
    #[error("storing an artifact blob: {0}")]
    Blob(StoreError),
    #[error("the artifact write was interrupted")]
    Interrupted,
}

/// Test-only fault injection, compiled into debug builds only: with
/// `STACKYARD_TEST_HANG_AFTER_ARTIFACT_WRITE` set, a create or redeploy stops for good after
/// writing its artifacts and before its transaction, so a test can kill the server in that
/// window.
#[cfg(debug_assertions)]
pub async fn test_hang_after_write() {
    if std::env::var_os("STACKYARD_TEST_HANG_AFTER_ARTIFACT_WRITE").is_some() {
        tracing::warn!("test fault: hanging after the artifact write, before the commit");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn age(path: &Path, by: Duration) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn unused_files_go_only_once_older_than_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::new(dir.path(), Duration::from_secs(600), false);
        a.save(A, b"one").unwrap();
        a.save(B, b"three").unwrap();
        assert_eq!(a.usage(), ArtifactUsage { count: 2, bytes: 8 });
        assert_eq!(
            a.remove_unused_files(&[A.into(), B.into()]),
            0,
            "both are fresh"
        );
        age(&artifact_path(dir.path(), A), Duration::from_secs(601));
        assert_eq!(a.remove_unused_files(&[A.into(), B.into()]), 1);
        assert!(!artifact_path(dir.path(), A).exists());
        assert_eq!(a.usage(), ArtifactUsage { count: 1, bytes: 5 });
    }

    #[test]
    fn saving_an_existing_file_refreshes_it_so_a_removal_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::new(dir.path(), Duration::from_secs(600), false);
        a.save(A, b"one").unwrap();
        age(&artifact_path(dir.path(), A), Duration::from_secs(3600));
        // A create relying on the file it found: now fresh again.
        a.save(A, b"one").unwrap();
        assert_eq!(a.remove_unused_files(&[A.into()]), 0);
        assert_eq!(a.usage(), ArtifactUsage { count: 1, bytes: 3 });
    }

    #[test]
    fn sweep_keeps_used_and_fresh_files_and_recounts() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::new(dir.path(), Duration::from_secs(600), false);
        a.save(A, b"one").unwrap();
        a.save(B, b"three").unwrap();
        let tmp = dir.path().join("artifacts").join(format!(".{A}.0123.tmp"));
        std::fs::write(&tmp, b"partial").unwrap();
        let other = dir.path().join("artifacts").join("README");
        std::fs::write(&other, b"not ours").unwrap();
        for p in [
            artifact_path(dir.path(), A),
            artifact_path(dir.path(), B),
            tmp.clone(),
            other.clone(),
        ] {
            age(&p, Duration::from_secs(601));
        }
        let fresh = Artifacts::new(dir.path(), Duration::from_secs(600), false);
        let used = BTreeSet::from([B.to_owned()]);
        assert_eq!(
            fresh.sweep_files(&used),
            2,
            "the unused artifact and the temporary file"
        );
        assert!(artifact_path(dir.path(), B).exists() && other.exists());
        assert_eq!(fresh.usage(), ArtifactUsage { count: 1, bytes: 5 });
    }
}
