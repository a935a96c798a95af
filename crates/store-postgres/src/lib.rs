//! The PostgreSQL implementation of Stackyard's storage traits: the production store, shared by
//! every API replica (`is_shared() == true`). Replicas coordinate only through the database:
//! row locks under `lock_timeout`, `FOR UPDATE SKIP LOCKED` job claims, unique indexes.
//!
//! Transactions and locks:
//! - Every write runs in a transaction opened by `PgStore::begin`, which sends `BEGIN` and
//!   `SET LOCAL lock_timeout` in one round trip, so any lock wait inside it is bounded by
//!   `StoreOptions::lock_timeout` and ends as `StoreError::LockTimeout`.
//! - Global lock order, always taken in this order and never in reverse: a team row, then a
//!   stack row, then job rows, then rows hanging off the stack (services, releases, env
//!   versions) and idempotency records. Any transaction takes a suffix of that chain, so two
//!   transactions can never wait on each other in a cycle.
//! - Reads take no locks; a read that needs one snapshot is written as one statement.
//!
//! A pooled connection can be dead (the server restarted, an administrator terminated it).
//! Opening a transaction and running a pure read are retried on a fresh connection when the
//! connection turns out to be lost, because neither can have changed anything; a failure in
//! the middle of a write is reported as `Unavailable` and nothing is retried.
//!
//! What both SQL stores do alike is written once in `stackyard_store_sql` (the lifecycle steps
//! planned in `stackyard_core::lifecycle`, the reads, teams and tokens); this crate gives it its
//! statements (`sql`) and its transactions, and keeps what is PostgreSQL's own: the env batch
//! in one statement (`env`), `SKIP LOCKED` job claims (`jobs`), idempotency reservations and
//! pruning (`housekeeping`), and `get_stack` in one statement (`stacks`). One module per
//! storage trait.

mod artifacts;
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

use sqlx::Connection;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use stackyard_core::store::{StoreError, StoreOptions};
use stackyard_store_sql::error::{classify, is_connection_lost, migration_failed};
use stackyard_store_sql::ops::millis;
use stackyard_store_sql::seal::KeySlot;
use stackyard_store_sql::{Error, Result};
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A handle on one PostgreSQL database: a connection pool and the store settings. Cheap to
/// clone; clones share the pool.
///
/// Invariant: every write transaction starts with `SET LOCAL lock_timeout` (see `begin`), so
/// no call waits on a lock longer than the configured bound.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Bound on a write transaction's waits (see `begin_until`).
    lock_timeout: Duration,
    env_history: i64,
    /// How many times a lost connection is replaced before giving up: enough to walk past
    /// every dead connection the pool can hold.
    retries: u32,
    /// The keyring secrets are sealed with (`stackyard_store_sql::seal`).
    pub(crate) keys: KeySlot,
}

impl fmt::Debug for PgStore {
    // Never the URL: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("env_history", &self.env_history)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://…`), runs the embedded migrations and returns the store.
    ///
    /// The pool holds at most `opts.max_connections` connections and waits at most
    /// `opts.lock_timeout` for one. Several servers may call this at once on one database:
    /// sqlx's migrator holds a PostgreSQL advisory lock while it migrates.
    pub async fn connect(
        url: &str,
        opts: StoreOptions,
    ) -> std::result::Result<PgStore, StoreError> {
        // sqlx's parse error can quote the URL; say only that it is wrong.
        let connect_opts = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Unavailable("the PostgreSQL URL is not valid".into()))?
            .application_name("stackyard");
        // Start-up work (the first connection, the migrations) gets a connection of its own:
        // the pool's acquire timeout is the lock timeout, a bound for requests, not for a
        // server starting on a busy database.
        let mut conn = PgConnection::connect_with(&connect_opts)
            .await
            .map_err(|e| prefixed("could not connect to PostgreSQL", &e))?;
        sqlx::migrate!("./migrations")
            .run(&mut conn)
            .await
            .map_err(|e| migration_failed("PostgreSQL", &e))?;
        let _ = conn.close().await;

        let max_connections = opts.max_connections.max(1);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(opts.lock_timeout)
            // No ping before every use (a round trip on the hot path): sqlx already pings a
            // connection when it comes back to the pool, and `begin` / `read` replace a
            // connection found dead on first use.
            .test_before_acquire(false)
            .connect_lazy_with(connect_opts);

        Ok(PgStore {
            pool,
            lock_timeout: opts.lock_timeout,
            env_history: opts.env_history.max(1),
            retries: max_connections.min(64),
            keys: KeySlot::default(),
        })
    }

    /// The connection pool. Tests use it to count rows, hold row locks from a second
    /// connection and terminate backends; the store's own methods never lend it out.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Opens a write transaction whose waits end `lock_timeout` from now (`begin_until`).
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.begin_until(Instant::now() + self.lock_timeout).await
    }

    /// Opens a write transaction whose waits end at `deadline`: `BEGIN` and `SET LOCAL` of
    /// `lock_timeout` and `statement_timeout` to the time left, in one simple-query round
    /// trip, after at most that long waiting for a pooled connection. `lock_timeout` alone
    /// bounds each lock acquisition separately, and a `FOR UPDATE` queued behind another
    /// waiter makes two (the tuple lock, then the holder's transaction), so the statement is
    /// bounded too (PostgreSQL stops that timer before the commit itself runs). A connection
    /// that turns out to be dead is replaced (nothing has run yet).
    pub(crate) async fn begin_until(
        &self,
        deadline: Instant,
    ) -> Result<Transaction<'static, Postgres>> {
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = millis(left);
            if ms == 0 {
                return Err(Error::Store(StoreError::LockTimeout));
            }
            let sql = format!(
                "BEGIN; SET LOCAL lock_timeout = '{ms}ms'; SET LOCAL statement_timeout = '{ms}ms'"
            );
            let begin = self.pool.begin_with(AssertSqlSafe(sql));
            match tokio::time::timeout(left, begin).await {
                Ok(Ok(tx)) => return Ok(tx),
                Ok(Err(e)) if is_connection_lost(&e) && attempt < self.retries => {
                    attempt += 1;
                    tracing::info!(attempt, "replacing a lost database connection");
                }
                Ok(Err(e)) => return Err(Error::Db(e)),
                Err(_) => return Err(Error::Store(StoreError::LockTimeout)),
            }
        }
    }

    /// Runs a pure read on a pooled connection, on a fresh connection again if the first
    /// turns out to be dead. `f` must not write: it may run more than once.
    pub(crate) async fn read<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(PoolConnection<Postgres>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let conn = self.pool.acquire().await?;
            match f(conn).await {
                Err(Error::Db(e)) if is_connection_lost(&e) && attempt < self.retries => {
                    attempt += 1;
                    tracing::info!(attempt, "replacing a lost database connection");
                }
                other => return other,
            }
        }
    }
}

fn prefixed(context: &str, e: &sqlx::Error) -> StoreError {
    match classify(e) {
        StoreError::Unavailable(msg) => StoreError::Unavailable(format!("{context}: {msg}")),
        other => other,
    }
}
