//! `TeamStore` on SQLite: teams, tokens, dashboard sessions, authentication. Writes run under `BEGIN IMMEDIATE`.

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::ids::{TeamName, TokenDigest};
use stackyard_core::model::{AuditCtx, Principal, Team, TeamId, TokenInfo};
use stackyard_core::store::{NewToken, StoreError, TeamStore};
use stackyard_core::time::Millis;

impl TeamStore for SqliteStore {
    async fn bootstrap_default_team(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .bootstrap_default_team(self.write_tx().await?, admin, now)
            .await?)
    }

    async fn create_team(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<(Team, TokenInfo), StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS.create_team(tx, name, max_stacks, token, ctx).await?)
    }

    async fn authenticate(&self, digest: &TokenDigest) -> Result<Option<Principal>, StoreError> {
        Ok(OPS.authenticate(&mut *self.reader().await?, digest).await?)
    }

    async fn create_token(
        &self,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<TokenInfo, StoreError> {
        Ok(OPS
            .create_token(self.write_tx().await?, team, token, ctx)
            .await?)
    }

    async fn list_tokens(&self, team: TeamId) -> Result<Vec<TokenInfo>, StoreError> {
        Ok(OPS.list_tokens(&mut *self.reader().await?, team).await?)
    }

    async fn revoke_token(
        &self,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .revoke_token(self.write_tx().await?, team, token_id, ctx)
            .await?)
    }

    async fn create_session(
        &self,
        session: &TokenDigest,
        token_id: i64,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx().await?;
        Ok(OPS
            .create_session(tx, session, token_id, now, expires_at)
            .await?)
    }

    async fn session_principal(
        &self,
        session: &TokenDigest,
        now: Millis,
    ) -> Result<Option<Principal>, StoreError> {
        Ok(OPS
            .session_principal(&mut *self.reader().await?, session, now)
            .await?)
    }

    async fn delete_session(&self, session: &TokenDigest) -> Result<bool, StoreError> {
        Ok(OPS.delete_session(self.write_tx().await?, session).await?)
    }
}
