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
}
