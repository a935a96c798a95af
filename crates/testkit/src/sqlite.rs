//! A fresh SQLite database per test: a new file in a new temporary directory, removed when the
//! returned value is dropped. Keep it alive for as long as the store is used.

/// A test database location. `url` names a file that does not exist yet; the store creates it.
pub struct SqliteTestDb {
    pub dir: tempfile::TempDir,
    pub url: String,
}

/// A new, empty database location (`sqlite:///tmp/…/stackyard.db`).
pub fn fresh() -> SqliteTestDb {
    // A test that cannot create a temporary directory cannot run at all.
    #[allow(clippy::expect_used)]
    let dir = tempfile::Builder::new()
        .prefix("stackyard-sqlite-")
        .tempdir()
        .expect("creating a temporary directory for a test database");
    let url = format!("sqlite://{}", dir.path().join("stackyard.db").display());
    SqliteTestDb { dir, url }
}
