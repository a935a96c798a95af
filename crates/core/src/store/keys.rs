//! The keyring: what the database holds about the master key (never the key). Data keys
//! wrapped by it will live beside their owners' rows (`crate::crypto`).

use super::StoreError;
use crate::time::Millis;
use std::future::Future;

pub trait KeyStore: Clone + Send + Sync + 'static {
    /// The master key's canary (`crypto::MasterKey::seal_canary`), or `None` before the first
    /// start that had a key.
    fn master_canary(&self) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Stores `canary` if the stored one is still `expected` (`None`: none yet), in one
    /// statement, so two servers starting at once, or a rotation racing a first start, cannot
    /// both win. `false`: another writer got there first; read it again.
    fn swap_master_canary(
        &self,
        expected: Option<&[u8]>,
        canary: &[u8],
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives the store the keyring it seals and opens secrets with, once the master key is
    /// proved (`masterkey::unlock`). Every read or write of a secret fails until then.
    fn install_keyring(&self, keyring: std::sync::Arc<crate::crypto::Keyring>);

    /// Seals every owner still stored plain (a database from before encryption at rest, or
    /// stacks never written to), one owner per transaction: interrupted, it resumes.
    fn seal_at_rest(&self) -> impl Future<Output = Result<SealReport, StoreError>> + Send;

    /// Replaces the stack's data key: under the stack's lock (env writes wait), every env
    /// document it sealed (the current map, history, releases' copies) is sealed again by a
    /// new one, in one transaction. `false`: no such stack.
    fn rekey_stack(
        &self,
        stack: crate::model::StackId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every wrapped data key (`admin rotate-master-key`).
    fn wrapped_keys(&self) -> impl Future<Output = Result<Vec<WrappedKey>, StoreError>> + Send;

    /// Stores `new` in place of `key.wrapped` if the row still holds that (compare-and-set).
    fn swap_wrapped_key(
        &self,
        key: &WrappedKey,
        new: &[u8],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A data key as stored, wrapped by the master key, and the row it is stored on.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub owner: crate::crypto::KeyOwner,
    pub row: WrappedRow,
    pub wrapped: Vec<u8>,
}

/// The row a wrapped data key is stored on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrappedRow {
    Stack(i64),
    Resource(String),
    TeamVault(i64),
    /// A custom domain's certificate (its id).
    Certificate(String),
    /// The ACME account of a directory (its URL).
    AcmeAccount(String),
}

/// What the start-up sealing pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealReport {
    pub stacks: u64,
    pub resources: u64,
}
