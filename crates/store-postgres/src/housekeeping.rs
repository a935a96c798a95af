//! Expiry of anonymous stacks, the database-backed anonymous rate limit, and pruning of rows
//! that only matter for a while (events, idempotency records, past days' counters).

use crate::PgStore;
use crate::error::{Result, parsed};
use stackyard_core::ids::StackSlug;
use stackyard_core::time::Millis;

impl PgStore {
    pub(crate) async fn expired_stacks_impl(
        &self,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<StackSlug>> {
        let limit = limit.max(1);
        let slugs: Vec<String> = self
            .read(|mut c| async move {
                Ok(sqlx::query_scalar(
                    "SELECT slug FROM stacks \
                     WHERE team_id IS NULL AND expires_at <= $1 AND status <> 'deleting' \
                     ORDER BY expires_at, id LIMIT $2",
                )
                .bind(now.0)
                .bind(limit)
                .fetch_all(&mut *c)
                .await?)
            })
            .await?;
        slugs
            .iter()
            .map(|s| parsed(StackSlug::parse(s).ok(), "stack slug"))
            .collect()
    }

    pub(crate) async fn count_anonymous_create_impl(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> Result<i64> {
        // Lock: the counter row, taken by the upsert; concurrent callers (on any server) queue
        // on it and each gets the count its own increment made. In a transaction only so that
        // the wait is bounded by lock_timeout.
        let mut tx = self.begin().await?;
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO rate_counters AS r (fingerprint, day, count) VALUES ($1, $2, 1) \
             ON CONFLICT (fingerprint, day) DO UPDATE SET count = r.count + 1 \
             RETURNING count",
        )
        .bind(fingerprint)
        .bind(now.utc_day())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(count)
    }

    pub(crate) async fn prune_impl(&self, now: Millis, events_before: Millis) -> Result<u64> {
        // Locks: only the rows deleted, none of which a live request still uses (events past
        // their age, expired records, past days' counters). One statement, one commit.
        let mut tx = self.begin().await?;
        let removed: i64 = sqlx::query_scalar(
            "WITH ev AS (DELETE FROM stack_events WHERE at < $1 RETURNING 1), \
             idem AS (DELETE FROM idempotency_keys WHERE expires_at <= $2 RETURNING 1), \
             rc AS (DELETE FROM rate_counters WHERE day < $3 RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM ev) + (SELECT COUNT(*) FROM idem) + (SELECT COUNT(*) FROM rc)",
        )
        .bind(events_before.0)
        .bind(now.0)
        .bind(now.utc_day())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(u64::try_from(removed).unwrap_or_default())
    }
}
