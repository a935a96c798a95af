//! `Housekeeping` on SQLite: idempotency reservations, the anonymous rate counters, pruning.

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::store::{Housekeeping, IdempotencyBegin, IdempotencyRequest, StoreError};
use stackyard_core::time::Millis;
use stackyard_store_sql::Error;
use stackyard_store_sql::ops::millis;
use stackyard_store_sql::rows::IdempotencyRow;
use std::collections::BTreeSet;

impl Housekeeping for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.reader().await?)
            .await
            .map_err(Error::from)?;
        Ok(())
    }

    async fn idempotency_begin(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        let now = req.now;
        let expires_at = now.saturating_add_ms(millis(req.ttl)).0;
        // Write lock before the lookup: two requests with the same key must not both see "no
        // record" and both start.
        let mut tx = self.write_tx().await?;
        let row: Option<IdempotencyRow> = sqlx::query_as(
            "SELECT request_hash, state, status, body, created_at, expires_at \
             FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(req.scope)
        .bind(req.key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)?;
        let stale_before = now.0.saturating_sub(millis(req.stale_after));
        let answer = match row.filter(|r| r.expires_at > now.0) {
            // A reservation whose request never finished (its server died) is taken over.
            Some(r)
                if r.state == "pending"
                    && r.request_hash == req.request_hash
                    && r.created_at < stale_before =>
            {
                IdempotencyBegin::Started
            }
            Some(r) => r.answer(req.request_hash)?,
            None => IdempotencyBegin::Started,
        };
        if answer != IdempotencyBegin::Started {
            return Ok(answer);
        }
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, state, status, body, created_at, expires_at) \
             VALUES ($1, $2, $3, 'pending', NULL, NULL, $4, $5) \
             ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash, \
               state = 'pending', status = NULL, body = NULL, \
               created_at = excluded.created_at, expires_at = excluded.expires_at",
        )
        .bind(req.scope)
        .bind(req.key)
        .bind(req.request_hash)
        .bind(now.0)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(IdempotencyBegin::Started)
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        Ok(OPS
            .idempotency_abandon(self.write_tx().await?, scope, key)
            .await?)
    }

    async fn count_anonymous_create(
        &self,
        fingerprint: &str,
        now: Millis,
    ) -> Result<i64, StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS.count_anonymous_create(tx, fingerprint, now).await?)
    }

    async fn sweep_artifacts(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(OPS.sweep_artifacts(self.write_tx().await?).await?)
    }

    async fn prune(&self, now: Millis, events_before: Millis) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut removed = 0;
        for (sql, bound) in [
            ("DELETE FROM stack_events WHERE at < $1", events_before.0),
            ("DELETE FROM idempotency_keys WHERE expires_at <= $1", now.0),
            (
                "DELETE FROM dashboard_sessions WHERE expires_at <= $1",
                now.0,
            ),
            ("DELETE FROM rate_counters WHERE day < $1", now.utc_day()),
        ] {
            removed += sqlx::query(sql)
                .bind(bound)
                .execute(&mut *tx)
                .await
                .map_err(Error::from)?
                .rows_affected();
        }
        tx.commit().await.map_err(Error::from)?;
        Ok(removed)
    }
}
