//! Stack env maps: the batched write path (the benchmark's hot path), dry runs, reads with an
//! audited reveal, and the version history with its pruning.
//!
//! The semantics live in `stackyard_core::envlog`; this module only reads its inputs under the
//! write lock and writes its plan. One batch costs a constant number of statements: `BEGIN
//! IMMEDIATE`, the stack read, one `INSERT … SELECT FROM json_each` for all version rows, one
//! for all audit rows, one for all `env.version` events, the stack update, the idempotency
//! completions, an occasional prune, and one `COMMIT` (the only fsync). Every statement is cached on the single writer connection.

use crate::SqliteStore;
use crate::sql::OPS;
use serde::Serialize;
use sqlx::Sqlite;
use sqlx::SqliteConnection;
use stackyard_core::envlog::VersionRecord;
use stackyard_core::model::*;
use stackyard_core::store::{
    EnvBatchError, EnvStore, EnvWrite, EnvWriteResult, StoreError, batch_deadline,
};
use stackyard_core::time::Millis;
use stackyard_store_sql::error::{Result, to_json};
use stackyard_store_sql::{EnvBatch, EnvBatchWriter};
use std::time::Instant;

/// One `env_versions` row as an element of the JSON array the batch insert reads.
#[derive(Serialize)]
struct VersionRow<'a> {
    version: i64,
    created_at: i64,
    actor: &'a str,
    set: &'a [String],
    deleted: &'a [String],
    /// As stored (`EnvBatch::sealed_changes`); the insert keeps it as text.
    changes: String,
    snapshot: Option<String>,
}

impl<'a> VersionRow<'a> {
    fn new(batch: &EnvBatch, r: &'a VersionRecord) -> Result<Self> {
        Ok(VersionRow {
            version: r.version,
            created_at: r.created_at.0,
            actor: &r.actor,
            set: &r.change.set,
            deleted: &r.change.deleted,
            changes: batch.sealed_changes(r)?,
            snapshot: batch.sealed_snapshot(r)?,
        })
    }
}

/// One audit row of a version, for the batch insert.
#[derive(Serialize)]
struct AuditJson<'a> {
    at: i64,
    actor: &'a str,
    kind: &'a str,
    request_id: Option<&'a str>,
    metadata: &'a serde_json::Value,
}

impl<'a> From<&'a VersionRecord> for AuditJson<'a> {
    fn from(r: &'a VersionRecord) -> Self {
        AuditJson {
            at: r.created_at.0,
            actor: &r.actor,
            kind: r.audit_kind,
            request_id: r.request_id.as_deref(),
            metadata: &r.audit_metadata,
        }
    }
}

/// One `env.version` event of a version, for the batch insert: key names only, never values.
#[derive(Serialize)]
struct EventJson {
    at: i64,
    data: serde_json::Value,
}

impl From<&VersionRecord> for EventJson {
    fn from(r: &VersionRecord) -> Self {
        EventJson {
            at: r.created_at.0,
            data: NewEvent::env_version(r.version, &r.change).data,
        }
    }
}

/// SQLite's batch: the version rows, audit rows and `env.version` events in one statement
/// each (`INSERT … SELECT FROM json_each`, in version order so ids ascend with it), the stack
/// update, one upsert per idempotency completion, the prune.
struct Batch;

impl EnvBatchWriter<Sqlite> for Batch {
    async fn write(
        &self,
        conn: &mut SqliteConnection,
        stack: StackId,
        batch: &EnvBatch,
        now: Millis,
        prune_below: Option<i64>,
    ) -> Result<()> {
        let plan = &batch.plan;
        if !plan.records.is_empty() {
            write_versions(conn, stack, batch, now).await?;
        }
        for record in &plan.completions {
            OPS.complete_idempotency(conn, record, now).await?;
        }
        if let Some(floor) = prune_below {
            sqlx::query("DELETE FROM env_versions WHERE stack_id = $1 AND version < $2")
                .bind(stack.0)
                .bind(floor)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// The batch's version rows, audit rows and `env.version` events (one statement each, in
/// version order, so ids ascend with it) and the stack's new map and version.
async fn write_versions(
    conn: &mut SqliteConnection,
    stack: StackId,
    batch: &EnvBatch,
    now: Millis,
) -> Result<()> {
    let (plan, team_id, slug) = (&batch.plan, batch.team_id, batch.slug.as_str());
    let versions: Vec<VersionRow<'_>> = plan
        .records
        .iter()
        .map(|r| VersionRow::new(batch, r))
        .collect::<Result<_>>()?;
    let audits: Vec<AuditJson<'_>> = plan.records.iter().map(AuditJson::from).collect();
    let events: Vec<EventJson> = plan.records.iter().map(EventJson::from).collect();
    // `->>` yields SQL NULL for a JSON null and the JSON text for arrays and objects.
    sqlx::query(
        "INSERT INTO env_versions (stack_id, version, created_at, actor, set_keys, deleted_keys, changes, snapshot) \
         SELECT $1, r.value->>'version', r.value->>'created_at', r.value->>'actor', r.value->>'set', \
                r.value->>'deleted', r.value->>'changes', r.value->>'snapshot' \
         FROM json_each($2) AS r ORDER BY r.key",
    )
    .bind(stack.0)
    .bind(to_json(&versions)?)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
         SELECT r.value->>'at', $1, r.value->>'actor', r.value->>'kind', $2, r.value->>'request_id', \
                r.value->>'metadata' \
         FROM json_each($3) AS r ORDER BY r.key",
    )
    .bind(team_id.map(|t| t.0))
    .bind(slug)
    .bind(to_json(&audits)?)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) \
         SELECT $1, $2, 'env.version', r.value->>'data', r.value->>'at' \
         FROM json_each($3) AS r ORDER BY r.key",
    )
    .bind(stack.0)
    .bind(slug)
    .bind(to_json(&events)?)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE stacks SET env = $2, env_version = $3, env_updated_at = $4, updated_at = $4 WHERE id = $1",
    )
    .bind(stack.0)
    .bind(batch.sealed_map()?)
    .bind(plan.version)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl EnvStore for SqliteStore {
    async fn apply_env_writes(
        &self,
        stack: StackId,
        writes: &[EnvWrite],
    ) -> std::result::Result<Vec<EnvWriteResult>, EnvBatchError> {
        let keyring = self.keys.get()?;
        // Write lock (BEGIN IMMEDIATE) before reading the map: one transaction, one fsync.
        // The wait ends at the most impatient write's deadline, time queued included.
        let deadline = batch_deadline(writes).unwrap_or_else(|| Instant::now() + self.lock_timeout);
        let tx = self.write_tx_until(deadline).await?;
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
        // Read-only: one consistent snapshot, nothing is written.
        let mut tx = self.read_tx().await?;
        OPS.preview_env_write(&mut tx, stack, &write, keyring)
            .await?
    }

    async fn get_env(
        &self,
        stack: StackId,
        reveal: Option<AuditCtx>,
    ) -> std::result::Result<Option<EnvOutcome>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(match reveal {
            None => OPS
                .env_head(&mut *self.reader().await?, stack, false, keyring)
                .await?
                .map(|(h, _)| h.outcome()),
            Some(ctx) => {
                OPS.reveal_env(self.write_tx().await?, stack, ctx, keyring)
                    .await?
            }
        })
    }

    async fn list_env_versions(
        &self,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> std::result::Result<Page<EnvVersionInfo>, StoreError> {
        let mut conn = self.reader().await?;
        Ok(OPS
            .list_env_versions(&mut conn, stack, limit, cursor)
            .await?)
    }
}
