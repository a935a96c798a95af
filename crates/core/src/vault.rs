//! The team vault: versioned secrets per (team, env, key), and the `vault://KEY` references a
//! stack's env may hold. Decided here: what a reference is, which keys a copy touches and how,
//! how recorded values replace references in a release's env, and the audit records (which
//! name keys, envs and versions, never a value).

use crate::env::EnvMap;
use crate::ids::{EnvironmentName, StackSlug, VaultKey};
use crate::lifecycle::AuditRecord;
use crate::model::{AuditCtx, ReleaseService, TeamId};
use std::collections::{BTreeMap, BTreeSet};

/// The largest value the vault stores (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// An env value that is exactly this followed by a key is resolved from the vault when a
/// release is built.
pub const REF_PREFIX: &str = "vault://";

/// Audit kinds of the vault.
pub mod audit_kind {
    pub const SET: &str = "vault.set";
    pub const ROTATED: &str = "vault.rotated";
    pub const READ: &str = "vault.read";
    pub const DELETED: &str = "vault.deleted";
    pub const COPIED: &str = "vault.copied";
}

/// A value read back from the vault.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultValue {
    pub version: i64,
    pub value: String,
}

impl std::fmt::Debug for VaultValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultValue {{ version: {}, value: *** }}", self.version)
    }
}

/// Whether a write is a plain set or a rotation: the same write, audited apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultWrite {
    Set,
    Rotate,
}

/// The key `value` refers to, if it is exactly `vault://KEY` (the key may be invalid: such a
/// reference fails like a missing key).
pub fn reference(value: &str) -> Option<&str> {
    value.strip_prefix(REF_PREFIX)
}

/// Every key referred to by the stack env map or a service's manifest env, each once.
pub fn references(env: &EnvMap, services: &[ReleaseService]) -> BTreeSet<String> {
    env.iter()
        .map(|(_, v)| v)
        .chain(
            services
                .iter()
                .flat_map(|s| s.env.values().map(String::as_str)),
        )
        .filter_map(reference)
        .map(str::to_owned)
        .collect()
}

/// `env` and `services` with every `vault://KEY` replaced by `values[KEY]`. A reference with
/// no value is left as written (the caller checked that every recorded key has one).
pub fn resolve(
    env: &EnvMap,
    services: &mut [ReleaseService],
    values: &BTreeMap<String, String>,
) -> EnvMap {
    let sub = |v: &str| -> Option<String> { reference(v).and_then(|k| values.get(k)).cloned() };
    for s in services.iter_mut() {
        for v in s.env.values_mut() {
            if let Some(plain) = sub(v) {
                *v = plain;
            }
        }
    }
    if !env.iter().any(|(_, v)| reference(v).is_some()) {
        return env.clone();
    }
    EnvMap::from_map(
        env.iter()
            .map(|(k, v)| (k.to_owned(), sub(v).unwrap_or_else(|| v.to_owned())))
            .collect(),
    )
}

/// Why a release's vault references could not be recorded or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultRefError {
    /// The key has no value in the stack's vault env (or is not a valid key).
    #[error("the vault key `{key}` has no value in env `{env}`")]
    Missing { key: String, env: String },
    /// An anonymous stack has no team vault.
    #[error("vault references need a team token")]
    RequiresAuth,
}

/// What a copy does with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyAction {
    /// Not in the target: copied.
    Copy,
    /// In the target and `overwrite`: copied as a new version there.
    Overwrite,
    /// In the target without `overwrite`: left alone.
    Skip,
    /// Asked for but not in the source.
    Missing,
}

impl CopyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyAction::Copy => "copy",
            CopyAction::Overwrite => "overwrite",
            CopyAction::Skip => "skip",
            CopyAction::Missing => "missing",
        }
    }

    pub fn writes(self) -> bool {
        matches!(self, CopyAction::Copy | CopyAction::Overwrite)
    }
}

/// A copy between two envs of one team's vault.
#[derive(Debug, Clone)]
pub struct VaultCopy {
    pub from: EnvironmentName,
    pub to: EnvironmentName,
    /// `None`: every key of `from`.
    pub keys: Option<Vec<VaultKey>>,
    pub dry_run: bool,
    pub overwrite: bool,
}

/// What a copy did (or, on a dry run, would do), key by key in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutcome {
    pub plan: Vec<(VaultKey, CopyAction)>,
    /// Keys written (0 on a dry run).
    pub copied: usize,
    pub skipped: usize,
    pub missing: usize,
}

/// The plan of a copy from the keys of `from` and `to`.
pub fn plan_copy(
    copy: &VaultCopy,
    from: &BTreeSet<VaultKey>,
    to: &BTreeSet<VaultKey>,
) -> Vec<(VaultKey, CopyAction)> {
    let keys: BTreeSet<VaultKey> = match &copy.keys {
        Some(k) => k.iter().cloned().collect(),
        None => from.clone(),
    };
    keys.into_iter()
        .map(|k| {
            let action = if !from.contains(&k) {
                CopyAction::Missing
            } else if !to.contains(&k) {
                CopyAction::Copy
            } else if copy.overwrite {
                CopyAction::Overwrite
            } else {
                CopyAction::Skip
            };
            (k, action)
        })
        .collect()
}

/// The outcome of `plan`, carried out unless `dry_run`.
pub fn outcome(plan: Vec<(VaultKey, CopyAction)>, dry_run: bool) -> CopyOutcome {
    let count = |a: CopyAction| plan.iter().filter(|(_, x)| *x == a).count();
    let written = plan.iter().filter(|(_, a)| a.writes()).count();
    CopyOutcome {
        copied: if dry_run { 0 } else { written },
        skipped: count(CopyAction::Skip),
        missing: count(CopyAction::Missing),
        plan,
    }
}

fn audit(
    kind: &'static str,
    team: TeamId,
    ctx: &AuditCtx,
    metadata: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        at: ctx.now,
        team_id: Some(team),
        actor: ctx.actor.0.clone(),
        kind,
        stack_slug: None::<StackSlug>,
        request_id: ctx.request_id.clone(),
        metadata,
    }
}

/// Audit of a set or rotation: the key, env and new version.
pub fn written(
    write: VaultWrite,
    team: TeamId,
    env: &EnvironmentName,
    key: &VaultKey,
    version: i64,
    ctx: &AuditCtx,
) -> AuditRecord {
    let kind = match write {
        VaultWrite::Set => audit_kind::SET,
        VaultWrite::Rotate => audit_kind::ROTATED,
    };
    audit(
        kind,
        team,
        ctx,
        serde_json::json!({ "env": env, "key": key, "version": version }),
    )
}

/// Audit of a read that handed a value out: the key, env and version read.
pub fn read(
    team: TeamId,
    env: &EnvironmentName,
    key: &VaultKey,
    version: i64,
    ctx: &AuditCtx,
) -> AuditRecord {
    audit(
        audit_kind::READ,
        team,
        ctx,
        serde_json::json!({ "env": env, "key": key, "version": version }),
    )
}

/// Audit of a deletion (every version of the key).
pub fn deleted(team: TeamId, env: &EnvironmentName, key: &VaultKey, ctx: &AuditCtx) -> AuditRecord {
    audit(
        audit_kind::DELETED,
        team,
        ctx,
        serde_json::json!({ "env": env, "key": key }),
    )
}

/// Audit of a copy that wrote something: the envs and the keys written.
pub fn copied(team: TeamId, copy: &VaultCopy, out: &CopyOutcome, ctx: &AuditCtx) -> AuditRecord {
    let keys: Vec<&str> = out
        .plan
        .iter()
        .filter(|(_, a)| a.writes())
        .map(|(k, _)| k.as_str())
        .collect();
    audit(
        audit_kind::COPIED,
        team,
        ctx,
        serde_json::json!({ "from": copy.from, "to": copy.to, "keys": keys }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> BTreeSet<VaultKey> {
        k.iter().map(|k| VaultKey::parse(k).unwrap()).collect()
    }

    fn copy(keys: Option<&[&str]>, overwrite: bool) -> VaultCopy {
        VaultCopy {
            from: EnvironmentName::parse("dev").unwrap(),
            to: EnvironmentName::parse("prod").unwrap(),
            keys: keys.map(|k| k.iter().map(|k| VaultKey::parse(k).unwrap()).collect()),
            dry_run: false,
            overwrite,
        }
    }

    #[test]
    fn only_an_exact_vault_url_is_a_reference() {
        assert_eq!(reference("vault://DB_PASS"), Some("DB_PASS"));
        assert_eq!(reference(" vault://DB_PASS"), None);
        assert_eq!(reference("VAULT://DB_PASS"), None);
        assert_eq!(reference("postgres://x"), None);
    }

    #[test]
    fn copy_plans_copy_skip_overwrite_and_missing_per_key() {
        let from = keys(&["A", "B", "C"]);
        let to = keys(&["B"]);
        let plan = plan_copy(&copy(None, false), &from, &to);
        let acts: Vec<_> = plan.iter().map(|(k, a)| (k.as_str(), *a)).collect();
        assert_eq!(
            acts,
            [
                ("A", CopyAction::Copy),
                ("B", CopyAction::Skip),
                ("C", CopyAction::Copy)
            ]
        );
        let plan = plan_copy(&copy(Some(&["B", "Z"]), true), &from, &to);
        let acts: Vec<_> = plan.iter().map(|(k, a)| (k.as_str(), *a)).collect();
        assert_eq!(
            acts,
            [("B", CopyAction::Overwrite), ("Z", CopyAction::Missing)]
        );
        let out = outcome(plan.clone(), true);
        assert_eq!((out.copied, out.skipped, out.missing), (0, 0, 1));
        let out = outcome(plan, false);
        assert_eq!((out.copied, out.skipped, out.missing), (1, 0, 1));
    }

    #[test]
    fn resolve_replaces_references_in_stack_and_manifest_env_only() {
        let env = EnvMap::from_map(BTreeMap::from([
            ("A".into(), "vault://K".into()),
            ("B".into(), "plain".into()),
        ]));
        let mut services = vec![ReleaseService {
            name: crate::ids::ServiceName::parse("web").unwrap(),
            artifact: String::new(),
            image: None,
            command: String::new(),
            workdir: String::new(),
            port: 1,
            expose: false,
            health: None,
            env: BTreeMap::from([("C".into(), "vault://K".into())]),
            needs: Vec::new(),
        }];
        assert_eq!(
            references(&env, &services),
            BTreeSet::from(["K".to_owned()])
        );
        let values = BTreeMap::from([("K".to_owned(), "s3cret".to_owned())]);
        let out = resolve(&env, &mut services, &values);
        assert_eq!(out.get("A"), Some("s3cret"));
        assert_eq!(out.get("B"), Some("plain"));
        assert_eq!(services[0].env["C"], "s3cret");
        assert_eq!(
            env.get("A"),
            Some("vault://K"),
            "the stack's map is untouched"
        );
    }
}
