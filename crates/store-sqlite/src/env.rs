//! Stack env maps: the batched write path (the benchmark's hot path), dry runs, reads with an
//! audited reveal, and the version history with its pruning.
//!
//! The semantics live in `stackyard_core::envlog`; this module only reads its inputs under the
//! write lock and writes its plan. One batch costs a constant number of statements: `BEGIN
//! IMMEDIATE`, the stack read, one `INSERT … SELECT FROM json_each` for all version rows, one
//! for all audit rows, one for all `env.version` events, the stack update, the idempotency completions, an occasional prune, and
//! one `COMMIT` (the only fsync). Every statement is cached on the single writer connection.

use crate::audit::AuditRow;
use crate::error::{col, db_err, json_col, parsed};
use crate::{SqliteStore, audit, idempotency};
use serde::Serialize;
use serde_json::json;
use sqlx::SqliteConnection;
use stackyard_core::env::EnvMap;
use stackyard_core::envlog::{self, ChangeValues, VersionRecord};
use stackyard_core::ids::StackSlug;
use stackyard_core::model::*;
use stackyard_core::store::{
    EnvBatchError, EnvResponseRenderer, EnvWrite, EnvWriteError, StoreError, parse_id_cursor,
};
use stackyard_core::time::Millis;
use std::collections::{BTreeMap, BTreeSet};

/// The stack row as a batch sees it under the lock.
struct EnvHead {
    env: EnvMap,
    version: i64,
    updated_at: Millis,
    team_id: Option<TeamId>,
    slug: StackSlug,
    deleting: bool,
}

async fn env_head(
    conn: &mut SqliteConnection,
    stack: StackId,
) -> Result<Option<EnvHead>, StoreError> {
    let row = sqlx::query(
        "SELECT status, env, env_version, env_updated_at, team_id, slug FROM stacks WHERE id = $1",
    )
    .bind(stack.0)
    .fetch_optional(conn)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let env: String = col(&row, "env")?;
    let status: String = col(&row, "status")?;
    let slug: String = col(&row, "slug")?;
    let team_id: Option<i64> = col(&row, "team_id")?;
    Ok(Some(EnvHead {
        // serde_json's message could quote a value: keep only that it failed.
        env: EnvMap::from_json(&env)
            .map_err(|_| StoreError::Corrupt("the stored env map is not valid".into()))?,
        version: col(&row, "env_version")?,
        updated_at: Millis(col(&row, "env_updated_at")?),
        team_id: team_id.map(TeamId),
        slug: parsed(StackSlug::parse(&slug).ok(), "stack slug")?,
        deleting: status == StackStatus::Deleting.as_str(),
    }))
}

/// The stack under the lock, or why the whole batch is refused.
async fn writable_head(
    conn: &mut SqliteConnection,
    stack: StackId,
) -> Result<EnvHead, EnvBatchError> {
    match env_head(conn, stack).await? {
        None => Err(EnvBatchError::NotFound),
        Some(h) if h.deleting => Err(EnvBatchError::Deleting),
        Some(h) => Ok(h),
    }
}

/// Rebuilds each wanted version's map from the newest snapshot at or below it plus the changes
/// after that snapshot. Versions that no longer exist (pruned) are left out, which the planner
/// reports as `VersionNotFound`.
async fn rebuild_versions(
    conn: &mut SqliteConnection,
    stack: StackId,
    wanted: &BTreeSet<i64>,
) -> Result<BTreeMap<i64, EnvMap>, StoreError> {
    let mut out = BTreeMap::new();
    for &version in wanted {
        let snap = sqlx::query(
            "SELECT version, snapshot FROM env_versions \
             WHERE stack_id = $1 AND version <= $2 AND snapshot IS NOT NULL ORDER BY version DESC LIMIT 1",
        )
        .bind(stack.0)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        // Pruning removes whole prefixes ending just below a snapshot, so no snapshot at or
        // below the version means the version itself is gone.
        let Some(snap) = snap else { continue };
        let snap_version: i64 = col(&snap, "version")?;
        let base: BTreeMap<String, String> = json_col(&snap, "snapshot")?;
        let rows = sqlx::query(
            "SELECT changes FROM env_versions WHERE stack_id = $1 AND version > $2 AND version <= $3 ORDER BY version",
        )
        .bind(stack.0)
        .bind(snap_version)
        .bind(version)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
        if i64::try_from(rows.len()).ok() != Some(version - snap_version) {
            return Err(StoreError::Corrupt("the env history has a gap".into()));
        }
        let changes = rows
            .iter()
            .map(|r| json_col::<ChangeValues>(r, "changes"))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(version, envlog::replay(EnvMap::from_map(base), changes));
    }
    Ok(out)
}

/// One `env_versions` row as an element of the JSON array the batch insert reads.
#[derive(Serialize)]
struct VersionRow<'a> {
    version: i64,
    created_at: i64,
    actor: &'a str,
    set: &'a [String],
    deleted: &'a [String],
    changes: &'a ChangeValues,
    snapshot: Option<&'a EnvMap>,
}

impl<'a> From<&'a VersionRecord> for VersionRow<'a> {
    fn from(r: &'a VersionRecord) -> Self {
        VersionRow {
            version: r.version,
            created_at: r.created_at.0,
            actor: &r.actor,
            set: &r.change.set,
            deleted: &r.change.deleted,
            changes: &r.values,
            snapshot: r.snapshot.as_ref(),
        }
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
            data: json!({ "version": r.version, "set": r.change.set, "deleted": r.change.deleted }),
        }
    }
}

fn encode<T: Serialize>(rows: &[T]) -> Result<String, StoreError> {
    serde_json::to_string(rows)
        .map_err(|_| StoreError::Corrupt("an env record could not be encoded".into()))
}

impl SqliteStore {
    pub(crate) async fn apply_env_writes_impl(
        &self,
        stack: StackId,
        writes: Vec<EnvWrite>,
        render: EnvResponseRenderer,
    ) -> Result<Vec<Result<EnvOutcome, EnvWriteError>>, EnvBatchError> {
        let Some(now) = writes.iter().map(|w| w.ctx.now).max() else {
            return Ok(Vec::new());
        };
        // Write lock before reading the map: the deleting check, the merge, the size rule, the
        // version bump, the history, the audit rows and the idempotency records all decide and
        // commit under it, in one transaction and one fsync.
        let mut tx = self.write_tx().await?;
        let head = writable_head(&mut tx, stack).await?;
        let wanted = envlog::rollback_targets(&writes, head.version);
        let targets = rebuild_versions(&mut tx, stack, &wanted).await?;
        let plan = envlog::plan_batch(head.env, head.version, &writes, &targets, now);

        let completions: Vec<(&str, &str, &EnvOutcome)> = writes
            .iter()
            .zip(&plan.outcomes)
            .filter_map(|(w, o)| match (&w.idempotency, o) {
                (Some(p), Ok(o)) => Some((p.scope.as_str(), p.key.as_str(), o)),
                _ => None,
            })
            .collect();
        if plan.records.is_empty() && completions.is_empty() {
            tx.rollback().await.map_err(db_err)?;
            return Ok(plan.outcomes);
        }

        if !plan.records.is_empty() {
            let versions: Vec<VersionRow<'_>> = plan.records.iter().map(VersionRow::from).collect();
            let audits: Vec<AuditJson<'_>> = plan.records.iter().map(AuditJson::from).collect();
            // All version rows in one statement; `->>` yields SQL NULL for a JSON null and the
            // JSON text for arrays and objects.
            sqlx::query(
                "INSERT INTO env_versions (stack_id, version, created_at, actor, set_keys, deleted_keys, changes, snapshot) \
                 SELECT $1, r.value->>'version', r.value->>'created_at', r.value->>'actor', r.value->>'set', \
                        r.value->>'deleted', r.value->>'changes', r.value->>'snapshot' \
                 FROM json_each($2) AS r ORDER BY r.key",
            )
            .bind(stack.0)
            .bind(encode(&versions)?)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // All audit rows in one statement, in version order (ids ascend with it).
            sqlx::query(
                "INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
                 SELECT r.value->>'at', $1, r.value->>'actor', r.value->>'kind', $2, r.value->>'request_id', \
                        r.value->>'metadata' \
                 FROM json_each($3) AS r ORDER BY r.key",
            )
            .bind(head.team_id.map(|t| t.0))
            .bind(head.slug.as_str())
            .bind(encode(&audits)?)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // All events in one statement, in version order (ids ascend with it).
            let events: Vec<EventJson> = plan.records.iter().map(EventJson::from).collect();
            sqlx::query(
                "INSERT INTO stack_events (stack_id, stack_slug, kind, data, at) \
                 SELECT $1, $2, 'env.version', r.value->>'data', r.value->>'at' \
                 FROM json_each($3) AS r ORDER BY r.key",
            )
            .bind(stack.0)
            .bind(head.slug.as_str())
            .bind(encode(&events)?)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            sqlx::query(
                "UPDATE stacks SET env = $2, env_version = $3, env_updated_at = $4, updated_at = $4 WHERE id = $1",
            )
            .bind(stack.0)
            .bind(plan.map.to_json())
            .bind(plan.version)
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for (scope, key, outcome) in completions {
            idempotency::complete(&mut tx, scope, key, 200, &render(&head.slug, outcome), now)
                .await?;
        }
        // Pruning only when a snapshot was written: the floor only moves at snapshots.
        if plan.wrote_snapshot()
            && let Some(floor) = envlog::prune_floor(plan.version, self.env_history)
        {
            sqlx::query("DELETE FROM env_versions WHERE stack_id = $1 AND version < $2")
                .bind(stack.0)
                .bind(floor)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(plan.outcomes)
    }

    pub(crate) async fn preview_env_write_impl(
        &self,
        stack: StackId,
        write: EnvWrite,
    ) -> Result<Result<EnvOutcome, EnvWriteError>, EnvBatchError> {
        // Read-only: one consistent snapshot is enough, nothing is written.
        let mut tx = self.read_tx().await?;
        let head = writable_head(&mut tx, stack).await?;
        let writes = [write];
        let wanted = envlog::rollback_targets(&writes, head.version);
        let targets = rebuild_versions(&mut tx, stack, &wanted).await?;
        tx.commit().await.map_err(db_err)?;
        let now = writes[0].ctx.now;
        let plan = envlog::plan_batch(head.env, head.version, &writes, &targets, now);
        plan.outcomes.into_iter().next().ok_or_else(|| {
            EnvBatchError::Store(StoreError::Corrupt(
                "the planner returned no outcome".into(),
            ))
        })
    }

    pub(crate) async fn get_env_impl(
        &self,
        stack: StackId,
        reveal: Option<AuditCtx>,
    ) -> Result<Option<EnvOutcome>, StoreError> {
        let outcome = |h: EnvHead| EnvOutcome {
            version: h.version,
            changed: Default::default(),
            env: h.env,
            updated_at: h.updated_at,
        };
        let Some(ctx) = reveal else {
            let mut conn = self.reader.acquire().await.map_err(db_err)?;
            return Ok(env_head(&mut conn, stack).await?.map(outcome));
        };
        // Write lock: the values are handed out only if the reveal's audit row commits.
        let mut tx = self.write_tx().await?;
        let Some(head) = env_head(&mut tx, stack).await? else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(None);
        };
        audit::insert(
            &mut tx,
            AuditRow {
                at: ctx.now,
                team_id: head.team_id,
                actor: &ctx.actor.0,
                kind: envlog::AUDIT_ENV_REVEALED,
                stack_slug: Some(head.slug.as_str()),
                request_id: ctx.request_id.as_deref(),
                metadata: json!({ "version": head.version }),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(outcome(head)))
    }

    pub(crate) async fn list_env_versions_impl(
        &self,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<EnvVersionInfo>, StoreError> {
        let limit = limit.max(1);
        let before = parse_id_cursor(cursor);
        // Read-only: one snapshot so that `total` and the page agree.
        let mut tx = self.read_tx().await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM env_versions WHERE stack_id = $1 AND version >= 1",
        )
        .bind(stack.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let rows = sqlx::query(
            "SELECT version, created_at, actor, set_keys, deleted_keys FROM env_versions \
             WHERE stack_id = $1 AND version >= 1 AND version < $2 ORDER BY version DESC LIMIT $3",
        )
        .bind(stack.0)
        .bind(before)
        .bind(limit.saturating_add(1))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(EnvVersionInfo {
                version: col(row, "version")?,
                created_at: Millis(col(row, "created_at")?),
                actor: col(row, "actor")?,
                set: json_col(row, "set_keys")?,
                deleted: json_col(row, "deleted_keys")?,
            });
        }
        Ok(Page::from_overfetch(items, limit, total, |v| {
            v.version.to_string()
        }))
    }
}
