//! The SQLite implementation of Stackyard's storage traits: the embedded default, one file in
//! the data directory, owned by a single server process (`is_shared() == false`).
//!
//! Connections come from two pools on the same file:
//! - the **writer** pool holds exactly one connection. Every write, and every read that decides
//!   a write, runs on it inside `BEGIN IMMEDIATE`, so the SQLite write lock is taken up front
//!   (a deferred transaction that upgrades later can fail with `SQLITE_BUSY` without waiting)
//!   and in-process writers queue fairly on the pool instead of spinning in SQLite's busy
//!   handler. Its prepared statements stay cached across batches, which is what keeps the env
//!   hot path at one `BEGIN IMMEDIATE` and one `COMMIT` per batch.
//! - the **reader** pool (`StoreOptions::max_connections`) serves pure reads; WAL lets them run
//!   next to the writer. Multi-statement reads use a deferred `BEGIN` for one snapshot.
//!
//! Waits are bounded by `StoreOptions::lock_timeout` twice over: waiting for the writer
//! connection (pool acquire timeout) and waiting for another process's lock (`busy_timeout`).
//! Either expiring is `StoreError::LockTimeout`.
//!
//! What both SQL stores do alike is written once in `stackyard_store_sql` (the lifecycle steps
//! planned in `stackyard_core::lifecycle`, the reads, teams and tokens); this crate gives it its
//! statements (`sql`) and its transactions, and keeps what is SQLite's own: the env batch
//! (`env`), job claims (`jobs`), idempotency reservations and pruning (`housekeeping`), and
//! `get_stack` (`stacks`). One module per storage trait.

mod artifacts;
mod backup;
mod cache;
mod domains;
mod env;
mod events;
mod family;
mod housekeeping;
mod jobs;
mod keys;
mod resources;
mod sql;
mod stacks;
mod teams;
mod vault;

pub use backup::backup;
use cache::DetailCache;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, Transaction};
use stackyard_core::store::{StoreError, StoreOptions};
use stackyard_store_sql::error::{classify, migration_failed};
use stackyard_store_sql::seal::KeySlot;
use stackyard_store_sql::{Error, Result};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A handle on one SQLite database. Cheap to clone (two pool handles).
///
/// Invariant: every write goes through `writer`, whose single connection serialises them in
/// this process; another process touching the file is bounded by `busy_timeout`.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    env_history: i64,
    lock_timeout: Duration,
    /// `get_stack`'s answers until a write begins (`cache`).
    details: Arc<DetailCache>,
    /// Tries of the write lock that found it held by another process (see `lock_waits`).
    lock_waits: Arc<AtomicU64>,
    /// The keyring secrets are sealed with (`stackyard_store_sql::seal`).
    pub(crate) keys: KeySlot,
}

impl fmt::Debug for SqliteStore {
    // Never the URL or path: it may sit in a directory name that reveals more than it should.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("env_history", &self.env_history)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite:///abs/path.db`,
    /// `sqlite://relative.db`, anything sqlx accepts), in WAL mode with `synchronous=FULL`,
    /// foreign keys on and `busy_timeout = opts.lock_timeout` (the writer waits for its lock in
    /// `write_tx_until` instead), and runs the embedded migrations.
    pub async fn connect(
        url: &str,
        opts: StoreOptions,
    ) -> std::result::Result<SqliteStore, StoreError> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::Unavailable("the SQLite database URL is not valid".into()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(opts.lock_timeout);
        // A private in-memory database exists once per connection; a shared-cache one reports
        // SQLITE_LOCKED (no waiting) between connections. Either way: one pool for everything.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // WAL is a property of the file: set it once, before anything else uses the file (the
        // migrations' connection, then the writer's). Switching needs an exclusive lock that
        // busy_timeout does not wait for, so reader connections leave the pragma alone.
        let wal = base.clone().journal_mode(SqliteJournalMode::Wal);
        if !in_memory {
            // The migrations wait for the lock like any other process would (another server
            // just stopping, a backup reading the file).
            let mut setup = wal.connect().await.map_err(|e| connect_err(&e))?;
            let migrated = sqlx::migrate!("./migrations").run(&mut setup).await;
            let _ = setup.close().await;
            migrated.map_err(|e| migration_failed("SQLite", &e))?;
        }
        // The writer does not wait in SQLite's busy handler: `write_tx_until` waits for the
        // write lock itself, against a deadline that also counts the time spent waiting for
        // the writer connection. A write ends for the stack cache only once its connection is
        // back in the pool, after its commit or rollback.
        let details = Arc::new(DetailCache::default());
        let ended = details.clone();
        let writer = SqlitePoolOptions::new()
            .after_release(move |_, _| {
                ended.write_ended();
                Box::pin(async { Ok(true) })
            })
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.lock_timeout)
            // The one writer connection is kept forever: its statement cache is the point.
            .idle_timeout(None)
            .max_lifetime(None)
            // A round trip per transaction for a connection we own; a dead one errors anyway.
            .test_before_acquire(false)
            .connect_with(wal.busy_timeout(Duration::ZERO))
            .await
            .map_err(|e| connect_err(&e))?;
        let reader = if in_memory {
            sqlx::migrate!("./migrations")
                .run(&writer)
                .await
                .map_err(|e| migration_failed("SQLite", &e))?;
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .acquire_timeout(opts.lock_timeout)
                .connect_with(base)
                .await
                .map_err(|e| connect_err(&e))?
        };
        Ok(SqliteStore {
            writer,
            reader,
            env_history: opts.env_history.max(1),
            lock_timeout: opts.lock_timeout,
            details,
            lock_waits: Arc::default(),
            keys: KeySlot::default(),
        })
    }

    /// The general-purpose pool (the reader pool). Tests use it to count rows and to hold the
    /// database lock from a second connection; the store's own writes never use it.
    pub fn pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// Starts a write transaction: the writer connection, then `BEGIN IMMEDIATE`, which takes
    /// SQLite's write lock before the first read so that what we read cannot change before we
    /// write. Waiting longer than `lock_timeout` for both together is `LockTimeout`.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.write_tx_until(Instant::now() + self.lock_timeout)
            .await
    }

    /// `write_tx` giving up at `deadline`. The writer connection is waited for in the pool
    /// (in-process writers queue there fairly); the database's lock, held only by another
    /// process, is tried again with short pauses, so the whole wait ends at the deadline.
    pub(crate) async fn write_tx_until(
        &self,
        deadline: Instant,
    ) -> Result<Transaction<'static, Sqlite>> {
        let mut pause = Duration::from_millis(1);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Store(StoreError::LockTimeout));
            }
            let begin = self.writer.begin_with("BEGIN IMMEDIATE");
            match tokio::time::timeout(remaining, begin).await {
                Ok(Ok(tx)) => {
                    self.details.write_began();
                    return Ok(tx);
                }
                Ok(Err(e)) if classify(&e) == StoreError::LockTimeout => {
                    self.lock_waits.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause.min(remaining)).await;
                    pause = (pause * 2).min(MAX_LOCK_PAUSE);
                }
                Ok(Err(e)) => return Err(writer_err(e)),
                Err(_) => return Err(Error::Store(StoreError::LockTimeout)),
            }
        }
    }

    /// How many times a write found the database locked by another process and waited: how
    /// a test (or an operator) sees that writes are held up outside this process.
    pub fn lock_waits(&self) -> u64 {
        self.lock_waits.load(Ordering::Relaxed)
    }

    /// A reader connection, for a read that is one statement (one snapshot by itself).
    pub(crate) async fn reader(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.reader.acquire().await?)
    }

    /// Starts a read transaction (deferred `BEGIN`): one consistent WAL snapshot for several
    /// statements, taking no lock that blocks the writer.
    pub(crate) async fn read_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.reader.begin().await?)
    }
}

/// The longest pause between two tries of the database's write lock.
const MAX_LOCK_PAUSE: Duration = Duration::from_millis(20);

/// Waiting for the writer connection *is* waiting for the write lock: a pool timeout there is
/// `LockTimeout`, not `Unavailable`.
fn writer_err(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolTimedOut => Error::Store(StoreError::LockTimeout),
        e => Error::Db(e),
    }
}

fn connect_err(e: &sqlx::Error) -> StoreError {
    match classify(e) {
        StoreError::Unavailable(msg) => {
            StoreError::Unavailable(format!("could not open the SQLite database: {msg}"))
        }
        other => other,
    }
}
