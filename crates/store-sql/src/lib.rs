//! What Stackyard's two SQL stores share, so that they differ only in their SQL and in the
//! mechanics that really differ (how a transaction takes its locks, how a job is claimed, the
//! env batch's statements):
//! - [`error`]: one error idiom and the mapping of sqlx errors to `StoreError`;
//! - [`rows`]: the rows both select, decoded by `sqlx::FromRow` into domain types;
//! - [`sql::Sql`]: the table of statements a store fills in its dialect;
//! - [`Ops`]: the operations written once, generic over the database: each lifecycle step
//!   reads its inputs under the store's lock (`Ops::lock_stack`), asks
//!   `stackyard_core::lifecycle` for the plan, and writes it (`Ops::write_plan`) with plain
//!   sequential statements; plus the reads and the team, token and housekeeping writes whose
//!   only difference between the stores is SQL text.
//!
//! Nothing here opens a connection or a transaction: the store hands its own in.

pub mod error;
pub mod ops;
pub mod rows;
pub mod seal;
pub mod sql;

pub use error::{Error, Result};
pub use ops::{EnvBatch, EnvBatchWriter, Ops, StackRef};
