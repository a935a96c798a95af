//! Teams, their API tokens, dashboard sessions, and authentication.

use super::StoreError;
use crate::ids::{TeamName, TokenDigest};
use crate::model::{AuditCtx, Principal, Team, TeamId, TokenInfo};
use crate::time::Millis;
use std::future::Future;

/// A new token: its name and digest (the clear text never reaches the store).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub digest: TokenDigest,
}

pub trait TeamStore: Clone + Send + Sync + 'static {
    /// On an empty database, creates team `default` (no stack cap) with one admin token.
    /// Returns whether it created them.
    fn bootstrap_default_team(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Creates a team and its first token (audit `team.created`). `Conflict("team")` if the
    /// name is taken.
    fn create_team(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<(Team, TokenInfo), StoreError>> + Send;

    /// The team and token behind a presented token digest; `None` if unknown or revoked.
    fn authenticate(
        &self,
        digest: &TokenDigest,
    ) -> impl Future<Output = Result<Option<Principal>, StoreError>> + Send;

    /// Adds a token to a team (audit `token.created`).
    fn create_token(
        &self,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<TokenInfo, StoreError>> + Send;

    /// The team's live tokens, oldest first.
    fn list_tokens(
        &self,
        team: TeamId,
    ) -> impl Future<Output = Result<Vec<TokenInfo>, StoreError>> + Send;

    /// Revokes a live token of the team (audit `token.revoked`); false if there is none with
    /// that id.
    fn revoke_token(
        &self,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Opens a dashboard session for a token, expiring at `expires_at`. `session` is the
    /// digest of a random session id: like a token, the clear id never reaches the store, so
    /// a read of the database cannot be replayed as a cookie. One row, no audit.
    fn create_session(
        &self,
        session: &TokenDigest,
        token_id: i64,
        now: Millis,
        expires_at: Millis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The team and token behind a live session; `None` if unknown, expired
    /// (`expires_at <= now`) or its token revoked (a revocation ends the token's sessions at
    /// once, as it would for a bearer of the token).
    fn session_principal(
        &self,
        session: &TokenDigest,
        now: Millis,
    ) -> impl Future<Output = Result<Option<Principal>, StoreError>> + Send;

    /// Ends a session (sign-out); false if there was none with that digest.
    fn delete_session(
        &self,
        session: &TokenDigest,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
