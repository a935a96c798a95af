//! The store's own bookkeeping, outside any stack: liveness, idempotency reservations, the
//! anonymous rate counters, and pruning what has outlived its use.

use super::{IdempotencyBegin, IdempotencyRequest, StoreError};
use crate::time::Millis;
use std::collections::BTreeSet;
use std::future::Future;

pub trait Housekeeping: Clone + Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Whether several server processes may share this database (PostgreSQL). When false the
    /// server owns the database alone and may requeue every running job at start-up.
    fn is_shared(&self) -> bool;

    /// A cheap round trip proving the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Looks up or reserves an idempotency key (see `IdempotencyBegin`). Expired records are
    /// treated as absent.
    fn idempotency_begin(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> impl Future<Output = Result<IdempotencyBegin, StoreError>> + Send;

    /// Drops a reservation whose request failed, so the client may retry with the same key.
    /// Completed records are left alone.
    fn idempotency_abandon(
        &self,
        scope: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Adds one to the anonymous-create counter of `fingerprint` for the UTC day of `now`
    /// (`Millis::utc_day`) and returns the new count: the database-backed rate limit. One atomic
    /// upsert, so concurrent calls each get a distinct count.
    fn count_anonymous_create(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Every artifact digest some release of some stack uses, after deleting, in the same
    /// transaction, the artifact rows no release uses: the start-up and periodic sweep of
    /// artifact files (a file whose digest is not listed may be removed once it is older than
    /// the grace period a create has to commit in).
    fn sweep_artifacts(&self) -> impl Future<Output = Result<BTreeSet<String>, StoreError>> + Send;

    /// In one transaction: deletes events with `at < events_before`, idempotency records and
    /// dashboard sessions with `expires_at <= now`, and rate counters of UTC days before
    /// `now`'s. Returns the number of rows removed.
    fn prune(
        &self,
        now: Millis,
        events_before: Millis,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
