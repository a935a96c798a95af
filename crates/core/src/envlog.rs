//! The store-independent half of an env write batch: given the locked map and version, decide
//! each write's outcome and the version rows and audit rows to insert. The stores only read the
//! inputs and write the plan, so SQLite and PostgreSQL cannot disagree on the semantics.

use crate::env::{EnvChange, EnvMap, EnvPatch};
use crate::model::EnvOutcome;
use crate::store::{EnvOp, EnvWrite, EnvWriteError, IdempotencyRecord};
use crate::time::Millis;
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// A full copy of the map is stored every this many versions (and at version 0); rollback
/// replays at most this many changes on top of the nearest snapshot.
pub const SNAPSHOT_EVERY: i64 = 100;

/// Audit kinds written by env writes.
pub const AUDIT_ENV_UPDATED: &str = "stack.env.updated";
pub const AUDIT_ENV_ROLLED_BACK: &str = "stack.env.rolled_back";
pub const AUDIT_ENV_REVEALED: &str = "stack.env.revealed";

/// One change as stored in a version row: `{"K": "v"}` for a set, `{"K": null}` for a delete.
pub type ChangeValues = BTreeMap<String, Option<String>>;

/// A version row to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: i64,
    pub created_at: Millis,
    pub actor: String,
    pub request_id: Option<String>,
    pub change: EnvChange,
    pub values: ChangeValues,
    /// The whole map after this version, when `version % SNAPSHOT_EVERY == 0`.
    pub snapshot: Option<EnvMap>,
    pub audit_kind: &'static str,
    /// Audit metadata: counts and key names only, never values.
    pub audit_metadata: serde_json::Value,
    /// Index of the write (in the batch) that produced it.
    pub write_index: usize,
}

/// What a batch does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    pub outcomes: Vec<Result<EnvOutcome, EnvWriteError>>,
    pub records: Vec<VersionRecord>,
    /// The map and version after the batch (equal to the base when nothing changed).
    pub map: EnvMap,
    pub version: i64,
    /// The idempotency records the batch completes: one per write that carried a key and was
    /// not refused (a no-op write too: its answer is replayable). A key sent twice in one batch
    /// keeps its last answer, as applying the writes one by one would.
    pub completions: Vec<IdempotencyRecord>,
}

impl BatchPlan {
    pub fn wrote_snapshot(&self) -> bool {
        self.records.iter().any(|r| r.snapshot.is_some())
    }
}

/// Versions below or at `base_version` that the batch's rollbacks need reconstructed.
pub fn rollback_targets(writes: &[EnvWrite], base_version: i64) -> BTreeSet<i64> {
    writes
        .iter()
        .filter_map(|w| match w.op {
            EnvOp::Rollback { to_version } if to_version >= 0 && to_version <= base_version => {
                Some(to_version)
            }
            _ => None,
        })
        .collect()
}

/// Plans a batch. `targets` holds the reconstructed maps of `rollback_targets` that still
/// exist; a rollback to a version missing there (pruned, unknown) is `VersionNotFound`. A
/// rollback to a version created earlier in this same batch is honoured.
pub fn plan_batch(
    base: EnvMap,
    base_version: i64,
    writes: &[EnvWrite],
    targets: &BTreeMap<i64, EnvMap>,
    now: Millis,
) -> BatchPlan {
    // Versions produced inside this batch that a later rollback in it refers to.
    let wanted_later: BTreeSet<i64> = writes
        .iter()
        .filter_map(|w| match w.op {
            EnvOp::Rollback { to_version } if to_version > base_version => Some(to_version),
            _ => None,
        })
        .collect();
    let mut produced: BTreeMap<i64, EnvMap> = BTreeMap::new();
    let mut map = base;
    let mut version = base_version;
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut records = Vec::new();

    for (i, w) in writes.iter().enumerate() {
        if w.if_match.is_some_and(|expected| expected != version) {
            outcomes.push(Err(EnvWriteError::VersionMismatch { current: version }));
            continue;
        }
        let (patch, rollback_to): (Cow<'_, EnvPatch>, Option<i64>) = match &w.op {
            EnvOp::Patch(p) => (Cow::Borrowed(p), None),
            EnvOp::Rollback { to_version } => {
                let target = targets.get(to_version).or_else(|| produced.get(to_version));
                match target {
                    Some(t) => (Cow::Owned(map.diff_to(t)), Some(*to_version)),
                    None => {
                        outcomes.push(Err(EnvWriteError::VersionNotFound(*to_version)));
                        continue;
                    }
                }
            }
        };
        let change = if patch.entries().is_empty() {
            Ok(EnvChange::default())
        } else {
            map.apply(&patch)
        };
        match change {
            Err(e) => outcomes.push(Err(EnvWriteError::Invalid(e))),
            Ok(change) if change.is_empty() => outcomes.push(Ok(EnvOutcome {
                version,
                changed: change,
                env: map.clone(),
                updated_at: now,
            })),
            Ok(change) => {
                version += 1;
                let values = change_values(&map, &change);
                let mut audit_metadata = updated_metadata(version, &change, map.len());
                let audit_kind = match rollback_to {
                    None => AUDIT_ENV_UPDATED,
                    Some(to) => {
                        audit_metadata["from_version"] = json!(version - 1);
                        audit_metadata["to_version"] = json!(to);
                        AUDIT_ENV_ROLLED_BACK
                    }
                };
                records.push(VersionRecord {
                    version,
                    created_at: now,
                    actor: w.ctx.actor.0.clone(),
                    request_id: w.ctx.request_id.clone(),
                    change: change.clone(),
                    values,
                    snapshot: (version % SNAPSHOT_EVERY == 0).then(|| map.clone()),
                    audit_kind,
                    audit_metadata,
                    write_index: i,
                });
                if wanted_later.contains(&version) {
                    produced.insert(version, map.clone());
                }
                outcomes.push(Ok(EnvOutcome {
                    version,
                    changed: change,
                    env: map.clone(),
                    updated_at: now,
                }));
            }
        }
    }
    let completions = completions(writes, &outcomes);
    BatchPlan {
        outcomes,
        records,
        map,
        version,
        completions,
    }
}

fn completions(
    writes: &[EnvWrite],
    outcomes: &[Result<EnvOutcome, EnvWriteError>],
) -> Vec<IdempotencyRecord> {
    let mut out: Vec<IdempotencyRecord> = Vec::new();
    for (w, o) in writes.iter().zip(outcomes) {
        let (Some(idem), Ok(outcome)) = (&w.idempotency, o) else {
            continue;
        };
        out.retain(|r| r.scope != idem.scope || r.key != idem.key);
        out.push(idem.record(outcome));
    }
    out
}

/// The audit row of `GET /stacks/:slug/env?reveal=true`: `stack.env.revealed` `{version}`,
/// written before the values are handed out.
pub fn revealed(
    team_id: Option<crate::model::TeamId>,
    slug: &crate::ids::StackSlug,
    version: i64,
    ctx: crate::model::AuditCtx,
) -> crate::lifecycle::AuditRecord {
    crate::lifecycle::AuditRecord {
        at: ctx.now,
        team_id,
        actor: ctx.actor.0,
        kind: AUDIT_ENV_REVEALED,
        stack_slug: Some(slug.clone()),
        request_id: ctx.request_id,
        metadata: json!({ "version": version }),
    }
}

/// Audit metadata of `stack.env.updated` (spec: counts and key names only); that of
/// `stack.env.rolled_back` also has `from_version` and `to_version`.
pub fn updated_metadata(version: i64, change: &EnvChange, total_after: usize) -> serde_json::Value {
    json!({
        "version": version,
        "keys_set": change.set.len(),
        "keys_deleted": change.deleted.len(),
        "total_after": total_after,
        "set": change.set,
        "deleted": change.deleted,
    })
}

/// The stored form of a change: the new value of every set key, `None` for deleted keys.
pub fn change_values(after: &EnvMap, change: &EnvChange) -> ChangeValues {
    let mut v = ChangeValues::new();
    for k in &change.set {
        v.insert(k.clone(), after.get(k).map(str::to_owned));
    }
    for k in &change.deleted {
        v.insert(k.clone(), None);
    }
    v
}

/// Rebuilds a version's map from the nearest snapshot at or below it and the changes after
/// that snapshot up to and including the version, in version order.
pub fn replay(snapshot: EnvMap, changes: impl IntoIterator<Item = ChangeValues>) -> EnvMap {
    let mut vars = snapshot.to_map();
    for c in changes {
        for (k, v) in c {
            match v {
                Some(v) => {
                    vars.insert(k, v);
                }
                None => {
                    vars.remove(&k);
                }
            }
        }
    }
    EnvMap::from_map(vars)
}

/// The lowest version that pruning must keep so that the newest `keep` versions can still be
/// rebuilt: the newest snapshot at or below `current - keep + 1`. The store deletes every
/// version below the returned one; `None` means prune nothing yet.
pub fn prune_floor(current: i64, keep: i64) -> Option<i64> {
    let oldest_kept = current - keep + 1;
    if oldest_kept <= 0 {
        return None;
    }
    Some(oldest_kept - oldest_kept.rem_euclid(SNAPSHOT_EVERY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Actor;
    use crate::model::AuditCtx;

    fn ctx() -> AuditCtx {
        AuditCtx {
            actor: Actor::token(1),
            request_id: None,
            now: Millis(5),
        }
    }

    fn write(body: &str) -> EnvWrite {
        EnvWrite {
            op: EnvOp::Patch(EnvPatch::parse(body.as_bytes()).unwrap()),
            if_match: None,
            ctx: ctx(),
            idempotency: None,
            deadline: None,
        }
    }

    #[test]
    fn each_write_gets_its_own_version_and_noops_get_none() {
        let writes = vec![
            write(r#"{"env":{"A":"1"}}"#),
            write(r#"{"env":{"A":"1"}}"#),
            write(r#"{"env":{"B":"2","Z":null}}"#),
        ];
        let plan = plan_batch(EnvMap::new(), 7, &writes, &BTreeMap::new(), Millis(5));
        let versions: Vec<i64> = plan
            .outcomes
            .iter()
            .map(|o| o.as_ref().unwrap().version)
            .collect();
        assert_eq!(versions, [8, 8, 9]);
        assert_eq!(plan.records.len(), 2);
        assert_eq!(plan.records[1].write_index, 2);
        assert_eq!(plan.version, 9);
        assert!(plan.outcomes[1].as_ref().unwrap().changed.is_empty());
    }

    #[test]
    fn a_failing_write_is_refused_alone() {
        let big = format!(r#"{{"env":{{"BIG":"{}"}}}}"#, "x".repeat(70_000));
        let mut stale = write(r#"{"env":{"C":"3"}}"#);
        stale.if_match = Some(7);
        let writes = vec![
            write(r#"{"env":{"A":"1"}}"#),
            write(&big),
            stale,
            write(r#"{"env":{"B":"2"}}"#),
        ];
        let plan = plan_batch(EnvMap::new(), 7, &writes, &BTreeMap::new(), Millis(5));
        assert!(plan.outcomes[0].is_ok());
        assert_eq!(
            plan.outcomes[1].as_ref().unwrap_err(),
            &EnvWriteError::Invalid(crate::env::EnvError::TooLarge { size: 70_018 })
        );
        assert_eq!(
            plan.outcomes[2].as_ref().unwrap_err(),
            &EnvWriteError::VersionMismatch { current: 8 }
        );
        assert_eq!(plan.outcomes[3].as_ref().unwrap().version, 9);
        assert_eq!(
            plan.map.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["A", "B"]
        );
    }

    #[test]
    fn rollback_restores_an_older_map_as_a_new_version() {
        let mut old = EnvMap::new();
        old.apply(&EnvPatch::parse(br#"{"env":{"A":"1"}}"#).unwrap())
            .unwrap();
        let mut base = old.clone();
        base.apply(&EnvPatch::parse(br#"{"env":{"A":"2","B":"3"}}"#).unwrap())
            .unwrap();
        let rb = EnvWrite {
            op: EnvOp::Rollback { to_version: 1 },
            if_match: None,
            ctx: ctx(),
            idempotency: None,
            deadline: None,
        };
        let missing = EnvWrite {
            op: EnvOp::Rollback { to_version: 0 },
            ..rb.clone()
        };
        let targets = BTreeMap::from([(1, old.clone())]);
        assert_eq!(
            rollback_targets(&[rb.clone(), missing.clone()], 2),
            BTreeSet::from([0, 1])
        );
        let plan = plan_batch(base, 2, &[rb, missing], &targets, Millis(5));
        let out = plan.outcomes[0].as_ref().unwrap();
        assert_eq!(out.version, 3);
        assert_eq!(out.env, old);
        assert_eq!(plan.records[0].audit_kind, AUDIT_ENV_ROLLED_BACK);
        assert_eq!(plan.records[0].audit_metadata["to_version"], 1);
        assert_eq!(plan.outcomes[1], Err(EnvWriteError::VersionNotFound(0)));
    }

    #[test]
    fn rollback_to_a_version_made_earlier_in_the_batch_is_honoured() {
        let rb = EnvWrite {
            op: EnvOp::Rollback { to_version: 1 },
            if_match: None,
            ctx: ctx(),
            idempotency: None,
            deadline: None,
        };
        let plan = plan_batch(
            EnvMap::new(),
            0,
            &[
                write(r#"{"env":{"A":"1"}}"#),
                write(r#"{"env":{"A":"2"}}"#),
                rb,
            ],
            &BTreeMap::new(),
            Millis(1),
        );
        assert_eq!(plan.map.get("A"), Some("1"));
        assert_eq!(plan.version, 3);
    }

    #[test]
    fn snapshots_every_hundred_versions_and_replay_rebuilds() {
        let writes: Vec<EnvWrite> = (0..3)
            .map(|i| write(&format!(r#"{{"env":{{"K{i}":"v"}}}}"#)))
            .collect();
        let plan = plan_batch(EnvMap::new(), 98, &writes, &BTreeMap::new(), Millis(1));
        let snaps: Vec<i64> = plan
            .records
            .iter()
            .filter(|r| r.snapshot.is_some())
            .map(|r| r.version)
            .collect();
        assert_eq!(snaps, [100]);
        let rebuilt = replay(EnvMap::new(), plan.records.iter().map(|r| r.values.clone()));
        assert_eq!(rebuilt, plan.map);
    }

    #[test]
    fn audit_metadata_never_holds_values() {
        let plan = plan_batch(
            EnvMap::new(),
            0,
            &[write(r#"{"env":{"PASSWORD":"hunter2"}}"#)],
            &BTreeMap::new(),
            Millis(1),
        );
        let md = plan.records[0].audit_metadata.to_string();
        assert!(!md.contains("hunter2"));
        assert!(md.contains("PASSWORD"));
    }

    #[test]
    fn completions_answer_each_keyed_write_and_a_repeated_key_keeps_its_last_answer() {
        use crate::store::Idempotent;
        let keyed = |body: &str, key: &str| {
            let mut w = write(body);
            w.idempotency = Some(Idempotent::new(
                "team:1".into(),
                key.into(),
                200,
                |o: &EnvOutcome| format!("v{}", o.version),
            ));
            w
        };
        let mut stale = keyed(r#"{"env":{"C":"3"}}"#, "c");
        stale.if_match = Some(0);
        let writes = vec![
            keyed(r#"{"env":{"A":"1"}}"#, "a"),
            keyed(r#"{"env":{"B":"2"}}"#, "a"),
            stale,
            write(r#"{"env":{"D":"4"}}"#),
        ];
        let plan = plan_batch(EnvMap::new(), 0, &writes, &BTreeMap::new(), Millis(1));
        assert_eq!(
            plan.completions.len(),
            1,
            "refused and unkeyed writes complete nothing"
        );
        assert_eq!(
            (
                plan.completions[0].key.as_str(),
                plan.completions[0].body.as_str()
            ),
            ("a", "v2")
        );
    }

    #[test]
    fn prune_floor_keeps_a_snapshot_below_the_window() {
        assert_eq!(prune_floor(999, 1000), None);
        assert_eq!(prune_floor(1000, 1000), Some(0));
        assert_eq!(prune_floor(1100, 1000), Some(100));
        assert_eq!(prune_floor(1150, 1000), Some(100));
        assert_eq!(prune_floor(1199, 1000), Some(200));
    }
}
