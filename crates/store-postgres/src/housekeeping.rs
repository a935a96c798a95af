//! `Housekeeping` on PostgreSQL: idempotency reservations, the anonymous rate counters,
//! pruning.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::store::{Housekeeping, IdempotencyBegin, IdempotencyRequest, StoreError};
use stackyard_core::time::Millis;
use stackyard_store_sql::error::{Error, corrupt};
use stackyard_store_sql::ops::millis;
use stackyard_store_sql::rows::IdempotencyRow;
use std::collections::BTreeSet;

impl Housekeeping for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            sqlx::query("SELECT 1").execute(&mut *c).await?;
            Ok(())
        };
        Ok(self.read(read).await?)
    }

    async fn idempotency_begin(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        let now = req.now;
        let expires_at = now.saturating_add_ms(millis(req.ttl)).0;
        let stale_before = now.0.saturating_sub(millis(req.stale_after));
        // Lock: the one idempotency row, taken by the upsert whether or not it changes it
        // (ON CONFLICT DO UPDATE locks the conflicting row even when its WHERE is false). Two
        // requests with one key therefore decide one after the other, and only one can start.
        // The row is reserved afresh when it is absent, expired, or a stale reservation of the
        // same request (its server died): exactly the cases that answer `Started`.
        let mut tx = self.begin().await?;
        let started: Option<i32> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys AS i (scope, key, request_hash, state, status, body, created_at, expires_at) \
             VALUES ($1, $2, $3, 'pending', NULL, NULL, $4, $5) \
             ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
               state = 'pending', status = NULL, body = NULL, \
               created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at \
             WHERE i.expires_at <= $4 \
                OR (i.state = 'pending' AND i.request_hash = EXCLUDED.request_hash AND i.created_at < $6) \
             RETURNING 1",
        )
        .bind(req.scope)
        .bind(req.key)
        .bind(req.request_hash)
        .bind(now.0)
        .bind(expires_at)
        .bind(stale_before)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)?;
        if started.is_some() {
            tx.commit().await.map_err(Error::from)?;
            return Ok(IdempotencyBegin::Started);
        }
        // A live record we hold locked: what it says.
        let row: Option<IdempotencyRow> = sqlx::query_as(
            "SELECT request_hash, state, status, body, created_at, expires_at \
             FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(req.scope)
        .bind(req.key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)?;
        let row = row.ok_or_else(|| corrupt("an idempotency record vanished while locked"))?;
        Ok(row.answer(req.request_hash)?)
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        Ok(OPS
            .idempotency_abandon(self.begin().await?, scope, key)
            .await?)
    }

    async fn count_anonymous_create(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> Result<i64, StoreError> {
        // In a transaction only so that the wait for the counter row is bounded.
        let tx = self.begin().await?;
        Ok(OPS.count_anonymous_create(tx, fingerprint, now).await?)
    }

    async fn sweep_artifacts(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(OPS.sweep_artifacts(self.begin().await?).await?)
    }

    async fn prune(&self, now: Millis, events_before: Millis) -> Result<u64, StoreError> {
        // Locks: only the rows deleted, none of which a live request still uses (events past
        // their age, expired records and sessions, past days' counters). One statement, one
        // commit.
        let mut tx = self.begin().await?;
        let removed: i64 = sqlx::query_scalar(
            "WITH ev AS (DELETE FROM stack_events WHERE at < $1 RETURNING 1), \
             idem AS (DELETE FROM idempotency_keys WHERE expires_at <= $2 RETURNING 1), \
             ses AS (DELETE FROM dashboard_sessions WHERE expires_at <= $2 RETURNING 1), \
             rc AS (DELETE FROM rate_counters WHERE day < $3 RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM ev) + (SELECT COUNT(*) FROM idem) \
               + (SELECT COUNT(*) FROM ses) + (SELECT COUNT(*) FROM rc)",
        )
        .bind(events_before.0)
        .bind(now.0)
        .bind(now.utc_day())
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(u64::try_from(removed).unwrap_or_default())
    }
}
