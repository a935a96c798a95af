//! Test harness shared by every crate's integration tests: a fresh, real database per test and
//! the `Store` suite that both backends run.
//!
//! - `sqlite`: a new SQLite file in a temporary directory per test.
//! - `pg`: a new PostgreSQL database per test, on `STACKYARD_TEST_DATABASE_URL`, else the local
//!   server at 127.0.0.1:5432, else a private `postgres` started from the machine's binaries.
//!   Only when none of that works do PostgreSQL tests skip, printing why; under `CI=true` a skip
//!   is a failure.
//! - `redis`: a Redis server (the same fallbacks as PostgreSQL) and a key prefix per test.
//! - `process`: a `stackyard serve` child process, stopped cleanly on drop.
//! - `suite`: the store test suite, instantiated per backend with `store_suite!`.

pub mod pg;
pub mod process;
pub mod redis;
pub mod sqlite;
pub mod suite;
