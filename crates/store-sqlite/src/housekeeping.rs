//! Expiry of anonymous stacks, the database-backed anonymous rate limit, and pruning of rows
//! that only matter for a while (events, idempotency records, past days' counters).

use crate::error::{db_err, parsed};
use crate::{SqliteStore, writer_err};
use stackyard_core::ids::StackSlug;
use stackyard_core::store::StoreError;
use stackyard_core::time::Millis;

impl SqliteStore {
    pub(crate) async fn expired_stacks_impl(
        &self,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<StackSlug>, StoreError> {
        let slugs: Vec<String> = sqlx::query_scalar(
            "SELECT slug FROM stacks \
             WHERE team_id IS NULL AND expires_at <= $1 AND status <> 'deleting' \
             ORDER BY expires_at, id LIMIT $2",
        )
        .bind(now.0)
        .bind(limit.max(1))
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        slugs
            .iter()
            .map(|s| parsed(StackSlug::parse(s).ok(), "stack slug"))
            .collect()
    }

    pub(crate) async fn count_anonymous_create_impl(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> Result<i64, StoreError> {
        // One statement, atomic on its own; on the writer so concurrent callers queue instead
        // of spinning in SQLite's busy handler, each getting the count its increment made.
        sqlx::query_scalar(
            "INSERT INTO rate_counters (fingerprint, day, count) VALUES ($1, $2, 1) \
             ON CONFLICT (fingerprint, day) DO UPDATE SET count = rate_counters.count + 1 \
             RETURNING count",
        )
        .bind(fingerprint)
        .bind(now.utc_day())
        .fetch_one(&self.writer)
        .await
        .map_err(writer_err)
    }

    pub(crate) async fn prune_impl(
        &self,
        now: Millis,
        events_before: Millis,
    ) -> Result<u64, StoreError> {
        // Write lock for the three deletes, so the count returned is what one commit removed.
        let mut tx = self.write_tx().await?;
        let mut removed = 0;
        for (sql, bound) in [
            ("DELETE FROM stack_events WHERE at < $1", events_before.0),
            ("DELETE FROM idempotency_keys WHERE expires_at <= $1", now.0),
            ("DELETE FROM rate_counters WHERE day < $1", now.utc_day()),
        ] {
            removed += sqlx::query(sql)
                .bind(bound)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
        Ok(removed)
    }
}
