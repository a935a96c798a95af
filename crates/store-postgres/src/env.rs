//! Stack env maps: the batched write path (the benchmark's hot path), dry runs, reads with an
//! audited reveal, and the version history with its pruning.
//!
//! The semantics live in `stackyard_core::envlog`; this module only reads its inputs under the
//! stack's row lock and writes its plan. A batch costs a constant number of round trips,
//! whatever its size:
//! 1. `BEGIN; SET LOCAL lock_timeout = …` (one simple-query message),
//! 2. `SELECT … FROM stacks WHERE id = $1 FOR UPDATE`,
//! 3. only when the batch holds a rollback: one read of the history the targets need,
//! 4. one statement writing everything: the version rows, the audit rows and the
//!    `env.version` events (each one `INSERT … SELECT FROM UNNEST`), the stack row, the
//!    idempotency completions and the pruning, as data-modifying CTEs,
//! 5. `COMMIT` (the only WAL flush).
//!
//! Every statement text is constant, so each is parsed once per connection and then only
//! bound and executed.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use stackyard_core::model::*;
use stackyard_core::store::{
    EnvBatchError, EnvStore, EnvWrite, EnvWriteResult, IDEMPOTENCY_TTL, StoreError, batch_deadline,
};
use stackyard_core::time::Millis;
use stackyard_store_sql::error::{Result, to_json};
use stackyard_store_sql::ops::millis;
use stackyard_store_sql::{EnvBatch, EnvBatchWriter};
use std::time::Instant;

/// The plan's rows as parallel arrays, one element per version record.
#[derive(Default)]
struct RecordArrays {
    versions: Vec<i64>,
    created_at: Vec<i64>,
    actors: Vec<String>,
    set_keys: Vec<String>,
    deleted_keys: Vec<String>,
    changes: Vec<String>,
    snapshots: Vec<Option<String>>,
    kinds: Vec<&'static str>,
    request_ids: Vec<Option<String>>,
    metadata: Vec<String>,
    events: Vec<String>,
}

impl RecordArrays {
    fn from_plan(batch: &EnvBatch) -> Result<Self> {
        let plan = &batch.plan;
        let n = plan.records.len();
        let mut a = RecordArrays {
            versions: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            actors: Vec::with_capacity(n),
            set_keys: Vec::with_capacity(n),
            deleted_keys: Vec::with_capacity(n),
            changes: Vec::with_capacity(n),
            snapshots: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            request_ids: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
        };
        for r in &plan.records {
            a.versions.push(r.version);
            a.created_at.push(r.created_at.0);
            a.actors.push(r.actor.clone());
            a.set_keys.push(to_json(&r.change.set)?);
            a.deleted_keys.push(to_json(&r.change.deleted)?);
            a.changes.push(batch.sealed_changes(r)?);
            a.snapshots.push(batch.sealed_snapshot(r)?);
            a.kinds.push(r.audit_kind);
            a.request_ids.push(r.request_id.clone());
            a.metadata.push(r.audit_metadata.to_string());
            a.events
                .push(NewEvent::env_version(r.version, &r.change).data.to_string());
        }
        Ok(a)
    }
}

/// Everything a batch writes, in one statement. All CTEs run to completion whether or not the
/// final SELECT reads them; each is a no-op when its arrays are empty, and the stack row is
/// left alone when there is no version record (a batch of no-ops that only completes
/// idempotency records). Pruning deletes only rows older than the statement (its snapshot),
/// never the rows inserted next to it.
const WRITE_BATCH: &str = "\
WITH r AS ( \
  SELECT * FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $22::text[]) \
    WITH ORDINALITY AS r(version, created_at, actor, set_keys, deleted_keys, changes, snapshot, \
                         kind, request_id, metadata, event, ord)), \
ver AS ( \
  INSERT INTO env_versions (stack_id, version, created_at, actor, set_keys, deleted_keys, changes, snapshot) \
  SELECT $1, version, created_at, actor, set_keys::jsonb, deleted_keys::jsonb, changes::jsonb, \
         snapshot::jsonb \
  FROM r), \
aud AS ( \
  INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
  SELECT created_at, $12, actor, kind, $13, request_id, metadata::jsonb FROM r ORDER BY ord), \
ev AS ( \
  INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) \
  SELECT $1, $13, 'env.version', event::jsonb, created_at FROM r ORDER BY ord), \
stk AS ( \
  UPDATE stacks SET env = $14::jsonb, env_version = $15, env_updated_at = $16, updated_at = $16 \
  WHERE id = $1 AND cardinality($2::bigint[]) > 0), \
idem AS ( \
  INSERT INTO idempotency_keys (scope, key, request_hash, state, status, body, created_at, expires_at) \
  SELECT scope, key, '', 'done', status, body, $16, $17 \
  FROM UNNEST($18::text[], $19::text[], $20::text[], $23::int[]) AS i(scope, key, body, status) \
  ON CONFLICT (scope, key) DO UPDATE SET state = 'done', status = EXCLUDED.status, body = EXCLUDED.body), \
prune AS ( \
  DELETE FROM env_versions WHERE stack_id = $1 AND version < $21) \
SELECT 1";

/// PostgreSQL's batch: everything in one statement (`WRITE_BATCH`).
struct Batch;

impl EnvBatchWriter<Postgres> for Batch {
    async fn write(
        &self,
        conn: &mut PgConnection,
        stack: StackId,
        batch: &EnvBatch,
        now: Millis,
        prune_below: Option<i64>,
    ) -> Result<()> {
        let plan = &batch.plan;
        let rows = RecordArrays::from_plan(batch)?;
        let done = &plan.completions;
        let scopes: Vec<&str> = done.iter().map(|c| c.scope.as_str()).collect();
        let keys: Vec<&str> = done.iter().map(|c| c.key.as_str()).collect();
        let bodies: Vec<&str> = done.iter().map(|c| c.body.as_str()).collect();
        let statuses: Vec<i32> = done.iter().map(|c| i32::from(c.status)).collect();
        sqlx::query(WRITE_BATCH)
            .bind(stack.0)
            .bind(&rows.versions)
            .bind(&rows.created_at)
            .bind(&rows.actors)
            .bind(&rows.set_keys)
            .bind(&rows.deleted_keys)
            .bind(&rows.changes)
            .bind(&rows.snapshots)
            .bind(&rows.kinds)
            .bind(&rows.request_ids)
            .bind(&rows.metadata)
            .bind(batch.team_id.map(|t| t.0))
            .bind(batch.slug.as_str())
            .bind(batch.sealed_map()?)
            .bind(plan.version)
            .bind(now.0)
            .bind(now.saturating_add_ms(millis(IDEMPOTENCY_TTL)).0)
            .bind(&scopes)
            .bind(&keys)
            .bind(&bodies)
            .bind(prune_below)
            .bind(&rows.events)
            .bind(&statuses)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl EnvStore for PgStore {
    async fn apply_env_writes(
        &self,
        stack: StackId,
        writes: &[EnvWrite],
    ) -> std::result::Result<Vec<EnvWriteResult>, EnvBatchError> {
        let keyring = self.keys.get()?;
        // Lock: the stack row, and nothing else that another transaction could hold before
        // it (the rows written after it hang off the stack or are idempotency records, last
        // in the global order). One transaction, one commit. The wait ends at the most
        // impatient write's deadline, time queued included.
        let deadline = batch_deadline(writes).unwrap_or_else(|| Instant::now() + self.lock_timeout);
        let tx = self.begin_until(deadline).await?;
        let keep = self.env_history;
        OPS.apply_env_writes(tx, stack, writes, keep, &Batch, keyring)
            .await?
    }

    async fn preview_env_write(
        &self,
        stack: StackId,
        write: EnvWrite,
    ) -> std::result::Result<EnvWriteResult, EnvBatchError> {
        let keyring = self.keys.get()?;
        let write = &write;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.preview_env_write(&mut c, stack, write, keyring).await
        };
        self.read(read).await?
    }

    async fn get_env(
        &self,
        stack: StackId,
        reveal: Option<AuditCtx>,
    ) -> std::result::Result<Option<EnvOutcome>, StoreError> {
        let keyring = self.keys.get()?;
        let Some(ctx) = reveal else {
            let read = |mut c: PoolConnection<Postgres>| async move {
                OPS.env_head(&mut c, stack, false, keyring).await
            };
            return Ok(self.read(read).await?.map(|(h, _)| h.outcome()));
        };
        Ok(OPS
            .reveal_env(self.begin().await?, stack, ctx, keyring)
            .await?)
    }

    async fn list_env_versions(
        &self,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> std::result::Result<Page<EnvVersionInfo>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_env_versions(&mut c, stack, limit, cursor).await
        };
        Ok(self.read(read).await?)
    }
}
