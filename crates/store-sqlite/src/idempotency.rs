//! `Idempotency-Key` records: reserve on arrival, complete in the transaction of the change
//! they answer for, replay afterwards.

use crate::error::{col, db_err};
use crate::{SqliteStore, millis};
use sqlx::SqliteConnection;
use stackyard_core::store::{IDEMPOTENCY_TTL, IdempotencyBegin, IdempotencyRequest, StoreError};
use stackyard_core::time::Millis;

/// Marks `(scope, key)` done with the response, inside the caller's write transaction. A
/// reservation that is missing (expired and dropped, or never made) is inserted done; its
/// request hash is unknown here, so it is stored empty and a replay of it answers `Mismatch`.
pub(crate) async fn complete(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    status: u16,
    body: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', status = $3, body = $4 WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(i64::from(status))
    .bind(body)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?
    .rows_affected();
    if updated == 0 {
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, state, status, body, created_at, expires_at) \
             VALUES ($1, $2, '', 'done', $3, $4, $5, $6)",
        )
        .bind(scope)
        .bind(key)
        .bind(i64::from(status))
        .bind(body)
        .bind(now.0)
        .bind(now.saturating_add_ms(millis(IDEMPOTENCY_TTL)).0)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn idempotency_begin_impl(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> Result<IdempotencyBegin, StoreError> {
        let now = req.now;
        let expires_at = now.saturating_add_ms(millis(req.ttl)).0;
        // Write lock before the lookup: two requests with the same key must not both see "no
        // record" and both start.
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT request_hash, state, status, body, created_at, expires_at \
             FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(req.scope)
        .bind(req.key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;

        let live = match &row {
            Some(r) => col::<i64>(r, "expires_at")? > now.0,
            None => false,
        };
        let answer = match row.filter(|_| live) {
            None => {
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
                .map_err(db_err)?;
                IdempotencyBegin::Started
            }
            Some(r) => {
                let hash: String = col(&r, "request_hash")?;
                let state: String = col(&r, "state")?;
                if hash != req.request_hash {
                    IdempotencyBegin::Mismatch
                } else if state == "done" {
                    let status: Option<i64> = col(&r, "status")?;
                    let status = status.and_then(|s| u16::try_from(s).ok()).ok_or_else(|| {
                        StoreError::Corrupt(
                            "a completed idempotency record has no valid status".into(),
                        )
                    })?;
                    let body: Option<String> = col(&r, "body")?;
                    IdempotencyBegin::Replay {
                        status,
                        body: body.unwrap_or_default(),
                    }
                } else {
                    let created_at: i64 = col(&r, "created_at")?;
                    let stale_before = now.0.saturating_sub(millis(req.stale_after));
                    if created_at < stale_before {
                        // The request that reserved it never finished (its server died).
                        sqlx::query(
                            "UPDATE idempotency_keys SET created_at = $3, expires_at = $4 \
                             WHERE scope = $1 AND key = $2",
                        )
                        .bind(req.scope)
                        .bind(req.key)
                        .bind(now.0)
                        .bind(expires_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                        IdempotencyBegin::Started
                    } else {
                        IdempotencyBegin::InProgress
                    }
                }
            }
        };
        if answer == IdempotencyBegin::Started {
            tx.commit().await.map_err(db_err)?;
        } else {
            tx.rollback().await.map_err(db_err)?;
        }
        Ok(answer)
    }

    pub(crate) async fn idempotency_abandon_impl(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        // One statement, atomic on its own; on the writer so it queues behind other writes
        // instead of spinning in SQLite's busy handler.
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 'pending'",
        )
        .bind(scope)
        .bind(key)
        .execute(&self.writer)
        .await
        .map_err(crate::writer_err)?;
        Ok(())
    }
}
