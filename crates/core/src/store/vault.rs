//! The team vault: versioned, sealed values per (team, env, key), and the vault values a
//! release recorded. Every value is sealed by the store before it is written and opened after
//! it is read; no plaintext column exists.

use super::StoreError;
use crate::ids::{EnvironmentName, VaultKey};
use crate::model::{AuditCtx, StackId, TeamId};
use crate::vault::{CopyOutcome, VaultCopy, VaultRefError, VaultValue, VaultWrite};
use std::collections::BTreeMap;
use std::future::Future;

pub trait VaultStore: Clone + Send + Sync + 'static {
    /// Writes `value` as the key's next version (one above the highest it ever had, so a
    /// version number is never reused, even after a delete) with its audit row. Lock: the
    /// key's head row (an upsert that bumps its counter; SQLite: the one writer), so
    /// concurrent writers to one key queue and each gets its own version.
    fn put_vault_value(
        &self,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        value: &str,
        write: VaultWrite,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The newest version (or `version`) of the key, and audit `vault.read` (naming key, env
    /// and version) in the same transaction: the value leaves only if the audit row commits.
    fn read_vault_value(
        &self,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        version: Option<i64>,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<Option<VaultValue>, StoreError>> + Send;

    /// The keys of the env that hold a value, in key order.
    fn list_vault_keys(
        &self,
        team: TeamId,
        env: &EnvironmentName,
    ) -> impl Future<Output = Result<Vec<VaultKey>, StoreError>> + Send;

    /// Removes every version of the key, with audit `vault.deleted`; false if it had none.
    fn delete_vault_key(
        &self,
        team: TeamId,
        env: &EnvironmentName,
        key: &VaultKey,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Copies the newest version of each planned key (`vault::plan_copy`) into `copy.to` as a
    /// new version there, in one transaction with one audit row; a dry run writes nothing.
    fn copy_vault(
        &self,
        team: TeamId,
        copy: &VaultCopy,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<CopyOutcome, StoreError>> + Send;

    /// The plaintext of every `(key, version)` the release recorded, by key: what its
    /// `vault://` references resolve to. `Err(Missing)`: a recorded version was deleted since.
    fn release_vault_values(
        &self,
        stack: StackId,
        release: i64,
    ) -> impl Future<Output = Result<Result<BTreeMap<String, String>, VaultRefError>, StoreError>> + Send;
}
