//! `TeamStore` on PostgreSQL: teams, tokens, dashboard sessions, authentication. Each write
//! takes only the rows it inserts, updates or deletes (a team name's or token digest's unique
//! index, one token row, one session row; a session's insert also key-share locks its token row,
//! which a revocation's update does not wait for).

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::ids::{TeamName, TokenDigest};
use stackyard_core::model::{AuditCtx, Principal, Team, TeamId, TokenInfo};
use stackyard_core::store::{NewToken, StoreError, TeamStore};
use stackyard_core::time::Millis;

impl TeamStore for PgStore {
    async fn bootstrap_default_team(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .bootstrap_default_team(self.begin().await?, admin, now)
            .await?)
    }

    async fn create_team(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<(Team, TokenInfo), StoreError> {
        let tx = self.begin().await?;
        Ok(OPS.create_team(tx, name, max_stacks, token, ctx).await?)
    }

    async fn authenticate(&self, digest: &TokenDigest) -> Result<Option<Principal>, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.authenticate(&mut c, digest).await };
        Ok(self.read(read).await?)
    }

    async fn create_token(
        &self,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<TokenInfo, StoreError> {
        Ok(OPS
            .create_token(self.begin().await?, team, token, ctx)
            .await?)
    }

    async fn list_tokens(&self, team: TeamId) -> Result<Vec<TokenInfo>, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.list_tokens(&mut c, team).await };
        Ok(self.read(read).await?)
    }

    async fn revoke_token(
        &self,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .revoke_token(self.begin().await?, team, token_id, ctx)
            .await?)
    }

    async fn create_session(
        &self,
        session: &TokenDigest,
        token_id: i64,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        let tx = self.begin().await?;
        Ok(OPS
            .create_session(tx, session, token_id, now, expires_at)
            .await?)
    }

    async fn session_principal(
        &self,
        session: &TokenDigest,
        now: Millis,
    ) -> Result<Option<Principal>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.session_principal(&mut c, session, now).await
        };
        Ok(self.read(read).await?)
    }

    async fn delete_session(&self, session: &TokenDigest) -> Result<bool, StoreError> {
        Ok(OPS.delete_session(self.begin().await?, session).await?)
    }
}
