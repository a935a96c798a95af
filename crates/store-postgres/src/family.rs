//! `FamilyStore` on PostgreSQL (statements in `store_sql::Ops`): a promote takes the team's
//! row (when capped), the source's and the target's; reads retry on a fresh connection.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::AuditCtx;
use stackyard_core::model::TeamId;
use stackyard_core::store::{
    Approval, ApprovalError, ApprovalStatus, FamilyMember, FamilyStore, PromoteError, Promoted,
    Promotion, StoreError,
};

impl FamilyStore for PgStore {
    async fn family(
        &self,
        team: TeamId,
        slug: &StackSlug,
    ) -> Result<Option<Vec<FamilyMember>>, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.family(&mut c, team, slug).await };
        Ok(self.read(read).await?)
    }

    async fn promote(
        &self,
        team: TeamId,
        source: &StackSlug,
        promotion: Promotion,
    ) -> Result<Promoted, PromoteError> {
        let keyring = self.keys.get()?;
        let tx = self.begin().await?;
        OPS.promote(tx, team, source, promotion, keyring).await
    }

    async fn request_promotion(
        &self,
        team: TeamId,
        source: &StackSlug,
        promotion: &Promotion,
        approval: Approval,
    ) -> Result<Approval, PromoteError> {
        let tx = self.begin().await?;
        OPS.request_promotion(tx, team, source, promotion, approval)
            .await
    }

    async fn decide_promotion(
        &self,
        team: TeamId,
        id: &str,
        approve: bool,
        by: i64,
        ctx: AuditCtx,
    ) -> Result<Approval, ApprovalError> {
        let tx = self.begin().await?;
        OPS.decide_promotion(tx, team, id, approve, by, ctx).await
    }

    async fn execute_promotion(
        &self,
        team: TeamId,
        source: &StackSlug,
        approval: &str,
        promotion: Promotion,
    ) -> Result<Promoted, ApprovalError> {
        let keyring = self.keys.get()?;
        let tx = self.begin().await?;
        OPS.execute_promotion(tx, team, source, approval, promotion, keyring)
            .await
    }

    async fn list_promotions(
        &self,
        team: TeamId,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<Approval>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_promotions(&mut c, team, status).await
        };
        Ok(self.read(read).await?)
    }
}
