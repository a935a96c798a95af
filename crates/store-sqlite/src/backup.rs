//! An online, consistent copy of the database file: `VACUUM INTO` (sqlx does not expose
//! SQLite's backup API; `VACUUM INTO` is SQLite's other supported way to snapshot a live
//! database). It reads inside one read transaction, so under WAL the server keeps writing
//! meanwhile and the copy holds exactly the transactions committed before it began.

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use stackyard_core::store::StoreError;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// How long the snapshot's read transaction may wait to begin (a checkpoint holding the file).
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Writes a consistent copy of the database at `url` to `dest`, which must not exist, and
/// returns its size in bytes. The copy is written beside `dest`, checked with
/// `PRAGMA integrity_check`, synced and renamed into place, so `dest` is either absent or a
/// whole, checked database. The source is opened as it is: no migration runs, so the backup
/// taken before an upgrade is of the schema the old binary wrote.
pub async fn backup(url: &str, dest: &Path) -> Result<u64, StoreError> {
    if dest.exists() {
        return Err(StoreError::Conflict("the backup file"));
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let unavailable =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Unavailable(format!("{what}: {e}"));
    let source = SqliteConnectOptions::from_str(url)
        .map_err(|_| StoreError::Unavailable("the SQLite database URL is not valid".into()))?
        .create_if_missing(false)
        .busy_timeout(BUSY_WAIT);
    let mut conn = source
        .connect()
        .await
        .map_err(|e| unavailable("opening the database", &e))?;
    let copied = sqlx::query("VACUUM INTO ?")
        .bind(partial.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    let result = async {
        copied.map_err(|e| unavailable("copying the database", &e))?;
        let mut copy = SqliteConnectOptions::new()
            .filename(&partial)
            .read_only(true)
            .connect()
            .await
            .map_err(|e| unavailable("opening the copy", &e))?;
        let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut copy)
            .await
            .map_err(|e| unavailable("checking the copy", &e))?;
        let _ = copy.close().await;
        if verdict != "ok" {
            return Err(StoreError::Corrupt(format!(
                "the copy fails its integrity check: {verdict}"
            )));
        }
        let file =
            std::fs::File::open(&partial).map_err(|e| unavailable("syncing the copy", &e))?;
        file.sync_all()
            .map_err(|e| unavailable("syncing the copy", &e))?;
        let size = file
            .metadata()
            .map_err(|e| unavailable("syncing the copy", &e))?
            .len();
        std::fs::rename(&partial, dest).map_err(|e| unavailable("renaming the copy", &e))?;
        Ok(size)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
