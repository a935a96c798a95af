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

use crate::audit::{self, AuditRow};
use crate::error::{Result, col, corrupt, json_col, parsed, to_json_text};
use crate::{PgStore, millis};
use serde_json::json;
use sqlx::PgConnection;
use stackyard_core::env::EnvMap;
use stackyard_core::envlog::{self, BatchPlan, ChangeValues};
use stackyard_core::ids::StackSlug;
use stackyard_core::model::*;
use stackyard_core::store::{
    EnvBatchError, EnvResponseRenderer, EnvWrite, EnvWriteError, IDEMPOTENCY_TTL, parse_id_cursor,
};
use stackyard_core::time::Millis;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The stack row as a batch sees it.
struct EnvHead {
    env: EnvMap,
    version: i64,
    updated_at: Millis,
    team_id: Option<TeamId>,
    slug: StackSlug,
    deleting: bool,
}

fn head_from_row(row: &sqlx::postgres::PgRow) -> Result<EnvHead> {
    let env: String = col(row, "env")?;
    let status: String = col(row, "status")?;
    let slug: String = col(row, "slug")?;
    let team_id: Option<i64> = col(row, "team_id")?;
    Ok(EnvHead {
        // serde_json's message could quote a value: keep only that it failed.
        env: EnvMap::from_json(&env).map_err(|_| corrupt("the stored env map is not valid"))?,
        version: col(row, "env_version")?,
        updated_at: Millis(col(row, "env_updated_at")?),
        team_id: team_id.map(TeamId),
        slug: parsed(StackSlug::parse(&slug).ok(), "stack slug")?,
        deleting: status == StackStatus::Deleting.as_str(),
    })
}

/// Reads (and with `lock`, locks) the stack row.
async fn env_head(conn: &mut PgConnection, stack: StackId, lock: bool) -> Result<Option<EnvHead>> {
    let sql = if lock {
        "SELECT status, env::text AS env, env_version, env_updated_at, team_id, slug \
         FROM stacks WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT status, env::text AS env, env_version, env_updated_at, team_id, slug \
         FROM stacks WHERE id = $1"
    };
    let row = sqlx::query(sql).bind(stack.0).fetch_optional(conn).await?;
    row.as_ref().map(head_from_row).transpose()
}

/// Rebuilds each wanted version's map from the newest snapshot at or below it plus the changes
/// after that snapshot, in one statement for all targets. Versions that no longer exist
/// (pruned) are left out, which the planner reports as `VersionNotFound`.
async fn rebuild_versions(
    conn: &mut PgConnection,
    stack: StackId,
    wanted: &BTreeSet<i64>,
) -> Result<BTreeMap<i64, EnvMap>> {
    let mut out = BTreeMap::new();
    let Some(&highest) = wanted.last() else {
        return Ok(out);
    };
    let targets: Vec<i64> = wanted.iter().copied().collect();
    // Every row from the oldest snapshot any target needs up to the highest target.
    let rows = sqlx::query(
        "SELECT version, snapshot::text AS snapshot, changes::text AS changes FROM env_versions \
         WHERE stack_id = $1 AND version <= $2 AND version >= ( \
           SELECT MIN(( \
             SELECT MAX(e.version) FROM env_versions e \
             WHERE e.stack_id = $1 AND e.version <= t AND e.snapshot IS NOT NULL)) \
           FROM UNNEST($3::bigint[]) AS t) \
         ORDER BY version",
    )
    .bind(stack.0)
    .bind(highest)
    .bind(&targets)
    .fetch_all(&mut *conn)
    .await?;

    let mut history: Vec<(i64, Option<String>, String)> = Vec::with_capacity(rows.len());
    for row in &rows {
        history.push((
            col(row, "version")?,
            col(row, "snapshot")?,
            col(row, "changes")?,
        ));
    }
    for &target in wanted {
        // The newest snapshot at or below the target. Pruning removes whole prefixes ending
        // just below a snapshot, so no snapshot means the version itself is gone.
        let Some(start) = history
            .iter()
            .rposition(|(v, snap, _)| *v <= target && snap.is_some())
        else {
            continue;
        };
        let (snap_version, snapshot, _) = &history[start];
        let snapshot = snapshot.as_deref().unwrap_or("{}");
        let base: BTreeMap<String, String> =
            serde_json::from_str(snapshot).map_err(|_| corrupt("an env snapshot is not valid"))?;
        let mut changes = Vec::new();
        let mut expected = snap_version + 1;
        for (v, _, c) in history[start + 1..]
            .iter()
            .take_while(|(v, _, _)| *v <= target)
        {
            if *v != expected {
                return Err(corrupt("the env history has a gap"));
            }
            expected += 1;
            changes.push(
                serde_json::from_str::<ChangeValues>(c)
                    .map_err(|_| corrupt("an env change is not valid"))?,
            );
        }
        if expected != target + 1 {
            // The target itself is missing above its snapshot.
            return Err(corrupt("the env history has a gap"));
        }
        out.insert(target, envlog::replay(EnvMap::from_map(base), changes));
    }
    Ok(out)
}

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
}

impl RecordArrays {
    fn from_plan(plan: &BatchPlan) -> Result<Self> {
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
        };
        for r in &plan.records {
            a.versions.push(r.version);
            a.created_at.push(r.created_at.0);
            a.actors.push(r.actor.clone());
            a.set_keys.push(to_json_text(&r.change.set)?);
            a.deleted_keys.push(to_json_text(&r.change.deleted)?);
            a.changes.push(to_json_text(&r.values)?);
            a.snapshots.push(r.snapshot.as_ref().map(EnvMap::to_json));
            a.kinds.push(r.audit_kind);
            a.request_ids.push(r.request_id.clone());
            a.metadata.push(r.audit_metadata.to_string());
        }
        Ok(a)
    }
}

/// The idempotency records a batch completes, as parallel arrays. A key that appears twice
/// keeps its last completion, as applying the writes one by one would.
#[derive(Default)]
struct Completions {
    scopes: Vec<String>,
    keys: Vec<String>,
    bodies: Vec<String>,
}

fn completions(
    writes: &[EnvWrite],
    plan: &BatchPlan,
    slug: &StackSlug,
    render: EnvResponseRenderer,
) -> Completions {
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut c = Completions::default();
    for (w, o) in writes.iter().zip(&plan.outcomes) {
        let (Some(p), Ok(outcome)) = (&w.idempotency, o) else {
            continue;
        };
        let body = render(slug, outcome);
        match index.get(&(p.scope.as_str(), p.key.as_str())) {
            Some(&i) => c.bodies[i] = body,
            None => {
                index.insert((p.scope.as_str(), p.key.as_str()), c.scopes.len());
                c.scopes.push(p.scope.clone());
                c.keys.push(p.key.clone());
                c.bodies.push(body);
            }
        }
    }
    c
}

/// Everything a batch writes, in one statement. All CTEs run to completion whether or not the
/// final SELECT reads them; each is a no-op when its arrays are empty, and the stack row is
/// left alone when there is no version record (a batch of no-ops that only completes
/// idempotency records). Pruning deletes only rows older than the statement (its snapshot),
/// never the rows inserted next to it.
const WRITE_BATCH: &str = "\
WITH r AS ( \
  SELECT * FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) \
    WITH ORDINALITY AS r(version, created_at, actor, set_keys, deleted_keys, changes, snapshot, \
                         kind, request_id, metadata, ord)), \
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
  SELECT $1, $13, 'env.version', \
         jsonb_build_object('version', version, 'set', set_keys::jsonb, 'deleted', deleted_keys::jsonb), \
         created_at \
  FROM r ORDER BY ord), \
stk AS ( \
  UPDATE stacks SET env = $14::jsonb, env_version = $15, env_updated_at = $16, updated_at = $16 \
  WHERE id = $1 AND cardinality($2::bigint[]) > 0), \
idem AS ( \
  INSERT INTO idempotency_keys (scope, key, request_hash, state, status, body, created_at, expires_at) \
  SELECT scope, key, '', 'done', 200, body, $16, $17 \
  FROM UNNEST($18::text[], $19::text[], $20::text[]) AS i(scope, key, body) \
  ON CONFLICT (scope, key) DO UPDATE SET state = 'done', status = EXCLUDED.status, body = EXCLUDED.body), \
prune AS ( \
  DELETE FROM env_versions WHERE stack_id = $1 AND version < $21) \
SELECT 1";

impl PgStore {
    pub(crate) async fn apply_env_writes_impl(
        &self,
        stack: StackId,
        writes: Vec<EnvWrite>,
        render: EnvResponseRenderer,
    ) -> std::result::Result<Vec<std::result::Result<EnvOutcome, EnvWriteError>>, EnvBatchError>
    {
        let Some(now) = writes.iter().map(|w| w.ctx.now).max() else {
            return Ok(Vec::new());
        };
        // Lock: the stack row, and nothing else that another transaction could hold before
        // it (the rows written after it hang off the stack or are idempotency records, last
        // in the global order). The deleting check, the merge, the size rule, the version
        // bump, the history, the audit rows and the idempotency records all decide and commit
        // under it, in one transaction and one commit.
        let mut tx = self.begin().await?;
        let head = match env_head(&mut tx, stack, true).await? {
            None => return Err(EnvBatchError::NotFound),
            Some(h) if h.deleting => return Err(EnvBatchError::Deleting),
            Some(h) => h,
        };
        let wanted = envlog::rollback_targets(&writes, head.version);
        let targets = rebuild_versions(&mut tx, stack, &wanted).await?;
        let plan = envlog::plan_batch(head.env, head.version, &writes, &targets, now);

        let done = completions(&writes, &plan, &head.slug, render);
        if plan.records.is_empty() && done.scopes.is_empty() {
            // Nothing to write: dropping the transaction rolls it back (in the background,
            // when the connection goes back to the pool).
            drop(tx);
            return Ok(plan.outcomes);
        }
        let rows = RecordArrays::from_plan(&plan)?;
        let floor = if plan.wrote_snapshot() {
            envlog::prune_floor(plan.version, self.env_history)
        } else {
            None
        };
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
            .bind(head.team_id.map(|t| t.0))
            .bind(head.slug.as_str())
            .bind(plan.map.to_json())
            .bind(plan.version)
            .bind(now.0)
            .bind(now.saturating_add_ms(millis(IDEMPOTENCY_TTL)).0)
            .bind(&done.scopes)
            .bind(&done.keys)
            .bind(&done.bodies)
            .bind(floor)
            .execute(&mut *tx)
            .await
            .map_err(crate::error::Error::from)?;
        tx.commit().await.map_err(crate::error::Error::from)?;
        Ok(plan.outcomes)
    }

    pub(crate) async fn preview_env_write_impl(
        &self,
        stack: StackId,
        write: EnvWrite,
    ) -> std::result::Result<std::result::Result<EnvOutcome, EnvWriteError>, EnvBatchError> {
        let writes = [write];
        // No lock, nothing written: the head and the history a rollback needs. History rows
        // at or below the head's version never change (pruning only removes them, which the
        // planner then reports as not found), so two statements see a consistent picture.
        let writes_ref = &writes;
        let found = self
            .read(|mut c| async move {
                let Some(head) = env_head(&mut c, stack, false).await? else {
                    return Ok(None);
                };
                if head.deleting {
                    return Ok(Some(Err(EnvBatchError::Deleting)));
                }
                let wanted = envlog::rollback_targets(writes_ref, head.version);
                let targets = rebuild_versions(&mut c, stack, &wanted).await?;
                Ok(Some(Ok((head, targets))))
            })
            .await?;
        let (head, targets) = match found {
            None => return Err(EnvBatchError::NotFound),
            Some(r) => r?,
        };
        let now = writes[0].ctx.now;
        let plan = envlog::plan_batch(head.env, head.version, &writes, &targets, now);
        plan.outcomes
            .into_iter()
            .next()
            .ok_or_else(|| corrupt("the planner returned no outcome").into())
    }

    pub(crate) async fn get_env_impl(
        &self,
        stack: StackId,
        reveal: Option<AuditCtx>,
    ) -> Result<Option<EnvOutcome>> {
        let outcome = |h: EnvHead| EnvOutcome {
            version: h.version,
            changed: Default::default(),
            env: h.env,
            updated_at: h.updated_at,
        };
        let Some(ctx) = reveal else {
            let head = self
                .read(|mut c| async move { env_head(&mut c, stack, false).await })
                .await?;
            return Ok(head.map(outcome));
        };
        // No lock: the read and its audit row are one transaction, and the values are handed
        // out only once that transaction has committed.
        let mut tx = self.begin().await?;
        let Some(head) = env_head(&mut tx, stack, false).await? else {
            tx.rollback().await?;
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
        tx.commit().await?;
        Ok(Some(outcome(head)))
    }

    pub(crate) async fn list_env_versions_impl(
        &self,
        stack: StackId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<EnvVersionInfo>> {
        let limit = limit.max(1);
        let before = parse_id_cursor(cursor);
        // One statement, so the page and `total` agree; the extra row tells whether another
        // page exists.
        let (rows, total) = self
            .read(|mut c| async move {
                let rows = sqlx::query(
                    "SELECT version, created_at, actor, set_keys::text AS set_keys, \
                       deleted_keys::text AS deleted_keys, \
                       (SELECT COUNT(*) FROM env_versions WHERE stack_id = $1 AND version >= 1) AS total \
                     FROM env_versions \
                     WHERE stack_id = $1 AND version >= 1 AND version < $2 \
                     ORDER BY version DESC LIMIT $3",
                )
                .bind(stack.0)
                .bind(before)
                .bind(limit.saturating_add(1))
                .fetch_all(&mut *c)
                .await?;
                let total: i64 = match rows.first() {
                    Some(r) => col(r, "total")?,
                    None => {
                        sqlx::query_scalar(
                            "SELECT COUNT(*) FROM env_versions WHERE stack_id = $1 AND version >= 1",
                        )
                        .bind(stack.0)
                        .fetch_one(&mut *c)
                        .await?
                    }
                };
                Ok((rows, total))
            })
            .await?;
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
