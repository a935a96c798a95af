//! Service tarballs on disk, stored once by SHA-256 digest under `<data dir>/artifacts/`.
//! A file is written to a temporary name, synced, then renamed, so a reader never sees a
//! partial artifact; writing one that exists is a no-op. Files are written before the
//! database rows that name them, so a crash can leave an unreferenced file but never a row
//! without its file.

use stackyard_core::runtime::artifact_path;
use std::io::Write;
use std::path::Path;

/// Stores `bytes` under `digest` (which the caller computed from them).
pub fn save(data_dir: &Path, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
    let final_path = artifact_path(data_dir, digest);
    if final_path.exists() {
        return Ok(());
    }
    let dir = final_path.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{digest}.{}.tmp",
        stackyard_core::ids::random_hex(6)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &final_path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
