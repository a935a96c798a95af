//! `Idempotency-Key` records: reserved on arrival, completed in the transaction of the change
//! they answer for, replayed afterwards. A record completed without a prior reservation
//! (expired and dropped, or never made) is inserted done, for `IDEMPOTENCY_TTL`, with an empty
//! request hash, so a replay of it answers `Mismatch`.

use crate::error::{Result, col, corrupt};
use crate::{PgStore, millis};
use stackyard_core::store::{IdempotencyBegin, IdempotencyRequest};

impl PgStore {
    pub(crate) async fn idempotency_begin_impl(
        &self,
        req: IdempotencyRequest<'_>,
    ) -> Result<IdempotencyBegin> {
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
        .await?;
        if started.is_some() {
            tx.commit().await?;
            return Ok(IdempotencyBegin::Started);
        }
        // A live record we hold locked: read what it says.
        let row = sqlx::query(
            "SELECT request_hash, state, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(req.scope)
        .bind(req.key)
        .fetch_optional(&mut *tx)
        .await?;
        tx.rollback().await?;
        let Some(row) = row else {
            return Err(corrupt("an idempotency record vanished while locked"));
        };
        let hash: String = col(&row, "request_hash")?;
        let state: String = col(&row, "state")?;
        Ok(if hash != req.request_hash {
            IdempotencyBegin::Mismatch
        } else if state == "done" {
            let status: Option<i32> = col(&row, "status")?;
            let status = status
                .and_then(|s| u16::try_from(s).ok())
                .ok_or_else(|| corrupt("a completed idempotency record has no valid status"))?;
            let body: Option<String> = col(&row, "body")?;
            IdempotencyBegin::Replay {
                status,
                body: body.unwrap_or_default(),
            }
        } else {
            IdempotencyBegin::InProgress
        })
    }

    pub(crate) async fn idempotency_abandon_impl(&self, scope: &str, key: &str) -> Result<()> {
        // Lock: the one idempotency row, taken by the DELETE; a completed record stays.
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 'pending'",
        )
        .bind(scope)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
