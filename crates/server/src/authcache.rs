//! The cache of recently seen valid tokens (see `AuthCache`).

use stackyard_core::TokenDigest;
use stackyard_core::model::Principal;

/// Valid tokens seen recently, for a store no other server shares (SQLite). Only this process
/// revokes tokens there, and it drops the entry in the same request, so a revoked token still
/// stops working at once; unknown tokens are never cached. With a shared store (PostgreSQL)
/// another server may revoke a token, so the cache is off and every request asks the database.
pub struct AuthCache {
    enabled: bool,
    map: std::sync::Mutex<std::collections::HashMap<TokenDigest, (Principal, std::time::Instant)>>,
}

impl AuthCache {
    /// Entries are re-checked against the store after this long regardless.
    const TTL: std::time::Duration = std::time::Duration::from_secs(60);
    const MAX: usize = 10_000;

    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            map: Default::default(),
        }
    }

    pub fn get(&self, digest: &TokenDigest) -> Option<Principal> {
        if !self.enabled {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(digest)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(p, _)| p.clone())
    }

    pub fn put(&self, digest: TokenDigest, p: Principal) {
        if !self.enabled {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(digest, (p, std::time::Instant::now()));
    }

    /// Forgets a token (after its revoke committed, before the response is sent).
    pub fn forget_token(&self, token_id: i64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (p, _)| p.token.id != token_id);
    }
}
